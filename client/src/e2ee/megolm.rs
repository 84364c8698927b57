//! Megolm (vodozemac) group sessions of one device: one outbound session per group, which
//! encrypts everything this device sends to the group, and the inbound sessions that member
//! devices shared with us over Olm, keyed by (sender user, sender device, session id).
//!
//! An outbound session is used for one membership epoch only: when the epoch changed, after
//! [`RotationPolicy::messages`] messages or once it is [`RotationPolicy::age`] old, the next
//! send makes a new one ([`GroupSessions::outbound_status`]). Its key goes to the members of
//! the new epoch alone, so a removed member never gets it and a new member cannot read what
//! was sent before it joined (a Megolm key only ratchets forward).
//!
//! No clock is read here: times are milliseconds since the Unix epoch, passed in (they are
//! kept across restarts, which an `Instant` cannot be).

use missive_proto::{DeviceId, GroupId};
use std::collections::HashMap;
use std::time::Duration;
use vodozemac::megolm::{
    GroupSession, GroupSessionPickle, InboundGroupSession, InboundGroupSessionPickle,
    MegolmMessage, SessionConfig, SessionKey,
};

/// Inbound sessions kept per (group, sender device); the oldest go first. At the default
/// rotation (100 messages) this covers 10 000 messages of one device still in the mailbox.
const INBOUND_PER_DEVICE: usize = 100;

/// When an outbound session is replaced by a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// After this many messages (default 100): a key that leaks (a member's device copied)
    /// reads at most this many messages ahead.
    pub messages: u32,
    /// After this long (default 7 days), however few messages it carried.
    pub age: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            messages: 100,
            age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Whether this device can encrypt for a group now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OutboundStatus {
    /// A current session whose key every member got.
    Ready,
    /// A current session whose key is still on its way to the members (or whose sending was
    /// interrupted: see [`GroupSessions::outbound_status`]).
    Unshared(String),
    /// No session, or one of another epoch, too old or too used: make a new one.
    NeedsNew,
}

/// A new outbound session's key, to send to every other member over Olm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SharedKey {
    /// The session's id (its public signing key, base64).
    pub(crate) session_id: String,
    /// The exported session key (ratchet and signing key, signed).
    pub(crate) session_key: Vec<u8>,
}

/// Why a group message could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GroupDecryptError {
    /// We never got this session's key from this device (sent before we joined, or to a
    /// removed member, or the key message was lost).
    #[error("no key for this session from this device")]
    UnknownSession,
    /// The session belongs to another group than the one the message came in.
    #[error("the session belongs to another group")]
    WrongGroup,
    /// Not a Megolm message, a bad signature or MAC, or an index before the one we got.
    #[error("megolm: {0}")]
    Megolm(String),
}

/// Why a shared key was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    /// The key does not decode or its signature does not verify.
    #[error("invalid session key: {0}")]
    Invalid(String),
    /// The key is of another session than the id it came with.
    #[error("the session key does not match its session id")]
    IdMismatch,
}

struct Outbound {
    session: GroupSession,
    epoch: u64,
    created_ms: u64,
    /// Every member was sent the key (the sends were stored by the server).
    shared: bool,
}

struct Inbound {
    session: InboundGroupSession,
    group: GroupId,
    /// Taken while this device did not know the group's members; checked when it learns
    /// them ([`GroupSessions::confirm_senders`]).
    provisional: bool,
    /// Arrival order, for dropping the oldest.
    order: u64,
}

/// (sender user, sender device, session id).
type InboundKey = (String, DeviceId, String);

/// The Megolm state of this device.
#[derive(Default)]
pub(crate) struct GroupSessions {
    outbound: HashMap<GroupId, Outbound>,
    inbound: HashMap<InboundKey, Inbound>,
    next_order: u64,
}

impl std::fmt::Debug for GroupSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("GroupSessions")
            .field("outbound", &self.outbound.len())
            .field("inbound", &self.inbound.len())
            .finish()
    }
}

