//! The end-to-end encryption part of the client's session state machine (no I/O, no clock
//! reads): before a send goes out, every device it is for must have an Olm session, which
//! takes a `ClaimKeys` round trip for devices we have not talked to; then each device's
//! envelope is encrypted for it. Deliveries are decrypted here; the key directory's
//! `KeysLow` is answered with an upload.

use super::olm::{BundleError, DecryptError, DeviceAddr};
use super::E2eeStore;
use crate::devices::DeviceDirectory;
use crate::event::Event;
use missive_proto::{
    ClaimKeys, DeviceEnvelope, DeviceId, ErrorCode, Frame, KeyBundles, KeysLow, RequestRefused,
};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long a refused claim (the claim budget, storage) waits before it is made again.
const CLAIM_RETRY: Duration = Duration::from_secs(2);

/// Encryption and decryption for one device's session.
#[derive(Debug)]
pub(crate) struct Sealer {
    store: E2eeStore,
    me: String,
    my_device: DeviceId,
    login_key: ed25519_dalek::SigningKey,
    next_request: u32,
    /// Claims on the wire: request id → whose keys.
    claims: HashMap<u32, String>,
    /// Refused claims, made again at the instant.
    claim_retry: HashMap<String, Instant>,
    /// Devices whose bundle had no keys: they get an empty envelope (which they report as
    /// undecryptable and have resent once they have keys) until a later claim finds keys.
    keyless: HashSet<DeviceAddr>,
    /// The Olm state changed since the last save.
    dirty: bool,
}

/// What a send needs before it can be sealed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Every device has a session (or is known keyless): seal for these.
    Ready(Vec<DeviceAddr>),
    /// Keys are being claimed: transmit these frames (maybe none: a claim is already out)
    /// and try again when bundles arrive.
    Waiting(Vec<Frame>),
}

impl Sealer {
    pub(crate) fn new(
        store: E2eeStore,
        (me, my_device, login_key): (&str, DeviceId, ed25519_dalek::SigningKey),
    ) -> Self {
        Self {
            store,
            me: me.to_owned(),
            my_device,
            login_key,
            next_request: 0,
            claims: HashMap::new(),
            claim_retry: HashMap::new(),
            keyless: HashSet::new(),
            dirty: false,
        }
    }

    /// The state it encrypts with.
    #[cfg(test)]
    pub(crate) fn store(&self) -> &E2eeStore {
        &self.store
    }

    /// A new connection: requests of the old one will never be answered.
    pub(crate) fn new_connection(&mut self) {
        self.claims.clear();
        self.claim_retry.clear();
    }

    fn request_id(&mut self) -> u32 {
        self.next_request = self.next_request.wrapping_add(1);
        self.next_request
    }

    /// The devices a send to `to` goes to, each with the user it belongs to.
    fn targets(&self, to: &str, dir: &DeviceDirectory) -> Vec<DeviceAddr> {
        let mut out: Vec<DeviceAddr> = dir
            .recipients(to)
            .into_iter()
            .map(|d| (to.to_owned(), d))
            .collect();
        out.extend(dir.own_others(to).into_iter().map(|d| (self.me.clone(), d)));
        out
    }

    /// Whether a send to `to` can be sealed now; if not, the claims to make.
    pub(crate) fn prepare(&mut self, now: Instant, to: &str, dir: &DeviceDirectory) -> Readiness {
        let mut need: Vec<String> = Vec::new();
        if !dir.knows(to) {
            need.push(to.to_owned());
        }
        let targets = self.targets(to, dir);
        {
            let olm = self.store.lock();
            for addr in &targets {
                if !olm.has_session(addr) && !self.keyless.contains(addr) && !need.contains(&addr.0)
                {
                    need.push(addr.0.clone());
                }
            }
        }
        if need.is_empty() {
            return Readiness::Ready(targets);
        }
        let mut frames = Vec::new();
        for user in need {
            let in_flight = self.claims.values().any(|u| *u == user);
            let waiting = self.claim_retry.get(&user).is_some_and(|at| *at > now);
            if in_flight || waiting {
                continue;
            }
            self.claim_retry.remove(&user);
            let request_id = self.request_id();
            self.claims.insert(request_id, user.clone());
            frames.push(ClaimKeys { request_id, user }.into());
        }
        Readiness::Waiting(frames)
    }

    /// One envelope per target device (as [`Sealer::prepare`] returned them): the
    /// recipient's devices get `plaintext(None)` encrypted for each, our own other devices
    /// `plaintext(Some(to))`; each plaintext is made once.
    pub(crate) fn seal(
        &mut self,
        to: &str,
        targets: &[DeviceAddr],
        plaintext: impl Fn(Option<&str>) -> Vec<u8>,
    ) -> (Vec<DeviceEnvelope>, Vec<DeviceEnvelope>) {
        let mut olm = self.store.lock();
        let mut envelopes = Vec::new();
        let mut own = Vec::new();
        let for_them = plaintext(None);
        let mut for_me: Option<Vec<u8>> = None;
        for addr in targets {
            let copy_for_me = addr.0 == self.me && to != self.me;
            let bytes = if copy_for_me {
                for_me.get_or_insert_with(|| plaintext(Some(to)))
            } else {
                &for_them
            };
            // A keyless device gets an empty envelope: it cannot read anything yet.
            let envelope = olm.encrypt(addr, bytes).unwrap_or_default();
            let c = DeviceEnvelope {
                device: addr.1,
                envelope,
            };
            if copy_for_me {
                own.push(c);
            } else {
                envelopes.push(c);
            }
        }
        self.dirty = true;
        (envelopes, own)
    }

