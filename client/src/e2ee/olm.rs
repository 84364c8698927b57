//! Olm (vodozemac) for one device: its account, one session per peer device, the identities
//! of peer devices as first seen, and what the key directory needs from us.
//!
//! An encrypted envelope is `[ENVELOPE_VERSION][Olm message type: 0 pre-key, 1 normal]` followed
//! by the Olm message bytes. Sessions use Olm's version 1 configuration (what every libolm and
//! vodozemac peer speaks).

use missive_proto::{
    identity_transcript, signed_key_transcript, DeviceBundle, DeviceId, IdentityKeys, SignedKey,
    UploadKeys,
};
use std::collections::HashMap;
use vodozemac::olm::{Account, OlmMessage, Session, SessionConfig};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};

/// First byte of every encrypted envelope; another value is an envelope this SDK cannot read.
pub(crate) const ENVELOPE_VERSION: u8 = 1;

/// Sessions kept per peer device (newest first): a message may still arrive on an older one.
const SESSIONS_PER_DEVICE: usize = 4;

/// One-time keys the SDK keeps published on the server.
pub(crate) const ONE_TIME_KEY_TARGET: u32 = 50;

/// Archived bytes of one `SignedKey` in an upload (key, signature, alignment).
const SIGNED_KEY_BYTES: usize = 100;

/// Archived bytes of an `UploadKeys` besides its one-time keys, at most (identity keys,
/// fallback key, lengths, frame header).
const UPLOAD_OVERHEAD: usize = 512;

/// A peer device: (user, device).
pub(crate) type DeviceAddr = (String, DeviceId);

/// A device's identity keys as this device first saw them (trust on first use; the safety
/// number lets users confirm them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Curve25519 identity key.
    pub curve25519: [u8; 32],
    /// Ed25519 signing key.
    pub ed25519: [u8; 32],
}

/// Why a bundle could not start a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BundleError {
    /// The device has not published identity keys or has no key left to claim.
    #[error("the device has not published keys")]
    NoKeys,
    /// A signature does not verify: the server (or someone) tampered with the bundle.
    #[error("the bundle's signatures do not verify")]
    BadSignature,
    /// The device published other identity keys than the ones we saw first.
    #[error("the device's identity keys changed")]
    IdentityChanged,
    /// Olm refused the keys.
    #[error("olm: {0}")]
    Olm(String),
}

/// Why an envelope could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecryptError {
    /// Not an envelope of this format (empty, another version, a bad Olm encoding).
    #[error("not an encrypted envelope: {0}")]
    Malformed(String),
    /// No session of ours decrypts it and it cannot start one.
    #[error("no session decrypts it: {0}")]
    NoSession(String),
    /// A pre-key message from another identity than the one this device first had.
    #[error("the sender's identity keys changed")]
    IdentityChanged,
}

/// The Olm state of this device.
pub struct OlmMachine {
    account: Account,
    sessions: HashMap<DeviceAddr, Vec<Session>>,
    known: HashMap<DeviceAddr, PeerIdentity>,
}

impl std::fmt::Debug for OlmMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("OlmMachine")
            .field("sessions", &self.sessions.len())
            .field("known", &self.known.len())
            .finish()
    }
}

impl Default for OlmMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl OlmMachine {
    /// A new device identity (fresh Curve25519 and Ed25519 keys).
    pub fn new() -> Self {
        Self {
            account: Account::new(),
            sessions: HashMap::new(),
            known: HashMap::new(),
        }
    }

    /// This device's identity keys.
    pub fn identity(&self) -> PeerIdentity {
        PeerIdentity {
            curve25519: self.account.curve25519_key().to_bytes(),
            ed25519: *self.account.ed25519_key().as_bytes(),
        }
    }

    /// The identity of a peer device as first seen, if any.
    pub fn peer_identity(&self, addr: &DeviceAddr) -> Option<PeerIdentity> {
        self.known.get(addr).copied()
    }