impl GroupSessions {
    /// Whether this device can encrypt for `group` at `epoch` now (`now_ms`: Unix ms).
    ///
    /// A session made in an earlier run that was never marked shared counts as
    /// [`OutboundStatus::Unshared`]; the caller, which knows no key sends are on their way,
    /// then makes a new one.
    pub(crate) fn outbound_status(
        &self,
        group: GroupId,
        epoch: u64,
        now_ms: u64,
        policy: &RotationPolicy,
    ) -> OutboundStatus {
        let Some(o) = self.outbound.get(&group) else {
            return OutboundStatus::NeedsNew;
        };
        let age = Duration::from_millis(now_ms.saturating_sub(o.created_ms));
        if o.epoch != epoch || o.session.message_index() >= policy.messages || age >= policy.age {
            return OutboundStatus::NeedsNew;
        }
        if o.shared {
            OutboundStatus::Ready
        } else {
            OutboundStatus::Unshared(o.session.session_id())
        }
    }

    /// Replaces `group`'s outbound session with a new one for `epoch`, not yet shared, and
    /// keeps its inbound half for `me` (so this device reads its own messages too). Returns
    /// the key to send to the members.
    pub(crate) fn rotate(
        &mut self,
        group: GroupId,
        epoch: u64,
        now_ms: u64,
        me: (&str, DeviceId),
    ) -> SharedKey {
        let session = GroupSession::new(SessionConfig::version_1());
        let key = session.session_key();
        let shared = SharedKey {
            session_id: session.session_id(),
            session_key: key.to_bytes(),
        };
        let inbound = InboundGroupSession::new(&key, SessionConfig::version_1());
        self.keep_inbound(
            (me.0.to_owned(), me.1, shared.session_id.clone()),
            group,
            inbound,
            false,
        );
        self.outbound.insert(
            group,
            Outbound {
                session,
                epoch,
                created_ms: now_ms,
                shared: false,
            },
        );
        shared
    }

    /// Every member got the key of `group`'s session `session_id` (a later session may have
    /// replaced it meanwhile: then nothing changes).
    pub(crate) fn mark_shared(&mut self, group: GroupId, session_id: &str) {
        if let Some(o) = self.outbound.get_mut(&group) {
            if o.session.session_id() == session_id {
                o.shared = true;
            }
        }
    }

    /// This device no longer sends to `group` (it left or was removed).
    pub(crate) fn drop_outbound(&mut self, group: GroupId) {
        self.outbound.remove(&group);
    }

    /// Encrypts `plaintext` with `group`'s outbound session: its id and the Megolm message
    /// bytes. `None` without a session.
    pub(crate) fn encrypt(
        &mut self,
        group: GroupId,
        plaintext: &[u8],
    ) -> Option<(String, Vec<u8>)> {
        let o = self.outbound.get_mut(&group)?;
        let message = o.session.encrypt(plaintext);
        Some((o.session.session_id(), message.to_bytes()))
    }

    /// Messages `group`'s outbound session has encrypted.
    #[cfg(test)]
    pub(crate) fn outbound_index(&self, group: GroupId) -> Option<u32> {
        self.outbound.get(&group).map(|o| o.session.message_index())
    }

    /// Takes a session key that (`from`, `device`) sent us over Olm for `group`. Returns
    /// whether it was new. A `provisional` key is checked once the members are known.
    pub(crate) fn add_inbound(
        &mut self,
        (from, device): (&str, DeviceId),
        group: GroupId,
        session_id: &str,
        session_key: &[u8],
        provisional: bool,
    ) -> Result<bool, KeyError> {
        let key =
            SessionKey::from_bytes(session_key).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let session = InboundGroupSession::new(&key, SessionConfig::version_1());
        if session.session_id() != session_id {
            return Err(KeyError::IdMismatch);
        }
        let k = (from.to_owned(), device, session_id.to_owned());
        if let Some(known) = self.inbound.get(&k) {
            // The same key again (a copy per member reaches our other devices): keep the
            // first, which may be the one that reaches further back.
            if known.group == group {
                return Ok(false);
            }
        }
        self.keep_inbound(k, group, session, provisional);
        Ok(true)
    }

