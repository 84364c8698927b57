//! Recognisable ids for our own read-receipt messages.
//!
//! Read receipts are ordinary (end-to-end encrypted) messages, so the edge cannot tell them
//! apart and, once the recipient acknowledges one, sends us a `Delivered` receipt for it. The
//! app never asked about those. To drop them without remembering every id we ever sent (the
//! CLI is a new process each time), a read receipt's id is `nonce(8) || tag(8)`, where the tag
//! is the first 8 bytes of a BLAKE3 keyed hash of the nonce, under a key derived from our
//! device's signing key. Only this device can make or recognise such ids; a random id matches
//! by chance with probability 2^-64. (The tag was an Ed25519 signature at first; checking one
//! on every "delivered" receipt took ~40 % of a busy client's CPU.)

use ed25519_dalek::SigningKey;
use missive_proto::ClientMsgId;

/// BLAKE3 key-derivation context: the tag key is used for nothing else.
const KEY_CONTEXT: &str = "missive 2026-11 read-receipt id tag v2";

/// Makes and recognises this device's read-receipt message ids.
#[derive(Clone)]
pub(crate) struct ReceiptIds {
    key: [u8; 32],
}

impl std::fmt::Debug for ReceiptIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiptIds")
    }
}

impl ReceiptIds {
    pub(crate) fn new(key: &SigningKey) -> Self {
        Self {
            key: blake3::derive_key(KEY_CONTEXT, &key.to_bytes()),
        }
    }

    fn tag(&self, nonce: &[u8; 8]) -> [u8; 8] {
        let hash = blake3::keyed_hash(&self.key, nonce);
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&hash.as_bytes()[..8]);
        tag
    }

    /// A fresh id for a read-receipt message.
    pub(crate) fn generate(&self) -> ClientMsgId {
        let nonce: [u8; 8] = rand::random();
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&nonce);
        id[8..].copy_from_slice(&self.tag(&nonce));
        ClientMsgId(id)
    }

    /// True if `id` was made by [`ReceiptIds::generate`] with this key.
    pub(crate) fn is_ours(&self, id: &ClientMsgId) -> bool {
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&id.0[..8]);
        self.tag(&nonce) == id.0[8..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_receipt_ids_are_recognised() {
        let ours = ReceiptIds::new(&SigningKey::from_bytes(&[1; 32]));
        let theirs = ReceiptIds::new(&SigningKey::from_bytes(&[2; 32]));
        for _ in 0..100 {
            let id = ours.generate();
            assert!(ours.is_ours(&id));
            assert!(!theirs.is_ours(&id));
            assert!(!ours.is_ours(&ClientMsgId(rand::random())));
        }
    }
}
