//! Dropping deliveries that were already handed to the app.
//!
//! The server delivers again whatever was not acknowledged when a connection ended, so a
//! client sees some items twice. Each item is identified by [`DeliveryKey`]; a bounded
//! [`SeenSet`] remembers the most recent ones.

use missive_proto::ClientMsgId;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// How many delivery keys a client remembers by default.
pub const DEFAULT_SEEN_CAPACITY: usize = 10_000;

/// What kind of mailbox item a delivery was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryKind {
    /// An envelope from another user (a message or a read receipt).
    Message,
    /// A server-generated delivery receipt.
    Delivered,
}

/// Identity of one delivered mailbox item, stable across redeliveries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    /// The `from` user of the `Deliver` frame.
    pub from: String,
    /// The `client_msg_id` of the `Deliver` frame.
    pub client_msg_id: ClientMsgId,
    /// Message or delivery receipt.
    pub kind: DeliveryKind,
}

impl DeliveryKey {
    /// One-line text form: `m|d <32 hex> <from>` (used by the CLI's `seen.txt`).
    pub fn to_line(&self) -> String {
        let k = match self.kind {
            DeliveryKind::Message => 'm',
            DeliveryKind::Delivered => 'd',
        };
        format!("{k} {} {}", self.client_msg_id.to_hex(), self.from)
    }

    /// Parses [`DeliveryKey::to_line`]'s form; `None` for anything else.
    pub fn from_line(line: &str) -> Option<Self> {
        let mut parts = line.trim().splitn(3, ' ');
        let kind = match parts.next()? {
            "m" => DeliveryKind::Message,
            "d" => DeliveryKind::Delivered,
            _ => return None,
        };
        let client_msg_id = ClientMsgId::from_hex(parts.next()?)?;
        let from = parts.next()?.to_string();
        if from.is_empty() || from.contains(char::is_whitespace) {
            return None;
        }
        Some(Self {
            from,
            client_msg_id,
            kind,
        })
    }
}

/// A set of the most recently inserted keys, holding at most `capacity` of them (oldest are
/// forgotten first).
#[derive(Debug, Clone)]
pub struct SeenSet {
    /// Shares each key with `order`: one allocation per key, no copy of its sender's name.
    set: HashSet<Arc<DeliveryKey>>,
    order: VecDeque<Arc<DeliveryKey>>,
    capacity: usize,
}

impl Default for SeenSet {
    fn default() -> Self {
        Self::new(DEFAULT_SEEN_CAPACITY)
    }
}

impl SeenSet {
    /// An empty set remembering at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// True if `key` is remembered.
    pub fn contains(&self, key: &DeliveryKey) -> bool {
        self.set.contains(key)
    }

    /// Remembers `key`; returns false if it was already there. Evicts the oldest key when full.
    pub fn insert(&mut self, key: DeliveryKey) -> bool {
        let key = Arc::new(key);
        if !self.set.insert(key.clone()) {
            return false;
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(key);
        true
    }

    /// Number of remembered keys.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The remembered keys, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &DeliveryKey> {
        self.order.iter().map(|k| &**k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> DeliveryKey {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        DeliveryKey {
            from: "alice".into(),
            client_msg_id: ClientMsgId(id),
            kind: DeliveryKind::Message,
        }
    }

    #[test]
    fn bounded_and_forgets_oldest_first() {
        let mut s = SeenSet::new(3);
        assert!(s.insert(key(1)));
        assert!(!s.insert(key(1)));
        s.insert(key(2));
        s.insert(key(3));
        s.insert(key(4));
        assert_eq!(s.len(), 3);
        assert!(!s.contains(&key(1)));
        assert!(s.contains(&key(2)) && s.contains(&key(4)));
        for i in 5..10_000 {
            s.insert(key(i));
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.set.len(), 3);
    }

    #[test]
    fn kind_and_sender_are_part_of_the_key() {
        let mut s = SeenSet::default();
        let m = key(1);
        let d = DeliveryKey {
            kind: DeliveryKind::Delivered,
            ..m.clone()
        };
        let other = DeliveryKey {
            from: "bob".into(),
            ..m.clone()
        };
        assert!(s.insert(m));
        assert!(s.insert(d));
        assert!(s.insert(other));
    }

    #[test]
    fn line_form_round_trips() {
        let k = DeliveryKey {
            kind: DeliveryKind::Delivered,
            ..key(77)
        };
        assert_eq!(DeliveryKey::from_line(&k.to_line()), Some(k));
        assert_eq!(DeliveryKey::from_line("x 00 bob"), None);
        assert_eq!(DeliveryKey::from_line(""), None);
        assert_eq!(
            DeliveryKey::from_line(&format!("m {} ", "ab".repeat(16))),
            None
        );
    }
}