    /// Bundles arrived: they are the user's current devices; start a session with each
    /// device we have none with. Returns what the app should hear.
    pub(crate) fn on_bundles(&mut self, kb: KeyBundles, dir: &mut DeviceDirectory) -> Vec<Event> {
        if self.claims.remove(&kb.request_id).is_none() {
            return Vec::new();
        }
        let mut events = Vec::new();
        let listed: Vec<DeviceId> = kb.bundles.iter().map(|b| b.device).collect();
        let change = dir.update(missive_proto::UserDevices {
            user: kb.user.clone(),
            devices: listed.clone(),
        });
        let (added, removed) = if change.was_known {
            (change.added, change.removed)
        } else {
            // No list in this run yet: the devices whose identities we pinned before (kept
            // with the E2EE state, so across restarts) say what changed since.
            let pinned: Vec<DeviceId> = self
                .store
                .lock()
                .identities_of(&kb.user)
                .into_iter()
                .map(|(d, _)| d)
                .collect();
            let mine = |d: &DeviceId| kb.user == self.me && *d == self.my_device;
            if pinned.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                (
                    listed
                        .iter()
                        .filter(|d| !pinned.contains(d) && !mine(d))
                        .copied()
                        .collect(),
                    pinned
                        .iter()
                        .filter(|d| !listed.contains(d))
                        .copied()
                        .collect(),
                )
            }
        };
        self.forget_devices(&kb.user, &removed);
        if !added.is_empty() || !removed.is_empty() {
            events.push(Event::DevicesChanged {
                user: kb.user.clone(),
                added,
                removed,
            });
        }
        let mut olm = self.store.lock();
        for b in &kb.bundles {
            let addr = (kb.user.clone(), b.device);
            if olm.has_session(&addr) {
                continue;
            }
            match olm.accept_bundle(&kb.user, b) {
                Ok(()) => {
                    self.keyless.remove(&addr);
                    self.dirty = true;
                }
                Err(BundleError::NoKeys) => {
                    self.keyless.insert(addr);
                }
                Err(e) => {
                    // Nothing is encrypted to a device whose keys do not check out: it is
                    // treated as keyless, and the app hears why.
                    tracing::warn!(user = %kb.user, device = b.device.0, error = %e, "refusing a key bundle");
                    self.keyless.insert(addr);
                    events.push(Event::KeysRejected {
                        user: kb.user.clone(),
                        device: b.device,
                        reason: e.to_string(),
                    });
                }
            }
        }
        events
    }

    /// A key request was refused. Claims go again after a pause.
    pub(crate) fn on_refused(&mut self, now: Instant, r: &RequestRefused) {
        if let Some(user) = self.claims.remove(&r.request_id) {
            tracing::debug!(code = r.code, %user, "key claim refused; retrying later");
            self.claim_retry.insert(user, now + CLAIM_RETRY);
        } else if ErrorCode::from_u16(r.code) == Some(ErrorCode::InvalidKeys) {
            tracing::error!(message = %r.message, "the server refused this device's keys");
        } else {
            tracing::debug!(code = r.code, message = %r.message, "key upload refused");
        }
    }

    /// When a refused claim may go again.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.claim_retry.values().min().copied()
    }

    /// The server holds too few of our keys: an upload that tops them up.
    pub(crate) fn on_keys_low(&mut self, k: &KeysLow, max_frame: u32) -> Frame {
        let request_id = self.request_id();
        let upload = self.store.lock().upload(
            (&self.me, self.my_device, &self.login_key),
            request_id,
            k.one_time_keys,
            k.fallback_used,
            k.has_identity,
            max_frame,
        );
        self.dirty = true;
        upload.into()
    }

    /// Decrypts a delivery from (`from`, `from_device`).
    pub(crate) fn open(
        &mut self,
        from: &str,
        from_device: DeviceId,
        envelope: &[u8],
    ) -> Result<Vec<u8>, DecryptError> {
        let addr = (from.to_owned(), from_device);
        let r = self.store.lock().decrypt(&addr, envelope);
        if r.is_ok() {
            self.dirty = true;
        }
        r
    }

    /// Devices removed from `user`'s account: their sessions and identities go.
    pub(crate) fn forget_devices(&mut self, user: &str, removed: &[DeviceId]) {
        if removed.is_empty() {
            return;
        }
        let mut olm = self.store.lock();
        for d in removed {
            let addr = (user.to_owned(), *d);
            olm.forget_device(&addr);
            self.keyless.remove(&addr);
        }
        self.dirty = true;
    }

    /// After an undecryptable message: our sessions with that device are dropped, so the
    /// next message to it starts a fresh one from a newly claimed bundle.
    pub(crate) fn reset_sessions(&mut self, from: &str, from_device: DeviceId) {
        let addr = (from.to_owned(), from_device);
        self.store.lock().forget_sessions(&addr);
        self.keyless.remove(&addr);
        self.dirty = true;
    }

    /// Whether the state changed since the last call (it must be saved before what depends
    /// on it leaves: a ciphertext, an acknowledgement).
    pub(crate) fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }
}
