//! Group chat, the session machine's part (no I/O, no clock reads).
//!
//! - **Membership** is the server's: this device follows it from `GroupInfo` answers and the
//!   `GroupNotice`s that arrive in order with the group's messages ([`directory`]).
//! - **Sending**: one Megolm ciphertext per message for every member. Before the first
//!   message of a membership epoch (or after [`crate::RotationPolicy`] says so) this device
//!   makes a new Megolm session and sends its key to every other member over Olm, as an
//!   ordinary user-to-user send of `Content::GroupKey` (so every device of the member and our
//!   own other devices get it). The `GroupSend` waits until the server has stored every key
//!   send: the member's mailbox then holds the key before the message. A `GroupSend` with a
//!   stale epoch is refused (`GroupChanged`); the device fetches `Info`, makes a new session
//!   for the new members and sends again under the same id. A removed member never gets the
//!   new key; a new member gets only keys made after it joined.
//! - **Receiving**: a key is taken from a member's device only (or, while this device does
//!   not know the members yet, provisionally until it does); a message is decrypted with the
//!   session its sender's device shared. What cannot be decrypted becomes
//!   `Event::GroupUndecryptable`, never a silent drop.
//!
//! The group state (sessions and directory) lives with the E2EE state ([`E2eeStore`]) and is
//! saved before anything that depends on it leaves (`take_dirty`).

pub(crate) mod body;
pub(crate) mod directory;

use crate::content::{seal, Content};
use crate::e2ee::megolm::{GroupDecryptError, OutboundStatus};
use crate::e2ee::{E2eeStore, RotationPolicy};
use crate::ClientError;
use body::{GroupBody, GroupPlaintext, BODY_VERSION};
use directory::NoticeEffect;
use missive_proto::{
    ClientMsgId, DeviceId, GroupAnswerKind, GroupId, GroupMessage, GroupNotice, GroupRead,
};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Why a group message did not open.
#[derive(Debug)]
pub(crate) enum Unopened {
    /// Its sender's session key has not arrived (yet): keys travel over Olm in the mailbox,
    /// a different stream than the group's log, and may come after the message.
    KeyMissing,
    /// It never will.
    Invalid(ClientError),
}

impl std::fmt::Display for Unopened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::KeyMissing => write!(f, "{}", GroupDecryptError::UnknownSession),
            Self::Invalid(e) => write!(f, "{e}"),
        }
    }
}

/// Wall-clock time as the session sees it: the Unix time at one instant, moved on by the
/// instants the caller passes in (Megolm session ages are kept across runs, which an
/// `Instant` cannot be).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    /// The instant of `unix_ms`.
    pub(crate) at: Instant,
    /// Milliseconds since the Unix epoch at `at`.
    pub(crate) unix_ms: u64,
}

impl WallClock {
    /// Unix ms at `now`.
    pub(crate) fn ms(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.at).as_millis();
        self.unix_ms
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }
}

/// Whether a group send can go out now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GroupReadiness {
    /// Encrypt and send with this epoch.
    Ready(u64),
    /// The members must be fetched first: send an `Info` request and call
    /// [`Groups::fetch_started`] with its id.
    Fetch,
    /// Members or key sends are on their way.
    Wait,
    /// A new session was made: send each (member, sealed `GroupKey` content) as a
    /// user-to-user send, then call [`Groups::distributing`] with their ids.
    Distribute {
        /// The new session.
        session_id: String,
        /// One key message per other member.
        keys: Vec<(String, Vec<u8>)>,
    },
}

/// Group state of one device's session.
#[derive(Debug)]
pub(crate) struct Groups {
    store: E2eeStore,
    me: String,
    my_device: DeviceId,
    policy: RotationPolicy,
    wall: WallClock,
    /// The session's own `Info` requests on the wire: request id → group.
    fetches: HashMap<u32, GroupId>,
    /// Key sends not yet stored by the server, per group: (session id, send ids).
    distributing: HashMap<GroupId, (String, HashSet<ClientMsgId>)>,
    /// Read receipts waiting for a connection.
    reads: Vec<GroupRead>,
    /// The group state changed since the last save.
    dirty: bool,
}

impl Groups {
    /// Group state for `me` on `my_device`, kept in `store`.
    pub(crate) fn new(store: E2eeStore, me: &str, my_device: DeviceId, now: Instant) -> Self {
        Self {
            store,
            me: me.to_owned(),
            my_device,
            policy: RotationPolicy::default(),
            wall: WallClock {
                at: now,
                unix_ms: 0,
            },
            fetches: HashMap::new(),
            distributing: HashMap::new(),
            reads: Vec::new(),
            dirty: false,
        }
    }

    /// Sets when outbound sessions rotate and what time it is.
    pub(crate) fn configure(&mut self, policy: RotationPolicy, wall: WallClock) {
        self.policy = policy;
        self.wall = wall;
    }

    /// A new connection: the old one's requests will never be answered.
    pub(crate) fn new_connection(&mut self) {
        self.fetches.clear();
    }

