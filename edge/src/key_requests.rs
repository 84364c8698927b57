//! Key-directory requests of one logged-in session, as a state machine without I/O: each
//! request is checked (budget, size, signature) before any work, turned into a storage
//! request, and answered once storage replies.
//!
//! Claims of one-time keys are also limited per user across connections by
//! [`crate::claim_budget::ClaimBudgets`], which the connection consults before it submits
//! one: past it a claim gets the devices' fallback keys, so a client cannot drain someone's
//! one-time keys by claiming fast or reconnecting, and its sessions still start.

use crate::budget::{Rate, TokenBucket};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use missive_proto::{
    identity_transcript, validate_user_name, ClaimKeys, DeviceId, ErrorCode, Frame, KeyBundles,
    KeysLow, KeysStored, RequestRefused, UploadKeys, MAX_KEYS_PER_UPLOAD,
};
use missive_storage::{ClaimedBundle, KeyStatus, KeyUpload, UploadOutcome};
use std::time::Instant;

/// Key-directory requests one connection may have waiting for storage.
pub const MAX_KEY_REQUESTS_IN_FLIGHT: usize = 16;

/// Key-directory policy, from the edge config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyPolicy {
    /// `UploadKeys` frames per connection.
    pub uploads: Rate,
    /// Unclaimed one-time keys a device may hold.
    pub max_one_time_keys: u32,
    /// Below this many unclaimed one-time keys a device is told to upload more.
    pub low_watermark: u32,
}

/// What the session does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStep {
    /// Hand this upload to storage.
    Upload {
        /// The request's id.
        request_id: u32,
        /// What to store.
        upload: KeyUpload,
    },
    /// Claim bundles of `user` from storage.
    Claim {
        /// The request's id.
        request_id: u32,
        /// Whose devices.
        user: String,
    },
    /// Answer at once (a refusal).
    Answer(Frame),
}

/// Why storage did not answer a key request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStoreRefusal {
    /// Storage refuses writes for now (low disk, recovering).
    Unavailable,
    /// Storage failed.
    Failed,
}

/// The key-directory side of one session.
#[derive(Debug)]
pub struct KeyRequests {
    policy: KeyPolicy,
    uploads: TokenBucket,
    in_flight: usize,
}

fn refuse(request_id: u32, code: ErrorCode, message: impl Into<String>) -> KeyStep {
    KeyStep::Answer(RequestRefused::new(request_id, code, message).into())
}

impl KeyRequests {
    /// Requests of a session starting at `now`.
    pub fn new(policy: KeyPolicy, now: Instant) -> Self {
        Self {
            policy,
            uploads: TokenBucket::new(policy.uploads, now),
            in_flight: 0,
        }
    }

    /// An `UploadKeys` from (`user`, `device`), whose login key is `device_key`.
    pub fn upload(
        &mut self,
        now: Instant,
        (user, device, device_key): (&str, DeviceId, &[u8; 32]),
        u: UploadKeys,
    ) -> KeyStep {
        let id = u.request_id;
        if self.in_flight >= MAX_KEY_REQUESTS_IN_FLIGHT {
            return refuse(id, ErrorCode::TooManyInFlight, "too many key requests");
        }
        if u.one_time_keys.len() > MAX_KEYS_PER_UPLOAD {
            let message = format!("at most {MAX_KEYS_PER_UPLOAD} one-time keys per upload");
            return refuse(id, ErrorCode::LimitExceeded, message);
        }
        if let Some(identity) = &u.identity {
            let transcript =
                identity_transcript(user, device, &identity.curve25519, &identity.ed25519);
            let valid = VerifyingKey::from_bytes(device_key).is_ok_and(|vk| {
                vk.verify(&transcript, &Signature::from_bytes(&identity.signature))
                    .is_ok()
            });
            if !valid {
                return refuse(
                    id,
                    ErrorCode::InvalidKeys,
                    "identity keys are not signed by this device",
                );
            }
        }
        if !self.uploads.try_take(now, 1.0) {
            return refuse(id, ErrorCode::RateLimited, "key upload rate exceeded");
        }
        self.in_flight += 1;
        KeyStep::Upload {
            request_id: id,
            upload: KeyUpload {
                user: user.to_owned(),
                device,
                identity: u.identity.map(|b| *b),
                one_time_keys: u.one_time_keys,
                fallback_key: u.fallback_key,
                max_held: self.policy.max_one_time_keys,
            },
        }
    }

