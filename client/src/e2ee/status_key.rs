//! The encryption of a status update: a fresh random key per post (ChaCha20-Poly1305), sent
//! to the audience over their Olm sessions, and the post encrypted once under it for the
//! server to store once. The poster and the post's id are bound in as associated data, so
//! a ciphertext cannot be passed off as another post. A key encrypts exactly one post, so
//! its nonce is fixed.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use missive_proto::ClientMsgId;

/// A post's key.
pub type StatusKey = [u8; 32];

/// Why a status update did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the status update does not open with its key (tampered, or another post's)")]
pub struct StatusOpenError;

fn associated_data(poster: &str, id: &ClientMsgId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(18 + 4 + poster.len() + 16);
    aad.extend_from_slice(b"missive-status-v1");
    aad.extend_from_slice(&(poster.len() as u32).to_be_bytes());
    aad.extend_from_slice(poster.as_bytes());
    aad.extend_from_slice(&id.0);
    aad
}

/// Encrypts `plaintext` as `poster`'s post `id` under a fresh key: (key, ciphertext).
pub fn seal_status(poster: &str, id: &ClientMsgId, plaintext: &[u8]) -> (StatusKey, Vec<u8>) {
    let key: StatusKey = rand::random();
    let cipher = ChaCha20Poly1305::new_from_slice(&key).expect("a 32-byte key");
    let aad = associated_data(poster, id);
    let ciphertext = cipher
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("encrypting into memory cannot fail");
    (key, ciphertext)
}

/// Decrypts `poster`'s post `id` with its key.
pub fn open_status(
    key: &StatusKey,
    poster: &str,
    id: &ClientMsgId,
    ciphertext: &[u8],
) -> Result<Vec<u8>, StatusOpenError> {
    let cipher = ChaCha20Poly1305::new_from_slice(key).map_err(|_| StatusOpenError)?;
    let aad = associated_data(poster, id);
    cipher
        .decrypt(
            &Nonce::default(),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| StatusOpenError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_opens_with_its_key_only_and_as_itself_only() {
        let id = ClientMsgId([1; 16]);
        let (key, ct) = seal_status("alice", &id, b"at the beach");
        assert_eq!(
            open_status(&key, "alice", &id, &ct).unwrap(),
            b"at the beach"
        );
        let (other_key, _) = seal_status("alice", &id, b"x");
        assert_ne!(key, other_key, "a fresh key per post");
        assert_eq!(
            open_status(&other_key, "alice", &id, &ct),
            Err(StatusOpenError)
        );
        assert_eq!(open_status(&key, "mallory", &id, &ct), Err(StatusOpenError));
        assert_eq!(
            open_status(&key, "alice", &ClientMsgId([2; 16]), &ct),
            Err(StatusOpenError)
        );
        let mut tampered = ct.clone();
        tampered[0] ^= 1;
        assert_eq!(
            open_status(&key, "alice", &id, &tampered),
            Err(StatusOpenError)
        );
    }
}
