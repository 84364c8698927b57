//! Keys of status updates that arrived (over Olm) before their posts: kept in memory until
//! the post comes, at most [`MAX_POST_KEYS`] (the oldest go first).

use missive_proto::ClientMsgId;
use std::collections::{HashMap, VecDeque};

/// Most keys held; a post arrives right after its key, so few wait at a time.
pub(crate) const MAX_POST_KEYS: usize = 4096;

/// Post keys by (poster, post id).
#[derive(Debug, Default)]
pub(crate) struct PostKeys {
    keys: HashMap<(String, ClientMsgId), [u8; 32]>,
    order: VecDeque<(String, ClientMsgId)>,
}

impl PostKeys {
    /// Keeps the key of `post`, dropping the oldest past the bound.
    pub(crate) fn insert(&mut self, post: (String, ClientMsgId), key: [u8; 32]) {
        if self.keys.insert(post.clone(), key).is_none() {
            self.order.push_back(post);
        }
        while self.order.len() > MAX_POST_KEYS {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }

    /// The key of `post`, forgotten here.
    pub(crate) fn take(&mut self, post: &(String, ClientMsgId)) -> Option<[u8; 32]> {
        let key = self.keys.remove(post)?;
        self.order.retain(|p| p != post);
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_and_taken_once() {
        let mut k = PostKeys::default();
        for i in 0..(MAX_POST_KEYS + 10) {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            k.insert(("alice".into(), ClientMsgId(id)), [1; 32]);
        }
        assert_eq!(k.keys.len(), MAX_POST_KEYS);
        let first = ("alice".to_string(), ClientMsgId([0; 16]));
        assert_eq!(k.take(&first), None, "the oldest went first");
        let mut last = [0u8; 16];
        last[..8].copy_from_slice(&((MAX_POST_KEYS + 9) as u64).to_be_bytes());
        let last = ("alice".to_string(), ClientMsgId(last));
        assert_eq!(k.take(&last), Some([1; 32]));
        assert_eq!(k.take(&last), None);
    }
}
