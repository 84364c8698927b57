//! The call's shared secret and the SRTP keys derived from it.

use super::Role;
use rand::RngCore;
use zeroize::Zeroize;

/// 32 random bytes both sides share through the E2EE offer; every media key of the call is
/// derived from it. Wiped on drop; never shown by `Debug`.
#[derive(Clone)]
pub struct CallSecret([u8; 32]);

impl Drop for CallSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for CallSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallSecret(..)")
    }
}

impl CallSecret {
    /// A fresh secret from the OS's random generator (the caller makes one per call).
    pub fn random() -> Self {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(b)
    }

    /// The secret received from the peer.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The bytes, to put into the encrypted offer. Keep them out of logs.
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// SRTP master key and salt for what `sender` sends (AEAD-AES-128-GCM: 16 + 12 bytes).
    pub(crate) fn srtp_keys(&self, sender: Role) -> SrtpKeys {
        let context = match sender {
            Role::Caller => "missive call media 2026-12 srtp caller to callee",
            Role::Callee => "missive call media 2026-12 srtp callee to caller",
        };
        let mut okm = blake3::derive_key(context, &self.0);
        let mut keys = SrtpKeys {
            key: [0; 16],
            salt: [0; 12],
        };
        keys.key.copy_from_slice(&okm[..16]);
        keys.salt.copy_from_slice(&okm[16..28]);
        okm.zeroize();
        keys
    }
}

/// One direction's SRTP master key and salt; wiped on drop.
pub(crate) struct SrtpKeys {
    pub(crate) key: [u8; 16],
    pub(crate) salt: [u8; 12],
}

impl Drop for SrtpKeys {
    fn drop(&mut self) {
        self.key.zeroize();
        self.salt.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_get_distinct_keys_and_debug_hides_the_secret() {
        let s = CallSecret::from_bytes([7; 32]);
        let a = s.srtp_keys(Role::Caller);
        let b = s.srtp_keys(Role::Callee);
        assert_ne!(a.key, b.key);
        assert_ne!(a.salt, b.salt);
        // Deterministic: the peer derives the same.
        assert_eq!(
            CallSecret::from_bytes([7; 32]).srtp_keys(Role::Caller).key,
            a.key
        );
        assert_ne!(CallSecret::random().expose_bytes(), s.expose_bytes());
        assert_eq!(format!("{s:?}"), "CallSecret(..)");
    }
}