    /// The safety number of `me` (this device's user, on `my_device`) and `other`: both
    /// users compute the same digits from the Curve25519 identity keys of every device of
    /// both of them that they know. `None` when no device of `other` is known yet.
    pub(crate) fn safety_number(
        &self,
        (me, my_device): (&str, DeviceId),
        other: &str,
    ) -> Option<String> {
        let theirs = self.identities_of(other);
        if theirs.is_empty() {
            return None;
        }
        let mut mine = self.identities_of(me);
        mine.retain(|(d, _)| *d != my_device);
        mine.push((my_device, self.identity()));
        mine.sort_by_key(|(d, _)| *d);
        Some(safety_number((me, &mine), (other, &theirs)))
    }

    /// The users with a known device, sorted.
    pub(crate) fn known_users(&self) -> Vec<String> {
        let mut users: Vec<String> = self.known.keys().map(|(u, _)| u.clone()).collect();
        users.sort();
        users.dedup();
        users
    }

    /// The identities of every known device of `user`.
    pub(crate) fn identities_of(&self, user: &str) -> Vec<(DeviceId, PeerIdentity)> {
        let mut v: Vec<_> = self
            .known
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|((_, d), id)| (*d, *id))
            .collect();
        v.sort_by_key(|(d, _)| *d);
        v
    }

    /// An upload that tops the server's one-time keys up to the target, with the identity
    /// keys (signed by the device's login key) when the server lacks them and a new fallback
    /// key when it lacks one or handed it out.
    ///
    /// At most as many one-time keys as fit a frame of `max_frame` bytes; the next `KeysLow`
    /// asks for the rest.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn upload(
        &mut self,
        (user, device, login_key): (&str, DeviceId, &ed25519_dalek::SigningKey),
        request_id: u32,
        held: u32,
        fallback_used: bool,
        has_identity: bool,
        max_frame: u32,
    ) -> UploadKeys {
        use ed25519_dalek::Signer;
        let identity = (!has_identity).then(|| {
            let me = self.identity();
            let transcript = identity_transcript(user, device, &me.curve25519, &me.ed25519);
            Box::new(IdentityKeys {
                curve25519: me.curve25519,
                ed25519: me.ed25519,
                signature: login_key.sign(&transcript).to_bytes(),
            })
        });
        let fit = (max_frame as usize).saturating_sub(UPLOAD_OVERHEAD) / SIGNED_KEY_BYTES;
        let wanted = ONE_TIME_KEY_TARGET.saturating_sub(held) as usize;
        let wanted = wanted.min(missive_proto::MAX_KEYS_PER_UPLOAD).min(fit);
        self.account.generate_one_time_keys(wanted);
        let sign = |account: &Account, key: Curve25519PublicKey| SignedKey {
            key: key.to_bytes(),
            signature: account
                .sign(signed_key_transcript(user, device, &key.to_bytes()))
                .to_bytes(),
        };
        let one_time_keys = self
            .account
            .one_time_keys()
            .into_values()
            .map(|k| sign(&self.account, k))
            .collect();
        let fallback_key = (fallback_used || !has_identity)
            .then(|| {
                self.account.generate_fallback_key();
                self.account.fallback_key().into_values().next()
            })
            .flatten()
            .map(|k| sign(&self.account, k));
        self.account.mark_keys_as_published();
        UploadKeys {
            request_id,
            identity,
            one_time_keys,
            fallback_key,
        }
    }

    /// Whether we can encrypt for `addr` now.
    pub(crate) fn has_session(&self, addr: &DeviceAddr) -> bool {
        self.sessions.get(addr).is_some_and(|s| !s.is_empty())
    }

    /// Starts a session with a device of `user` from its claimed bundle, after checking that
    /// its identity keys are signed by its login key, that its one-time key is signed by its
    /// identity, and that its identity is the one we saw first.
    pub(crate) fn accept_bundle(
        &mut self,
        user: &str,
        bundle: &DeviceBundle,
    ) -> Result<(), BundleError> {
        let (Some(identity), Some(otk)) = (&bundle.identity, &bundle.one_time_key) else {
            return Err(BundleError::NoKeys);
        };
        let addr = (user.to_owned(), bundle.device);
        let login = ed25519_dalek::VerifyingKey::from_bytes(&bundle.device_key)
            .map_err(|_| BundleError::BadSignature)?;
        let transcript =
            identity_transcript(user, bundle.device, &identity.curve25519, &identity.ed25519);
        login
            .verify_strict(
                &transcript,
                &ed25519_dalek::Signature::from_bytes(&identity.signature),
            )
            .map_err(|_| BundleError::BadSignature)?;
        let ed = Ed25519PublicKey::from_slice(&identity.ed25519)
            .map_err(|_| BundleError::BadSignature)?;
        let sig =
            Ed25519Signature::from_slice(&otk.signature).map_err(|_| BundleError::BadSignature)?;
        ed.verify(&signed_key_transcript(user, bundle.device, &otk.key), &sig)
            .map_err(|_| BundleError::BadSignature)?;
        let peer = PeerIdentity {
            curve25519: identity.curve25519,
            ed25519: identity.ed25519,
        };
        match self.known.get_mut(&addr) {
            Some(known) if known.curve25519 != peer.curve25519 => {
                return Err(BundleError::IdentityChanged)
            }
            // Known from an inbound session, which proves only the Curve25519 key.
            Some(known) if known.ed25519 == [0; 32] => known.ed25519 = peer.ed25519,
            Some(known) if known.ed25519 != peer.ed25519 => {
                return Err(BundleError::IdentityChanged)
            }
            Some(_) => {}
            None => {
                self.known.insert(addr.clone(), peer);
            }
        }
        let session = self
            .account
            .create_outbound_session(
                SessionConfig::version_1(),
                Curve25519PublicKey::from_bytes(identity.curve25519),
                Curve25519PublicKey::from_bytes(otk.key),
            )
            .map_err(|e| BundleError::Olm(e.to_string()))?;
        self.keep(addr, session);
        Ok(())
    }

    fn keep(&mut self, addr: DeviceAddr, session: Session) {
        let list = self.sessions.entry(addr).or_default();
        list.insert(0, session);
        list.truncate(SESSIONS_PER_DEVICE);
    }

    /// Encrypts `plaintext` for `addr` with its newest session; `None` without one.
    pub(crate) fn encrypt(&mut self, addr: &DeviceAddr, plaintext: &[u8]) -> Option<Vec<u8>> {
        let session = self.sessions.get_mut(addr)?.first_mut()?;
        let message = session.encrypt(plaintext).ok()?;
        let (kind, body) = message.to_parts();
        let mut out = Vec::with_capacity(2 + body.len());
        out.push(ENVELOPE_VERSION);
        out.push(kind as u8);
        out.extend_from_slice(&body);
        Some(out)
    }

    /// Decrypts an envelope from `addr`: with one of its sessions, or (a pre-key message)
    /// by starting a new inbound session, which consumes our one-time key.
    pub(crate) fn decrypt(
        &mut self,
        addr: &DeviceAddr,
        envelope: &[u8],
    ) -> Result<Vec<u8>, DecryptError> {
        let [version, kind, body @ ..] = envelope else {
            return Err(DecryptError::Malformed("too short".into()));
        };
        if *version != ENVELOPE_VERSION {
            return Err(DecryptError::Malformed(format!("version {version}")));
        }
        let message = OlmMessage::from_parts(usize::from(*kind), body)
            .map_err(|e| DecryptError::Malformed(e.to_string()))?;
        if let Some(sessions) = self.sessions.get_mut(addr) {
            for (i, session) in sessions.iter_mut().enumerate() {
                if let OlmMessage::PreKey(m) = &message {
                    if m.session_id() != session.session_id() {
                        continue;
                    }
                }
                if let Ok(plaintext) = session.decrypt(&message) {
                    // The session the peer uses now is the one we answer on.
                    if i > 0 {
                        let s = sessions.remove(i);
                        sessions.insert(0, s);
                    }
                    return Ok(plaintext);
                }
            }
        }
        let OlmMessage::PreKey(prekey) = &message else {
            return Err(DecryptError::NoSession("no session decrypts it".into()));
        };
        let their_key = prekey.identity_key();
        if let Some(known) = self.known.get(addr) {
            if known.curve25519 != their_key.to_bytes() {
                return Err(DecryptError::IdentityChanged);
            }
        }
        let created = self
            .account
            .create_inbound_session(SessionConfig::version_1(), their_key, prekey)
            .map_err(|e| DecryptError::NoSession(e.to_string()))?;
        self.known.entry(addr.clone()).or_insert(PeerIdentity {
            curve25519: their_key.to_bytes(),
            // Learnt from the key directory when we first claim this device's keys; until
            // then only the Curve25519 key (what the session proves) is known.
            ed25519: [0; 32],
        });
        self.keep(addr.clone(), created.session);
        Ok(created.plaintext)
    }

    /// Forgets a device that was removed from its account: its sessions and its identity
    /// (it no longer counts in safety numbers; device ids are never reused).
    pub(crate) fn forget_device(&mut self, addr: &DeviceAddr) {
        self.sessions.remove(addr);
        self.known.remove(addr);
    }

    /// Drops every session with `addr` (after an undecryptable message: the next message
    /// to it starts a fresh session from a new bundle).
    pub(crate) fn forget_sessions(&mut self, addr: &DeviceAddr) {
        self.sessions.remove(addr);
    }

    /// Serialises the whole state; every secret inside is encrypted with `key` (vodozemac's
    /// pickle encryption: AES-256-CBC and HMAC-SHA-256 under keys derived from `key`).
    pub(crate) fn to_bytes(&self, key: &[u8; 32]) -> Vec<u8> {
        let state = stored::State {
            account: self.account.pickle().encrypt(key),
            sessions: self
                .sessions
                .iter()
                .map(|((user, device), list)| stored::Sessions {
                    user: user.clone(),
                    device: device.0,
                    pickles: list.iter().map(|s| s.pickle().encrypt(key)).collect(),
                })
                .collect(),
            known: self
                .known
                .iter()
                .map(|((user, device), id)| stored::Known {
                    user: user.clone(),
                    device: device.0,
                    curve25519: id.curve25519,
                    ed25519: id.ed25519,
                })
                .collect(),
        };
        rkyv::to_bytes::<rkyv::rancor::Error>(&state)
            .expect("archiving the E2EE state into a growable buffer cannot fail")
            .into_vec()
    }

    /// Reads what [`OlmMachine::to_bytes`] wrote; a wrong key or damaged bytes are an error.
    pub(crate) fn from_bytes(bytes: &[u8], key: &[u8; 32]) -> Result<Self, String> {
        use vodozemac::olm::{AccountPickle, SessionPickle};
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let state = rkyv::from_bytes::<stored::State, rkyv::rancor::Error>(&aligned)
            .map_err(|e| format!("damaged E2EE state: {e}"))?;
        let account = AccountPickle::from_encrypted(&state.account, key)
            .map_err(|e| format!("cannot decrypt the E2EE account (wrong key?): {e}"))?;
        let mut sessions = HashMap::new();
        for s in state.sessions {
            let list = s
                .pickles
                .iter()
                .map(|p| SessionPickle::from_encrypted(p, key).map(Session::from_pickle))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("cannot decrypt an E2EE session: {e}"))?;
            sessions.insert((s.user, DeviceId(s.device)), list);
        }
        let known = state
            .known
            .into_iter()
            .map(|k| {
                (
                    (k.user, DeviceId(k.device)),
                    PeerIdentity {
                        curve25519: k.curve25519,
                        ed25519: k.ed25519,
                    },
                )
            })
            .collect();
        Ok(Self {
            account: Account::from_pickle(account),
            sessions,
            known,
        })
    }
}