    /// A `ClaimKeys`.
    pub fn claim(&mut self, c: ClaimKeys) -> KeyStep {
        if self.in_flight >= MAX_KEY_REQUESTS_IN_FLIGHT {
            return refuse(
                c.request_id,
                ErrorCode::TooManyInFlight,
                "too many key requests",
            );
        }
        if validate_user_name(&c.user).is_err() {
            // Nobody can be called that: the same answer as a name nobody registered.
            return KeyStep::Answer(
                KeyBundles {
                    request_id: c.request_id,
                    user: c.user,
                    bundles: Vec::new(),
                }
                .into(),
            );
        }
        self.in_flight += 1;
        KeyStep::Claim {
            request_id: c.request_id,
            user: c.user,
        }
    }

    /// Storage's answer to an upload.
    pub fn uploaded(
        &mut self,
        request_id: u32,
        result: Result<UploadOutcome, KeyStoreRefusal>,
    ) -> Frame {
        self.in_flight = self.in_flight.saturating_sub(1);
        let refused =
            |code: ErrorCode, message: &str| RequestRefused::new(request_id, code, message).into();
        match result {
            Ok(UploadOutcome::Stored { one_time_keys }) => KeysStored {
                request_id,
                one_time_keys,
            }
            .into(),
            Ok(UploadOutcome::IdentityConflict) => refused(
                ErrorCode::InvalidKeys,
                "this device published other identity keys; a new identity is a new device",
            ),
            Ok(UploadOutcome::TooManyKeys { held }) => refused(
                ErrorCode::LimitExceeded,
                &format!(
                    "the device would hold more than {} one-time keys (holds {held})",
                    self.policy.max_one_time_keys
                ),
            ),
            Ok(UploadOutcome::UnknownDevice) => refused(ErrorCode::AuthFailed, "device removed"),
            Err(e) => refusal(request_id, e),
        }
    }

    /// Storage's answer to a claim.
    pub fn claimed(
        &mut self,
        request_id: u32,
        user: String,
        result: Result<Vec<ClaimedBundle>, KeyStoreRefusal>,
    ) -> Frame {
        self.in_flight = self.in_flight.saturating_sub(1);
        match result {
            Ok(bundles) => KeyBundles {
                request_id,
                user,
                bundles: bundles.into_iter().map(|b| b.bundle).collect(),
            }
            .into(),
            Err(e) => refusal(request_id, e),
        }
    }

    /// What a device with this standing should be told (after login, or after a claim of
    /// its keys), if anything.
    pub fn low_notice(&self, status: KeyStatus) -> Option<KeysLow> {
        (status.one_time_keys < self.policy.low_watermark
            || status.fallback_used
            || !status.has_identity)
            .then_some(KeysLow {
                one_time_keys: status.one_time_keys,
                fallback_used: status.fallback_used,
                has_identity: status.has_identity,
            })
    }
}