    fn keep_inbound(
        &mut self,
        k: InboundKey,
        group: GroupId,
        session: InboundGroupSession,
        provisional: bool,
    ) {
        let same_device: Vec<(u64, InboundKey)> = self
            .inbound
            .iter()
            .filter(|(key, i)| key.0 == k.0 && key.1 == k.1 && i.group == group)
            .map(|(key, i)| (i.order, key.clone()))
            .collect();
        if same_device.len() >= INBOUND_PER_DEVICE {
            if let Some((_, oldest)) = same_device.into_iter().min_by_key(|(o, _)| *o) {
                self.inbound.remove(&oldest);
            }
        }
        let order = self.next_order;
        self.next_order += 1;
        self.inbound.insert(
            k,
            Inbound {
                session,
                group,
                provisional,
                order,
            },
        );
    }

    /// Decrypts a message that (`from`, `device`) sent to `group` with session `session_id`.
    pub(crate) fn decrypt(
        &mut self,
        (from, device): (&str, DeviceId),
        group: GroupId,
        session_id: &str,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, GroupDecryptError> {
        let k = (from.to_owned(), device, session_id.to_owned());
        let inbound = self
            .inbound
            .get_mut(&k)
            .ok_or(GroupDecryptError::UnknownSession)?;
        if inbound.group != group {
            return Err(GroupDecryptError::WrongGroup);
        }
        let message = MegolmMessage::from_bytes(ciphertext)
            .map_err(|e| GroupDecryptError::Megolm(e.to_string()))?;
        inbound
            .session
            .decrypt(&message)
            .map(|m| m.plaintext)
            .map_err(|e| GroupDecryptError::Megolm(e.to_string()))
    }

    /// The members of `group` are now known: provisional keys from anyone else go, the
    /// others are confirmed. Returns how many were dropped.
    pub(crate) fn confirm_senders(&mut self, group: GroupId, members: &[&str]) -> usize {
        let before = self.inbound.len();
        self.inbound.retain(|(user, _, _), i| {
            if i.group != group || !i.provisional {
                return true;
            }
            let member = members.contains(&user.as_str());
            i.provisional = false;
            member
        });
        before - self.inbound.len()
    }

    /// Whether an inbound session (`from`, `device`, `session_id`) is held.
    #[cfg(test)]
    pub(crate) fn has_inbound(&self, from: &str, device: DeviceId, session_id: &str) -> bool {
        self.inbound
            .contains_key(&(from.to_owned(), device, session_id.to_owned()))
    }

    /// The stored form; every session only as a pickle encrypted with `key`.
    pub(crate) fn to_stored(&self, key: &[u8; 32]) -> stored::Sessions {
        stored::Sessions {
            outbound: self
                .outbound
                .iter()
                .map(|(g, o)| stored::Outbound {
                    group: g.0,
                    pickle: o.session.pickle().encrypt(key),
                    epoch: o.epoch,
                    created_ms: o.created_ms,
                    shared: o.shared,
                })
                .collect(),
            inbound: self
                .inbound
                .iter()
                .map(|((user, device, session_id), i)| stored::Inbound {
                    user: user.clone(),
                    device: device.0,
                    session_id: session_id.clone(),
                    group: i.group.0,
                    pickle: i.session.pickle().encrypt(key),
                    provisional: i.provisional,
                    order: i.order,
                })
                .collect(),
        }
    }

    /// Reads what [`GroupSessions::to_stored`] made; a wrong key is an error.
    pub(crate) fn from_stored(s: stored::Sessions, key: &[u8; 32]) -> Result<Self, String> {
        let mut out = Self::default();
        for o in s.outbound {
            let pickle = GroupSessionPickle::from_encrypted(&o.pickle, key)
                .map_err(|e| format!("cannot decrypt a group session: {e}"))?;
            out.outbound.insert(
                GroupId(o.group),
                Outbound {
                    session: GroupSession::from_pickle(pickle),
                    epoch: o.epoch,
                    created_ms: o.created_ms,
                    shared: o.shared,
                },
            );
        }
        for i in s.inbound {
            let pickle = InboundGroupSessionPickle::from_encrypted(&i.pickle, key)
                .map_err(|e| format!("cannot decrypt an inbound group session: {e}"))?;
            out.next_order = out.next_order.max(i.order + 1);
            out.inbound.insert(
                (i.user, DeviceId(i.device), i.session_id),
                Inbound {
                    session: InboundGroupSession::from_pickle(pickle),
                    group: GroupId(i.group),
                    provisional: i.provisional,
                    order: i.order,
                },
            );
        }
        Ok(out)
    }
}

/// The stored form of the group sessions (rkyv); secrets only as encrypted pickles.
#[allow(missing_docs)]
pub(crate) mod stored {
    use rkyv::{Archive, Deserialize, Serialize};