    /// Whether a send to `group` can go out now (see [`GroupReadiness`]).
    pub(crate) fn readiness(&mut self, group: GroupId, now: Instant) -> GroupReadiness {
        let now_ms = self.wall.ms(now);
        let mut g = self.store.lock_groups();
        let view = match g.directory.get(group) {
            Some(v) if v.complete && v.joined => v.clone(),
            // Unknown, not known whole, or we seem to be out (maybe added back since):
            // the server says.
            _ => {
                return if self.fetches.values().any(|f| *f == group) {
                    GroupReadiness::Wait
                } else {
                    GroupReadiness::Fetch
                };
            }
        };
        if let Some((session_id, _)) = self.distributing.get(&group) {
            // Still current: wait for its key sends. Replaced (the epoch moved on while the
            // keys went out): make another one below.
            if g.sessions
                .outbound_status(group, view.epoch, now_ms, &self.policy)
                == OutboundStatus::Unshared(session_id.clone())
            {
                return GroupReadiness::Wait;
            }
            self.distributing.remove(&group);
        }
        match g
            .sessions
            .outbound_status(group, view.epoch, now_ms, &self.policy)
        {
            OutboundStatus::Ready => return GroupReadiness::Ready(view.epoch),
            // Unshared with no key sends of this run on their way: an earlier run stopped
            // before they were stored. Nobody may have it; start over.
            OutboundStatus::Unshared(_) | OutboundStatus::NeedsNew => {}
        }
        let key = g
            .sessions
            .rotate(group, view.epoch, now_ms, (&self.me, self.my_device));
        self.dirty = true;
        tracing::debug!(group = group.0, epoch = view.epoch, "new group session");
        let content = Content::GroupKey(Box::new(crate::content::GroupKey {
            group,
            epoch: view.epoch,
            session_id: key.session_id.clone(),
            session_key: key.session_key,
        }));
        let sealed = match seal(&content) {
            Ok(s) => s,
            Err(e) => {
                // A key is a few hundred bytes; `seal` refuses only what exceeds 16 MiB.
                tracing::error!(error = %e, "cannot seal a group key");
                return GroupReadiness::Wait;
            }
        };
        let keys: Vec<(String, Vec<u8>)> = view
            .members
            .iter()
            .filter(|m| m.user != self.me)
            .map(|m| (m.user.clone(), sealed.clone()))
            .collect();
        if keys.is_empty() {
            // Nobody else to tell.
            g.sessions.mark_shared(group, &key.session_id);
            return GroupReadiness::Ready(view.epoch);
        }
        GroupReadiness::Distribute {
            session_id: key.session_id,
            keys,
        }
    }

    /// The key sends of `group`'s new session `session_id` are queued under `ids`.
    pub(crate) fn distributing(
        &mut self,
        group: GroupId,
        session_id: String,
        ids: impl IntoIterator<Item = ClientMsgId>,
    ) {
        self.distributing
            .insert(group, (session_id, ids.into_iter().collect()));
    }

    /// The key sends `group`'s send waits for, if any.
    pub(crate) fn pending_keys(&self, group: GroupId) -> Vec<ClientMsgId> {
        self.distributing
            .get(&group)
            .map(|(_, ids)| ids.iter().copied().collect())
            .unwrap_or_default()
    }

    /// A send finished (stored, or failed for good). Returns true when it was a key send:
    /// once a session's last key send is done the session is shared and the group's sends
    /// may go. A key send that failed for good (the member is gone) leaves that member
    /// without the key; the others still get the message.
    pub(crate) fn send_finished(&mut self, id: ClientMsgId, ok: bool) -> bool {
        let Some((&group, _)) = self
            .distributing
            .iter()
            .find(|(_, (_, ids))| ids.contains(&id))
        else {
            return false;
        };
        if !ok {
            tracing::warn!(group = group.0, "a group key could not be sent to a member");
        }
        let (session_id, ids) = self
            .distributing
            .get_mut(&group)
            .expect("found just above, under the same borrow of self");
        ids.remove(&id);
        if ids.is_empty() {
            let session_id = std::mem::take(session_id);
            self.distributing.remove(&group);
            self.store
                .lock_groups()
                .sessions
                .mark_shared(group, &session_id);
            self.dirty = true;
        }
        true
    }

    /// Encrypts `content` (sealed) for `group` under `id` with its outbound session.
    pub(crate) fn seal(&mut self, group: GroupId, id: ClientMsgId, content: &[u8]) -> Vec<u8> {
        let plain = GroupPlaintext {
            group,
            client_msg_id: id,
            content: content.to_vec(),
        }
        .encode();
        let sealed = self.store.lock_groups().sessions.encrypt(group, &plain);
        self.dirty = true;
        match sealed {
            Some((session_id, ciphertext)) => GroupBody {
                version: BODY_VERSION,
                session_id,
                ciphertext,
            }
            .encode(),
            // Only called after `readiness` said Ready, which needs a session.
            None => Vec::new(),
        }
    }

    /// The session asked the server for `group`'s `Info` under `request_id`.
    pub(crate) fn fetch_started(&mut self, request_id: u32, group: GroupId) {
        self.fetches.insert(request_id, group);
    }