fn refusal(request_id: u32, e: KeyStoreRefusal) -> Frame {
    let (code, message) = match e {
        KeyStoreRefusal::Unavailable => (
            ErrorCode::StorageUnavailable,
            "storage is refusing writes for now; retry later",
        ),
        KeyStoreRefusal::Failed => (ErrorCode::Internal, "storage failed; retry"),
    };
    RequestRefused::new(request_id, code, message).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use missive_proto::{IdentityKeys, SignedKey};

    fn policy() -> KeyPolicy {
        KeyPolicy {
            uploads: Rate::per_minute(10, 2),
            max_one_time_keys: 100,
            low_watermark: 10,
        }
    }

    fn identity(key: &SigningKey, user: &str, device: DeviceId) -> IdentityKeys {
        let (curve25519, ed25519) = ([1; 32], [2; 32]);
        let signature = key
            .sign(&identity_transcript(user, device, &curve25519, &ed25519))
            .to_bytes();
        IdentityKeys {
            curve25519,
            ed25519,
            signature,
        }
    }

    fn upload(id: u32, identity: Option<IdentityKeys>, keys: usize) -> UploadKeys {
        UploadKeys {
            request_id: id,
            identity: identity.map(Box::new),
            one_time_keys: (0..keys)
                .map(|i| SignedKey {
                    key: [i as u8; 32],
                    signature: [0; 64],
                })
                .collect(),
            fallback_key: None,
        }
    }

    fn refused_code(step: &KeyStep) -> Option<u16> {
        match step {
            KeyStep::Answer(Frame::RequestRefused(r)) => Some(r.code),
            _ => None,
        }
    }

    #[test]
    fn uploads_are_checked_before_any_work() {
        let now = Instant::now();
        let mut k = KeyRequests::new(policy(), now);
        let device_key = SigningKey::from_bytes(&[7; 32]);
        let me = ("bob", DeviceId(1), &device_key.verifying_key().to_bytes());
        let signed = identity(&device_key, "bob", DeviceId(1));
        assert!(matches!(
            k.upload(now, me, upload(1, Some(signed.clone()), 5)),
            KeyStep::Upload { request_id: 1, ref upload } if upload.one_time_keys.len() == 5 && upload.max_held == 100
        ));
        // Signed by another key, or for another device: refused.
        let stranger = identity(&SigningKey::from_bytes(&[8; 32]), "bob", DeviceId(1));
        let moved = identity(&device_key, "bob", DeviceId(2));
        for bad in [stranger, moved] {
            assert_eq!(
                refused_code(&k.upload(now, me, upload(2, Some(bad), 0))),
                Some(ErrorCode::InvalidKeys.as_u16())
            );
        }
        assert_eq!(
            refused_code(&k.upload(now, me, upload(3, None, MAX_KEYS_PER_UPLOAD + 1))),
            Some(ErrorCode::LimitExceeded.as_u16())
        );
        // The burst of two is spent by the first upload and this one.
        assert!(matches!(
            k.upload(now, me, upload(4, None, 1)),
            KeyStep::Upload { .. }
        ));
        assert_eq!(
            refused_code(&k.upload(now, me, upload(5, None, 1))),
            Some(ErrorCode::RateLimited.as_u16())
        );
    }

    #[test]
    fn claims_are_bounded_in_flight_and_answered() {
        let now = Instant::now();
        let mut k = KeyRequests::new(policy(), now);
        for i in 0..MAX_KEY_REQUESTS_IN_FLIGHT as u32 {
            let step = k.claim(ClaimKeys {
                request_id: i,
                user: "alice".into(),
            });
            assert!(matches!(step, KeyStep::Claim { .. }));
        }
        let over = k.claim(ClaimKeys {
            request_id: 99,
            user: "alice".into(),
        });
        assert_eq!(
            refused_code(&over),
            Some(ErrorCode::TooManyInFlight.as_u16())
        );
        let answer = k.claimed(0, "alice".into(), Err(KeyStoreRefusal::Unavailable));
        assert!(
            matches!(answer, Frame::RequestRefused(ref r) if r.request_id == 0 && r.code == ErrorCode::StorageUnavailable.as_u16())
        );
        // One slot free again; a name nobody can have gets an empty answer, no storage work.
        assert!(matches!(
            k.claim(ClaimKeys {
                request_id: 7,
                user: "no\0name".into()
            }),
            KeyStep::Answer(Frame::KeyBundles(ref b)) if b.bundles.is_empty()
        ));
    }

    #[test]
    fn devices_short_of_keys_are_told() {
        let k = KeyRequests::new(policy(), Instant::now());
        let fine = KeyStatus {
            one_time_keys: 50,
            fallback_used: false,
            has_identity: true,
        };
        assert_eq!(k.low_notice(fine), None);
        for status in [
            KeyStatus {
                one_time_keys: 9,
                ..fine
            },
            KeyStatus {
                fallback_used: true,
                ..fine
            },
            KeyStatus {
                has_identity: false,
                ..fine
            },
        ] {
            assert!(k.low_notice(status).is_some(), "{status:?}");
        }
    }
}