/// Digits of one user's fingerprint (Signal's safety numbers have 30 per user).
const FINGERPRINT_DIGITS: usize = 30;

/// One user's fingerprint: 30 decimal digits of a BLAKE3 hash (domain-separated) of the user
/// name and each device's id and Curve25519 identity key, in device order.
fn fingerprint(user: &str, devices: &[(DeviceId, PeerIdentity)]) -> String {
    let mut h = blake3::Hasher::new_derive_key("missive 2026 safety number v1");
    h.update(&(user.len() as u32).to_be_bytes());
    h.update(user.as_bytes());
    for (d, id) in devices {
        h.update(&d.0.to_be_bytes());
        h.update(&id.curve25519);
    }
    let mut out = h.finalize_xof();
    let mut digits = String::with_capacity(FINGERPRINT_DIGITS);
    // Five digits from each 5-byte chunk (as Signal does), taken modulo 100000.
    while digits.len() < FINGERPRINT_DIGITS {
        let mut chunk = [0u8; 8];
        out.fill(&mut chunk[3..]);
        digits.push_str(&format!("{:05}", u64::from_be_bytes(chunk) % 100_000));
    }
    digits
}

/// The safety number of two users: both fingerprints, the lower first (so both sides print
/// the same), in groups of five digits.
pub(crate) fn safety_number(
    a: (&str, &[(DeviceId, PeerIdentity)]),
    b: (&str, &[(DeviceId, PeerIdentity)]),
) -> String {
    let (x, y) = (fingerprint(a.0, a.1), fingerprint(b.0, b.1));
    let (first, second) = if x <= y { (x, y) } else { (y, x) };
    let all = first + &second;
    all.as_bytes()
        .chunks(5)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The stored form of the state (rkyv); secrets only as encrypted pickles.
#[allow(missing_docs)]
mod stored {
    use rkyv::{Archive, Deserialize, Serialize};

    #[derive(Archive, Serialize, Deserialize)]
    pub(super) struct State {
        pub(super) account: String,
        pub(super) sessions: Vec<Sessions>,
        pub(super) known: Vec<Known>,
    }

    #[derive(Archive, Serialize, Deserialize)]
    pub(super) struct Sessions {
        pub(super) user: String,
        pub(super) device: u32,
        pub(super) pickles: Vec<String>,
    }

    #[derive(Archive, Serialize, Deserialize)]
    pub(super) struct Known {
        pub(super) user: String,
        pub(super) device: u32,
        pub(super) curve25519: [u8; 32],
        pub(super) ed25519: [u8; 32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    /// A device: its login key and Olm state.
    struct Device {
        user: &'static str,
        id: DeviceId,
        login: SigningKey,
        olm: OlmMachine,
    }

    impl Device {
        fn new(user: &'static str, id: u32) -> Self {
            Self {
                user,
                id: DeviceId(id),
                login: SigningKey::from_bytes(&[id as u8 + user.len() as u8; 32]),
                olm: OlmMachine::new(),
            }
        }

        fn addr(&self) -> DeviceAddr {
            (self.user.to_owned(), self.id)
        }

        /// What the key directory would hand a claimer after this device's first upload:
        /// the first one-time key, or the fallback key when `fallback`.
        fn bundle(&mut self, fallback: bool) -> DeviceBundle {
            let u = self.olm.upload(
                (self.user, self.id, &self.login),
                1,
                0,
                false,
                false,
                1 << 20,
            );
            let key = if fallback {
                u.fallback_key.clone().unwrap()
            } else {
                u.one_time_keys[0].clone()
            };
            DeviceBundle {
                device: self.id,
                device_key: self.login.verifying_key().to_bytes(),
                identity: u.identity.map(|b| *b),
                one_time_key: Some(key),
                fallback,
            }
        }
    }

    fn pair(fallback: bool) -> (Device, Device) {
        let mut alice = Device::new("alice", 1);
        let mut bob = Device::new("bob", 1);
        let b = bob.bundle(fallback);
        alice.olm.accept_bundle("bob", &b).unwrap();
        (alice, bob)
    }

    #[test]
    fn a_session_from_a_bundle_carries_messages_both_ways() {
        let (mut alice, mut bob) = pair(false);
        let first = alice.olm.encrypt(&bob.addr(), b"hi bob").unwrap();
        assert_eq!(first[0], ENVELOPE_VERSION);
        assert_eq!(first[1], 0, "the first message sets the session up");
        assert!(!first.windows(6).any(|w| w == b"hi bob"), "no plaintext");
        assert_eq!(bob.olm.decrypt(&alice.addr(), &first).unwrap(), b"hi bob");
        let reply = bob.olm.encrypt(&alice.addr(), b"hi alice").unwrap();
        assert_eq!(reply[1], 1, "bob answers on the session alice started");
        assert_eq!(alice.olm.decrypt(&bob.addr(), &reply).unwrap(), b"hi alice");
        assert_eq!(
            bob.olm.peer_identity(&alice.addr()).map(|p| p.curve25519),
            Some(alice.olm.identity().curve25519)
        );
    }

    #[test]
    fn the_fallback_key_still_sets_up_a_session() {
        let (mut alice, mut bob) = pair(true);
        let m = alice.olm.encrypt(&bob.addr(), b"via fallback").unwrap();
        assert_eq!(bob.olm.decrypt(&alice.addr(), &m).unwrap(), b"via fallback");
    }

    #[test]
    fn tampered_bundles_are_refused() {
        let mut alice = Device::new("alice", 1);
        let mut bob = Device::new("bob", 1);
        let good = bob.bundle(false);
        let mut swapped_key = good.clone();
        swapped_key.one_time_key.as_mut().unwrap().key[0] ^= 1;
        let mut forged_identity = good.clone();
        forged_identity.identity.as_mut().unwrap().curve25519[0] ^= 1;
        let mut moved = good.clone();
        moved.device = DeviceId(2);
        for bad in [swapped_key, forged_identity, moved] {
            assert_eq!(
                alice.olm.accept_bundle("bob", &bad),
                Err(BundleError::BadSignature)
            );
        }
        let mut empty = good.clone();
        empty.one_time_key = None;
        assert_eq!(
            alice.olm.accept_bundle("bob", &empty),
            Err(BundleError::NoKeys)
        );
        alice.olm.accept_bundle("bob", &good).unwrap();
        // bob's device 1 with another identity (a reinstall, or the server's own keys).
        let mut imposter = Device::new("bob", 1);
        let other = imposter.bundle(false);
        assert_eq!(
            alice.olm.accept_bundle("bob", &other),
            Err(BundleError::IdentityChanged)
        );
    }

    #[test]
    fn corrupted_or_replayed_ciphertext_is_an_error_not_a_panic() {
        let (mut alice, mut bob) = pair(false);
        let m = alice.olm.encrypt(&bob.addr(), b"once").unwrap();
        let mut flipped = m.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x55;
        assert!(bob.olm.decrypt(&alice.addr(), &flipped).is_err());
        for garbage in [
            &[][..],
            &[ENVELOPE_VERSION][..],
            &[9, 0, 1, 2][..],
            &[1, 7, 1][..],
        ] {
            assert!(bob.olm.decrypt(&alice.addr(), garbage).is_err());
        }
        assert_eq!(bob.olm.decrypt(&alice.addr(), &m).unwrap(), b"once");
        // Forward secrecy: its message key is gone once used.
        assert!(bob.olm.decrypt(&alice.addr(), &m).is_err());
    }

    #[test]
    fn a_state_saved_before_the_ratchet_turned_cannot_read_later_messages() {
        let key = [7; 32];
        let (mut alice, mut bob) = pair(false);
        let m = alice.olm.encrypt(&bob.addr(), b"1").unwrap();
        bob.olm.decrypt(&alice.addr(), &m).unwrap();
        let old_bob = bob.olm.to_bytes(&key);
        // Three round trips: each turns the ratchet with fresh Diffie-Hellman keys.
        for i in 0..3u8 {
            let r = bob.olm.encrypt(&alice.addr(), &[i]).unwrap();
            alice.olm.decrypt(&bob.addr(), &r).unwrap();
            let m = alice.olm.encrypt(&bob.addr(), &[i]).unwrap();
            bob.olm.decrypt(&alice.addr(), &m).unwrap();
        }
        let later = alice.olm.encrypt(&bob.addr(), b"later").unwrap();
        let mut stolen = OlmMachine::from_bytes(&old_bob, &key).unwrap();
        assert!(
            stolen.decrypt(&alice.addr(), &later).is_err(),
            "an old copy of the state read a message sent after the ratchet turned"
        );
        assert_eq!(bob.olm.decrypt(&alice.addr(), &later).unwrap(), b"later");
    }

    #[test]
    fn both_sides_compute_the_same_safety_number_and_a_new_key_changes_it() {
        let (mut alice, mut bob) = pair(false);
        let m = alice.olm.encrypt(&bob.addr(), b"hi").unwrap();
        bob.olm.decrypt(&alice.addr(), &m).unwrap();
        let a = alice.olm.safety_number(("alice", alice.id), "bob").unwrap();
        let b = bob.olm.safety_number(("bob", bob.id), "alice").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 60 + 11, "60 digits in groups of five: {a}");
        assert!(alice
            .olm
            .safety_number(("alice", alice.id), "carol")
            .is_none());
        // Another bob (new keys) gives another number.
        let mut other = Device::new("bob", 1);
        let mut fresh = Device::new("alice", 1);
        let bundle = other.bundle(false);
        fresh.olm.accept_bundle("bob", &bundle).unwrap();
        assert_ne!(
            fresh.olm.safety_number(("alice", fresh.id), "bob").unwrap(),
            a
        );
    }

    #[test]
    fn the_saved_state_round_trips_and_needs_its_key() {
        let key = [3; 32];
        let (mut alice, bob) = pair(false);
        let m = alice.olm.encrypt(&bob.addr(), b"saved").unwrap();
        let saved = bob.olm.to_bytes(&key);
        assert!(
            OlmMachine::from_bytes(&saved, &[4; 32]).is_err(),
            "wrong key"
        );
        assert!(OlmMachine::from_bytes(&saved[..saved.len() / 2], &key).is_err());
        let mut restored = OlmMachine::from_bytes(&saved, &key).unwrap();
        assert_eq!(restored.identity(), bob.olm.identity());
        assert_eq!(restored.decrypt(&alice.addr(), &m).unwrap(), b"saved");
        // The account is stored encrypted: not even its public key shows in the bytes.
        let alice_saved = alice.olm.to_bytes(&key);
        let own = alice.olm.identity().curve25519;
        assert!(!alice_saved.windows(32).any(|w| w == own));
    }

    #[test]
    fn an_upload_tops_up_to_the_target_and_signs_everything() {
        let mut bob = Device::new("bob", 2);
        let u = bob
            .olm
            .upload(("bob", DeviceId(2), &bob.login), 9, 45, true, true, 1 << 20);
        assert_eq!(u.request_id, 9);
        assert!(u.identity.is_none(), "the server has it");
        assert_eq!(u.one_time_keys.len(), (ONE_TIME_KEY_TARGET - 45) as usize);
        assert!(u.fallback_key.is_some(), "the old one was used");
        let ed = Ed25519PublicKey::from_slice(&bob.olm.identity().ed25519).unwrap();
        for k in &u.one_time_keys {
            let sig = Ed25519Signature::from_slice(&k.signature).unwrap();
            ed.verify(&signed_key_transcript("bob", DeviceId(2), &k.key), &sig)
                .unwrap();
        }
        let again = bob.olm.upload(
            ("bob", DeviceId(2), &bob.login),
            10,
            ONE_TIME_KEY_TARGET,
            false,
            true,
            1 << 20,
        );
        assert!(again.one_time_keys.is_empty() && again.fallback_key.is_none());
        // A small frame limit: fewer keys, and the upload fits.
        let mut carol = Device::new("carol", 1);
        let small = carol.olm.upload(
            ("carol", DeviceId(1), &carol.login),
            11,
            0,
            false,
            false,
            2048,
        );
        assert!(!small.one_time_keys.is_empty() && small.one_time_keys.len() < 20);
        let frame = missive_proto::encode_to_vec(&small.into()).unwrap();
        assert!(
            frame.len() <= 2048 + missive_proto::HEADER_LEN,
            "{}",
            frame.len()
        );
    }
}