    #[derive(Archive, Serialize, Deserialize, Default)]
    pub(crate) struct Sessions {
        pub(crate) outbound: Vec<Outbound>,
        pub(crate) inbound: Vec<Inbound>,
    }

    #[derive(Archive, Serialize, Deserialize)]
    pub(crate) struct Outbound {
        pub(crate) group: u64,
        pub(crate) pickle: String,
        pub(crate) epoch: u64,
        pub(crate) created_ms: u64,
        pub(crate) shared: bool,
    }

    #[derive(Archive, Serialize, Deserialize)]
    pub(crate) struct Inbound {
        pub(crate) user: String,
        pub(crate) device: u32,
        pub(crate) session_id: String,
        pub(crate) group: u64,
        pub(crate) pickle: String,
        pub(crate) provisional: bool,
        pub(crate) order: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: GroupId = GroupId(7);
    const DAY_MS: u64 = 24 * 3600 * 1000;

    fn alice() -> (&'static str, DeviceId) {
        ("alice", DeviceId(1))
    }

    /// Alice's sessions with a new outbound session for G at `epoch`, and bob's sessions
    /// holding its key.
    fn pair(epoch: u64) -> (GroupSessions, GroupSessions, SharedKey) {
        let mut a = GroupSessions::default();
        let key = a.rotate(G, epoch, 0, alice());
        a.mark_shared(G, &key.session_id);
        let mut b = GroupSessions::default();
        assert_eq!(
            b.add_inbound(alice(), G, &key.session_id, &key.session_key, false),
            Ok(true)
        );
        (a, b, key)
    }

    #[test]
    fn a_shared_key_decrypts_what_its_session_encrypts() {
        let (mut a, mut b, key) = pair(1);
        let (sid, ct) = a.encrypt(G, b"hello group").unwrap();
        assert_eq!(sid, key.session_id);
        assert!(!ct.windows(5).any(|w| w == b"hello"), "no plaintext");
        assert_eq!(b.decrypt(alice(), G, &sid, &ct).unwrap(), b"hello group");
        // The sender reads its own messages (another of its devices would, with the key).
        assert_eq!(a.decrypt(alice(), G, &sid, &ct).unwrap(), b"hello group");
        // Only from the device that shared it, only in its group.
        assert_eq!(
            b.decrypt(("alice", DeviceId(2)), G, &sid, &ct),
            Err(GroupDecryptError::UnknownSession)
        );
        assert_eq!(
            b.decrypt(("mallory", DeviceId(1)), G, &sid, &ct),
            Err(GroupDecryptError::UnknownSession)
        );
        assert_eq!(
            b.decrypt(alice(), GroupId(8), &sid, &ct),
            Err(GroupDecryptError::WrongGroup)
        );
        let mut flipped = ct.clone();
        let n = flipped.len();
        flipped[n / 2] ^= 1;
        assert!(matches!(
            b.decrypt(alice(), G, &sid, &flipped),
            Err(GroupDecryptError::Megolm(_))
        ));
        assert!(matches!(
            b.decrypt(alice(), G, &sid, b"garbage"),
            Err(GroupDecryptError::Megolm(_))
        ));
    }

