//! A device's identity: user name, device id and its Ed25519 signing key.

use ed25519_dalek::{Signer, SigningKey};
use missive_proto::{login_transcript, DeviceId, EXPORTER_LEN};

/// Who this client logs in as. The signing key never leaves the device; only its public half
/// is sent (in `Register`).
#[derive(Clone)]
pub struct Identity {
    /// User name (see `missive_proto::validate_user_name`).
    pub user: String,
    /// This device's id within the user's account (the first device is usually 1).
    pub device: DeviceId,
    /// The device's Ed25519 key; signs each connection's login transcript.
    pub signing_key: SigningKey,
    /// The device's end-to-end encryption state (Olm account and sessions). Clones of an
    /// identity share it, as the connections of one device must.
    pub e2ee: crate::e2ee::E2eeStore,
}

impl Identity {
    /// A new identity with a freshly generated device key (from the OS random generator).
    pub fn generate(user: impl Into<String>, device: DeviceId) -> Self {
        Self {
            user: user.into(),
            device,
            signing_key: SigningKey::generate(&mut rand::rngs::OsRng),
            e2ee: crate::e2ee::E2eeStore::in_memory(),
        }
    }

    /// The safety number of this user and `other` (`missive safety-number`): the same digits
    /// on both sides when both know the same devices of each other; `None` while no device
    /// of `other` is known (no message exchanged yet).
    pub fn safety_number(&self, other: &str) -> Option<String> {
        self.e2ee.safety_number(&self.user, self.device, other)
    }

    /// The Ed25519 public key, as sent in `Register`.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing_key.verifying_key().to_bytes()
    }

    /// Signs `missive_proto::login_transcript(challenge, exporter, user, device)`.
    ///
    /// `exporter` must be this connection's TLS exporter, so the signature is worthless on
    /// any other connection.
    pub fn sign_login(&self, challenge: &[u8; 32], exporter: &[u8; EXPORTER_LEN]) -> [u8; 64] {
        let transcript = login_transcript(challenge, exporter, &self.user, self.device);
        self.signing_key.sign(&transcript).to_bytes()
    }
}

impl std::fmt::Debug for Identity {
    // Never print the secret key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("user", &self.user)
            .field("device", &self.device)
            .field("public_key", &hex::encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    #[test]
    fn login_signature_verifies_against_the_transcript() {
        let id = Identity::generate("alice", DeviceId(3));
        let challenge = [7u8; 32];
        let exporter = [9u8; 32];
        let sig = Signature::from_bytes(&id.sign_login(&challenge, &exporter));
        let key = VerifyingKey::from_bytes(&id.public_key()).unwrap();
        let transcript = login_transcript(&challenge, &exporter, "alice", DeviceId(3));
        assert!(key.verify(&transcript, &sig).is_ok());
        // Bound to the exporter, the user and the device.
        let other_exporter = login_transcript(&challenge, &[8u8; 32], "alice", DeviceId(3));
        assert!(key.verify(&other_exporter, &sig).is_err());
        let other_device = login_transcript(&challenge, &exporter, "alice", DeviceId(4));
        assert!(key.verify(&other_device, &sig).is_err());
        let other_user = login_transcript(&challenge, &exporter, "alicf", DeviceId(3));
        assert!(key.verify(&other_user, &sig).is_err());
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let id = Identity::generate("bob", DeviceId(1));
        let secret = hex::encode(id.signing_key.to_bytes());
        assert!(!format!("{id:?}").contains(&secret));
    }
}