    /// Whether `request_id` is one of ours; forgets it (answered or refused).
    pub(crate) fn fetch_done(&mut self, request_id: u32) -> Option<GroupId> {
        self.fetches.remove(&request_id)
    }

    /// The next send to `group` must learn its members first (its epoch was refused).
    pub(crate) fn mark_stale(&mut self, group: GroupId) {
        self.store.lock_groups().directory.mark_stale(group);
        self.dirty = true;
    }

    /// Whether an `Info` of `group` is on the wire.
    pub(crate) fn fetching(&self, group: GroupId) -> bool {
        self.fetches.values().any(|g| *g == group)
    }

    /// Learns from an answer to a group request (ours or the app's).
    pub(crate) fn on_answer(&mut self, answer: &GroupAnswerKind) {
        let mut g = self.store.lock_groups();
        match answer {
            GroupAnswerKind::Info(info) => {
                g.directory.set_info(info);
                let members: Vec<&str> = info.members.iter().map(|m| m.user.as_str()).collect();
                let dropped = g.sessions.confirm_senders(info.group, &members);
                if dropped > 0 {
                    tracing::warn!(
                        group = info.group.0,
                        dropped,
                        "dropped group keys from users who are not members"
                    );
                }
            }
            GroupAnswerKind::Left { group } => {
                g.directory.left(*group, &self.me);
                g.sessions.drop_outbound(*group);
                self.distributing.remove(group);
            }
            GroupAnswerKind::List(list) => g.directory.set_list(list),
            GroupAnswerKind::Invite { .. }
            | GroupAnswerKind::Revoked
            | GroupAnswerKind::Receipts(_) => return,
        }
        self.dirty = true;
    }

    /// Applies a membership change `actor` made; returns what it meant for this device.
    pub(crate) fn on_notice(&mut self, actor: &str, notice: &GroupNotice) -> NoticeEffect {
        let mut g = self.store.lock_groups();
        let effect = g.directory.apply(&self.me, actor, notice);
        if effect.left {
            g.sessions.drop_outbound(notice.group);
            self.distributing.remove(&notice.group);
        }
        if !effect.incomplete {
            let members: Vec<String> = g
                .directory
                .get(notice.group)
                .map(|v| v.members.iter().map(|m| m.user.clone()).collect())
                .unwrap_or_default();
            let members: Vec<&str> = members.iter().map(String::as_str).collect();
            g.sessions.confirm_senders(notice.group, &members);
        }
        self.dirty = true;
        effect
    }

    /// Whether this device is in `group` with a member list it does not know whole.
    pub(crate) fn needs_members(&self, group: GroupId) -> bool {
        self.store
            .lock_groups()
            .directory
            .get(group)
            .is_some_and(|v| v.joined && !v.complete)
    }

    /// A `GroupKey` that (`from`, `device`) sent over Olm; `sent_to` is set on the copy our
    /// own other device made of its key message to that member. Taken from ourselves and
    /// from members; from others only while the members are not known (provisionally).
    pub(crate) fn accept_key(
        &mut self,
        (from, device): (&str, DeviceId),
        group: GroupId,
        session_id: &str,
        session_key: &[u8],
    ) {
        let mut g = self.store.lock_groups();
        let (member, known) = match g.directory.get(group) {
            Some(v) => (v.has(from), v.complete),
            None => (false, false),
        };
        let provisional = if from == self.me || member {
            false
        } else if !known {
            true
        } else {
            tracing::warn!(
                group = group.0,
                %from,
                "ignoring a group key from a user who is not a member"
            );
            return;
        };
        match g
            .sessions
            .add_inbound((from, device), group, session_id, session_key, provisional)
        {
            Ok(true) => self.dirty = true,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(group = group.0, %from, device = device.0, error = %e, "refusing a group key");
            }
        }
    }

    /// Decrypts a group message from (`from`, `device`) delivered under `id`.
    pub(crate) fn open(
        &mut self,
        (from, device): (&str, DeviceId),
        id: ClientMsgId,
        m: &GroupMessage,
    ) -> Result<Content, Unopened> {
        let body = GroupBody::decode(&m.body).map_err(Unopened::Invalid)?;
        let plain = self
            .store
            .lock_groups()
            .sessions
            .decrypt((from, device), m.group, &body.session_id, &body.ciphertext)
            .map_err(|e| match e {
                GroupDecryptError::UnknownSession => Unopened::KeyMissing,
                e => Unopened::Invalid(ClientError::InvalidContent(e.to_string())),
            })?;
        let p = GroupPlaintext::decode_for(&plain, m.group, id).map_err(Unopened::Invalid)?;
        Content::decode(&p.content).map_err(Unopened::Invalid)
    }

    /// A read receipt to send once connected.
    pub(crate) fn queue_read(&mut self, read: GroupRead) {
        self.reads.push(read);
    }

    /// Read receipts waiting for a connection.
    pub(crate) fn take_reads(&mut self) -> Vec<GroupRead> {
        std::mem::take(&mut self.reads)
    }

    /// Whether the group state changed since the last call.
    pub(crate) fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }
}