    #[test]
    fn keys_that_do_not_check_out_are_refused() {
        let (_, mut b, key) = pair(1);
        let other = GroupSessions::default().rotate(G, 1, 0, alice());
        assert_eq!(
            b.add_inbound(alice(), G, &other.session_id, &key.session_key, false),
            Err(KeyError::IdMismatch)
        );
        assert!(matches!(
            b.add_inbound(alice(), G, &key.session_id, b"nope", false),
            Err(KeyError::Invalid(_))
        ));
        let mut forged = key.session_key.clone();
        let n = forged.len();
        forged[n - 1] ^= 1;
        assert!(matches!(
            b.add_inbound(alice(), G, &key.session_id, &forged, false),
            Err(KeyError::Invalid(_))
        ));
        assert_eq!(
            b.add_inbound(alice(), G, &key.session_id, &key.session_key, false),
            Ok(false),
            "the same key twice is taken once"
        );
    }

    #[test]
    fn a_key_made_later_cannot_read_earlier_messages() {
        let (mut a, _, _) = pair(1);
        let (sid, early) = a.encrypt(G, b"before carol").unwrap();
        // Carol joins: epoch 2, a new session, whose key she gets.
        assert_eq!(
            a.outbound_status(G, 2, 0, &RotationPolicy::default()),
            OutboundStatus::NeedsNew
        );
        let key = a.rotate(G, 2, 0, alice());
        let mut carol = GroupSessions::default();
        carol
            .add_inbound(alice(), G, &key.session_id, &key.session_key, false)
            .unwrap();
        assert_eq!(
            carol.decrypt(alice(), G, &sid, &early),
            Err(GroupDecryptError::UnknownSession)
        );
        // Even the current session's key, taken mid-way, reads nothing before its index.
        a.mark_shared(G, &key.session_id);
        let (sid2, m0) = a.encrypt(G, b"0").unwrap();
        let late = SessionKey::from_bytes(&key.session_key).unwrap();
        let mut inbound = InboundGroupSession::new(&late, SessionConfig::version_1());
        inbound.advance_to(1);
        let mut dave = GroupSessions::default();
        dave.keep_inbound(
            ("alice".into(), DeviceId(1), sid2.clone()),
            G,
            inbound,
            false,
        );
        assert!(matches!(
            dave.decrypt(alice(), G, &sid2, &m0),
            Err(GroupDecryptError::Megolm(_))
        ));
    }

