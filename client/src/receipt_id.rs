//! Recognisable ids for our own read-receipt messages.
//!
//! Read receipts are ordinary (end-to-end encrypted) messages, so the edge cannot tell them
//! apart and, once the recipient acknowledges one, sends us a `Delivered` receipt for it. The
//! app never asked about those. To drop them without remembering every id we ever sent (the
//! CLI is a new process each time), a read receipt's id is `nonce(8) || tag(8)`, where the tag
//! is the first 8 bytes of our device key's (deterministic) Ed25519 signature over a domain
//! string and the nonce. Only this device can make or recognise such ids; a random id matches
//! by chance with probability 2^-64.

use ed25519_dalek::{Signer, SigningKey};
use missive_proto::ClientMsgId;

const DOMAIN: &[u8] = b"missive-read-receipt-id-v1";

/// Makes and recognises this device's read-receipt message ids.
#[derive(Clone)]
pub(crate) struct ReceiptIds {
    key: SigningKey,
}

impl std::fmt::Debug for ReceiptIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiptIds")
    }
}

impl ReceiptIds {
    pub(crate) fn new(key: &SigningKey) -> Self {
        Self { key: key.clone() }
    }

    fn tag(&self, nonce: &[u8; 8]) -> [u8; 8] {
        let mut msg = Vec::with_capacity(DOMAIN.len() + 8);
        msg.extend_from_slice(DOMAIN);
        msg.extend_from_slice(nonce);
        let sig = self.key.sign(&msg).to_bytes();
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&sig[..8]);
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