    #[test]
    fn sessions_rotate_on_epoch_count_and_age() {
        let policy = RotationPolicy {
            messages: 3,
            age: Duration::from_secs(7 * 24 * 3600),
        };
        let mut a = GroupSessions::default();
        assert_eq!(
            a.outbound_status(G, 1, 0, &policy),
            OutboundStatus::NeedsNew
        );
        let key = a.rotate(G, 1, 0, alice());
        assert_eq!(
            a.outbound_status(G, 1, 0, &policy),
            OutboundStatus::Unshared(key.session_id.clone())
        );
        a.mark_shared(G, "another session");
        assert!(matches!(
            a.outbound_status(G, 1, 0, &policy),
            OutboundStatus::Unshared(_)
        ));
        a.mark_shared(G, &key.session_id);
        assert_eq!(a.outbound_status(G, 1, 0, &policy), OutboundStatus::Ready);
        for _ in 0..3 {
            assert_eq!(a.outbound_status(G, 1, 0, &policy), OutboundStatus::Ready);
            a.encrypt(G, b"x").unwrap();
        }
        assert_eq!(
            a.outbound_status(G, 1, 0, &policy),
            OutboundStatus::NeedsNew,
            "count"
        );
        let key = a.rotate(G, 1, 10, alice());
        a.mark_shared(G, &key.session_id);
        assert_eq!(
            a.outbound_status(G, 2, 10, &policy),
            OutboundStatus::NeedsNew,
            "epoch"
        );
        assert_eq!(
            a.outbound_status(G, 1, 10 + 7 * DAY_MS - 1, &policy),
            OutboundStatus::Ready
        );
        assert_eq!(
            a.outbound_status(G, 1, 10 + 7 * DAY_MS, &policy),
            OutboundStatus::NeedsNew,
            "age"
        );
        a.drop_outbound(G);
        assert!(a.encrypt(G, b"x").is_none());
    }

    #[test]
    fn provisional_keys_of_non_members_go_once_members_are_known() {
        let mut b = GroupSessions::default();
        let k1 = GroupSessions::default().rotate(G, 1, 0, alice());
        let k2 = GroupSessions::default().rotate(G, 1, 0, ("mallory", DeviceId(1)));
        b.add_inbound(alice(), G, &k1.session_id, &k1.session_key, true)
            .unwrap();
        b.add_inbound(
            ("mallory", DeviceId(1)),
            G,
            &k2.session_id,
            &k2.session_key,
            true,
        )
        .unwrap();
        assert_eq!(b.confirm_senders(G, &["alice", "bob"]), 1);
        assert!(b.has_inbound("alice", DeviceId(1), &k1.session_id));
        assert!(!b.has_inbound("mallory", DeviceId(1), &k2.session_id));
        // Confirmed keys stay when alice later leaves (her earlier messages still read).
        assert_eq!(b.confirm_senders(G, &["bob"]), 0);
    }

    #[test]
    fn inbound_sessions_per_device_are_bounded() {
        let mut b = GroupSessions::default();
        let mut first = None;
        for _ in 0..INBOUND_PER_DEVICE + 1 {
            let k = GroupSessions::default().rotate(G, 1, 0, alice());
            b.add_inbound(alice(), G, &k.session_id, &k.session_key, false)
                .unwrap();
            first.get_or_insert(k.session_id);
        }
        assert_eq!(b.inbound.len(), INBOUND_PER_DEVICE);
        assert!(!b.has_inbound("alice", DeviceId(1), &first.unwrap()));
    }

    #[test]
    fn the_state_round_trips_encrypted() {
        let key = [9; 32];
        let (mut a, mut b, shared) = pair(4);
        a.encrypt(G, b"one").unwrap();
        let saved_a = a.to_stored(&key);
        let saved_b = b.to_stored(&key);
        assert!(saved_a
            .outbound
            .iter()
            .all(|o| !o.pickle.contains(&shared.session_id)));
        let mut a2 = GroupSessions::from_stored(saved_a, &key).unwrap();
        let mut b2 = GroupSessions::from_stored(saved_b, &key).unwrap();
        assert_eq!(
            a2.outbound_index(G),
            Some(1),
            "the ratchet position survives"
        );
        assert_eq!(
            a2.outbound_status(G, 4, 0, &RotationPolicy::default()),
            OutboundStatus::Ready
        );
        let (sid, ct) = a2.encrypt(G, b"after restart").unwrap();
        assert_eq!(b2.decrypt(alice(), G, &sid, &ct).unwrap(), b"after restart");
        assert_eq!(b.decrypt(alice(), G, &sid, &ct).unwrap(), b"after restart");
        assert!(GroupSessions::from_stored(b2.to_stored(&key), &[1; 32]).is_err());
    }
}
