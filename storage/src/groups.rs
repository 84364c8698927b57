//! Groups: membership (on the server: it decides who may send and whose devices read the
//! group's log), invite tokens, and group messages written once to the group's log (see
//! `group_log.rs`).
//!
//! Every membership change raises the group's epoch and appends a `Payload::GroupEvent` to
//! the log, in order with the messages; the members it adds start reading there, the ones
//! it removes stop there. A `GroupSend` names the epoch it was encrypted for and is refused
//! when it is stale.
//!
//! Stores written before the logs held a group message as one body record (`b`) plus a
//! reference in each member device's mailbox, with a receipt record (`r`) counting the
//! references left: such references are still resolved, acknowledged and swept here.

use crate::group_log::{count_bits, worth_telling};
use crate::records::{decode, encode, StoredItem};
use crate::write::{Class, Reads, Tx, Write};
use crate::{keys, StorageError};
use missive_proto::{
    ClientMsgId, DeviceId, GroupChange, GroupId, GroupInfo, GroupMember, GroupMessage, GroupNotice,
    GroupReceipt, GroupSummary, Payload,
};
use rkyv::{Archive, Deserialize, Serialize};

/// A group as stored.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupRecord {
    /// Its name.
    pub(crate) name: String,
    /// When it was created, ms since the Unix epoch.
    pub(crate) created_ms: u64,
    /// Raised by every membership change.
    pub(crate) epoch: u64,
    /// Members, longest-standing first.
    pub(crate) members: Vec<MemberRecord>,
}

/// One member.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberRecord {
    /// The user.
    pub(crate) user: String,
    /// May change membership.
    pub(crate) admin: bool,
    /// Its bit in receipt bitmaps: the lowest slot free when it joined.
    pub(crate) slot: u32,
}

/// A group invite token.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct InviteRecord {
    /// The group it lets one join.
    pub(crate) group: u64,
    /// When it stops working, ms since the Unix epoch (0: only when revoked).
    pub(crate) expires_at_ms: u64,
}

/// The receipt state of one group message.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReceiptRecord {
    /// When it was stored, ms since the Unix epoch (drives the retention sweep).
    pub(crate) created_ms: u64,
    /// References not acknowledged yet; the body is freed at 0.
    pub(crate) refs_left: u32,
    /// Members it went to (the sender not counted).
    pub(crate) of: u32,
    /// Slots of the members with a device that acknowledged it.
    pub(crate) delivered: Vec<u8>,
    /// Slots of the members who read it.
    pub(crate) read: Vec<u8>,
}

impl ReceiptRecord {
    fn receipt(&self, group: GroupId, client_msg_id: ClientMsgId) -> GroupReceipt {
        GroupReceipt {
            group,
            client_msg_id,
            delivered: count_bits(&self.delivered),
            read: count_bits(&self.read),
            of: self.of,
        }
    }
}

/// Sets bit `slot`; false when it was set already.
pub(crate) fn set_bit(bits: &mut Vec<u8>, slot: u32) -> bool {
    let (byte, bit) = ((slot / 8) as usize, 1u8 << (slot % 8));
    if bits.len() <= byte {
        bits.resize(byte + 1, 0);
    }
    let was = bits[byte] & bit != 0;
    bits[byte] |= bit;
    !was
}

/// Why a group request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRefusal {
    /// No such group.
    UnknownGroup,
    /// The requester is not a member.
    NotMember,
    /// The requester is not an admin.
    NotAdmin,
    /// The group would pass its member limit.
    Full,
    /// The send named another epoch than the current one.
    Changed {
        /// The current epoch.
        epoch: u64,
    },
    /// The invite token is unknown, expired or revoked.
    InviteInvalid,
    /// No such user (in an `Add`).
    UnknownUser(String),
}

/// What a group send did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupSendOutcome {
    /// Stored once, in the group's log.
    Stored {
        /// Storage time, ms since the Unix epoch.
        server_ts_ms: u64,
        /// Its seq in the group's log.
        seq: u64,
        /// Members it went to (the sender not counted).
        of: u32,
    },
    /// This sender had already stored this message id; nothing was written.
    Duplicate {
        /// When the first copy was stored.
        server_ts_ms: u64,
    },
    /// Refused; nothing was written.
    Refused(GroupRefusal),
}

/// A group as its members see it, from a record.
fn info(group: GroupId, rec: &GroupRecord) -> GroupInfo {
    GroupInfo {
        group,
        name: rec.name.clone(),
        epoch: rec.epoch,
        members: rec
            .members
            .iter()
            .map(|m| GroupMember {
                user: m.user.clone(),
                admin: m.admin,
            })
            .collect(),
    }
}

/// The record of `group`.
pub(crate) fn record(
    r: &(impl Reads + ?Sized),
    group: GroupId,
) -> Result<Option<GroupRecord>, StorageError> {
    r.read(&keys::group(group))?
        .map(|v| decode::<GroupRecord>(&v, "group record"))
        .transpose()
}

/// `group` as `user` may see it: only members see a group.
pub(crate) fn info_for(
    r: &(impl Reads + ?Sized),
    group: GroupId,
    user: &str,
) -> Result<Result<GroupInfo, GroupRefusal>, StorageError> {
    Ok(match record(r, group)? {
        None => Err(GroupRefusal::UnknownGroup),
        Some(rec) if !rec.members.iter().any(|m| m.user == user) => Err(GroupRefusal::NotMember),
        Some(rec) => Ok(info(group, &rec)),
    })
}

/// The groups `user` is a member of.
pub(crate) fn groups_of(
    r: &(impl Reads + ?Sized),
    user: &str,
) -> Result<Vec<GroupSummary>, StorageError> {
    let prefix = keys::memberships_of(user);
    let mut ids = Vec::new();
    for kv in r.scan(&prefix) {
        let (k, _) = kv?;
        if let Some(id) = k.get(prefix.len()..).and_then(keys::be_u64) {
            ids.push(GroupId(id));
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for group in ids {
        if let Some(rec) = record(r, group)? {
            if let Some(me) = rec.members.iter().find(|m| m.user == user) {
                out.push(GroupSummary {
                    group,
                    name: rec.name.clone(),
                    members: rec.members.len() as u32,
                    admin: me.admin,
                });
            }
        }
    }
    Ok(out)
}

/// Receipts of `sender`'s messages `ids` in `group` (those still known).
pub(crate) fn receipts(
    r: &(impl Reads + ?Sized),
    group: GroupId,
    sender: &str,
    ids: &[ClientMsgId],
) -> Result<Vec<GroupReceipt>, StorageError> {
    let mut out = Vec::new();
    for id in ids {
        if let Some(receipt) = crate::group_log::receipt(r, group, sender, *id)? {
            out.push(receipt);
        } else if let Some(v) = r.read(&keys::group_receipt(group, sender, id))? {
            out.push(decode::<ReceiptRecord>(&v, "group receipt")?.receipt(group, *id));
        }
    }
    Ok(out)
}

/// The body of a stored reference `item` (a `Payload::Group` with an empty body), put in
/// place; false when the body is gone (expired): the reference is then not delivered.
pub(crate) fn resolve(
    r: &(impl Reads + ?Sized),
    item: &mut StoredItem,
) -> Result<bool, StorageError> {
    let Payload::Group(g) = &mut item.payload else {
        return Ok(true);
    };
    if !g.body.is_empty() {
        return Ok(true);
    }
    match r.read(&keys::group_body(g.group, &item.from, &item.client_msg_id))? {
        Some(body) => {
            g.body = body;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Groups whose records the committer holds decoded, with each member's slot: an ack of a
/// group message needs its member's slot, and decoding a 1,024-member record per ack was
/// most of the fan-out's cost. Written through by every change of a record.
#[derive(Default)]
struct GroupCache {
    groups: std::collections::HashMap<GroupId, std::sync::Arc<CachedGroup>>,
}

/// A decoded group record, its members' slots, and its members as the readers of what it
/// logs.
struct CachedGroup {
    record: GroupRecord,
    slots: std::collections::HashMap<String, u32>,
    readers: std::sync::Arc<[String]>,
}

/// Groups the cache holds at most; past this it starts over.
const GROUP_CACHE_LIMIT: usize = 10_000;

impl CachedGroup {
    fn new(record: GroupRecord) -> Self {
        let slots = record
            .members
            .iter()
            .map(|m| (m.user.clone(), m.slot))
            .collect();
        let readers = user_names(&record).into();
        Self {
            record,
            slots,
            readers,
        }
    }
}

impl Tx<'_> {
    fn put_group(&mut self, group: GroupId, rec: &GroupRecord) -> Result<(), StorageError> {
        self.put(keys::group(group), encode(rec)?);
        self.mem
            .cache::<GroupCache>()
            .groups
            .insert(group, std::sync::Arc::new(CachedGroup::new(rec.clone())));
        Ok(())
    }

    /// `group`'s record as this batch sees it, decoded once and then remembered.
    fn cached_group(
        &mut self,
        group: GroupId,
    ) -> Result<Option<std::sync::Arc<CachedGroup>>, StorageError> {
        if let Some(g) = self.mem.cache::<GroupCache>().groups.get(&group) {
            return Ok(Some(g.clone()));
        }
        let Some(rec) = record(self, group)? else {
            return Ok(None);
        };
        let cached = std::sync::Arc::new(CachedGroup::new(rec));
        let cache = self.mem.cache::<GroupCache>();
        if cache.groups.len() >= GROUP_CACHE_LIMIT {
            cache.groups.clear();
        }
        cache.groups.insert(group, cached.clone());
        Ok(Some(cached))
    }

    /// Appends `change` to the group's log, read by the devices of `readers`; the devices of
    /// `joined` start reading there and those of `left` stop there. Returns its seq.
    #[allow(clippy::too_many_arguments)]
    fn tell(
        &mut self,
        readers: Vec<String>,
        actor: &str,
        group: GroupId,
        epoch: u64,
        change: GroupChange,
        (joined, left): (&[String], &[String]),
        now_ms: u64,
    ) -> Result<u64, StorageError> {
        let item = StoredItem {
            from: actor.to_owned(),
            from_device: DeviceId(0),
            client_msg_id: event_id(group, epoch),
            server_ts_ms: now_ms,
            payload: Payload::GroupEvent(Box::new(GroupNotice {
                group,
                epoch,
                change,
            })),
        };
        let seq = self.append_to_log(group, item, readers.into())?;
        for user in joined {
            self.open_span(user, group, seq)?;
        }
        for user in left {
            self.close_span(user, group, seq)?;
        }
        Ok(seq)
    }

    /// Adds `users` to `rec` (each with the lowest free slot) and marks their membership.
    fn admit(&mut self, group: GroupId, rec: &mut GroupRecord, users: &[String]) {
        for user in users {
            let mut slot = 0;
            while rec.members.iter().any(|m| m.slot == slot) {
                slot += 1;
            }
            rec.members.push(MemberRecord {
                user: user.clone(),
                admin: false,
                slot,
            });
            self.put(keys::membership(user, group), Vec::new());
        }
    }

    /// Takes `users` out of `rec`; when no admin is left, the longest-standing member is
    /// promoted (returned).
    fn dismiss(
        &mut self,
        group: GroupId,
        rec: &mut GroupRecord,
        users: &[String],
    ) -> Option<String> {
        rec.members.retain(|m| !users.contains(&m.user));
        for user in users {
            self.remove(keys::membership(user, group));
        }
        if !rec.members.is_empty() && !rec.members.iter().any(|m| m.admin) {
            rec.members[0].admin = true;
            return Some(rec.members[0].user.clone());
        }
        None
    }
}

/// A stable id for the event of `group` at `epoch` (so its delivery is deduplicated like a
/// message's).
fn event_id(group: GroupId, epoch: u64) -> ClientMsgId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&group.0.to_be_bytes());
    id[8..].copy_from_slice(&epoch.to_be_bytes());
    ClientMsgId(id)
}

fn user_names(rec: &GroupRecord) -> Vec<String> {
    rec.members.iter().map(|m| m.user.clone()).collect()
}

/// Creates a group with `creator` as its first member and admin.
#[derive(Debug)]
pub(crate) struct CreateGroup {
    pub(crate) creator: String,
    pub(crate) name: String,
    pub(crate) now_ms: u64,
}

impl Write for CreateGroup {
    type Output = GroupInfo;

    fn class(&self) -> Class {
        Class::ADDS
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<GroupInfo, StorageError> {
        let next = tx
            .read(&keys::next_group())?
            .and_then(|v| keys::be_u64(&v))
            .unwrap_or(1);
        let group = GroupId(next);
        tx.put(keys::next_group(), (next + 1).to_be_bytes().to_vec());
        let mut rec = GroupRecord {
            name: self.name.clone(),
            created_ms: self.now_ms,
            epoch: 1,
            members: Vec::new(),
        };
        tx.admit(group, &mut rec, std::slice::from_ref(&self.creator));
        rec.members[0].admin = true;
        tx.put_group(group, &rec)?;
        tx.tell(
            vec![self.creator.clone()],
            &self.creator,
            group,
            rec.epoch,
            GroupChange::Created(self.name),
            (std::slice::from_ref(&self.creator), &[]),
            self.now_ms,
        )?;
        Ok(info(group, &rec))
    }
}

/// A change of membership or roles by `actor`.
#[derive(Debug)]
pub(crate) enum Change {
    /// Add users (admins only).
    Add(Vec<String>),
    /// Remove members (admins only; removing oneself is `Leave`).
    Remove(Vec<String>),
    /// Make a member an admin (admins only).
    Promote(String),
    /// The actor leaves.
    Leave,
}

/// Applies a [`Change`] to a group: checks the actor's role, raises the epoch and tells every
/// member (and the removed ones) in order with the group's messages.
#[derive(Debug)]
pub(crate) struct ChangeMembers {
    pub(crate) actor: String,
    pub(crate) group: GroupId,
    pub(crate) change: Change,
    /// Most members the group may have.
    pub(crate) max_members: usize,
    pub(crate) now_ms: u64,
}

impl Write for ChangeMembers {
    type Output = Result<GroupInfo, GroupRefusal>;

    fn class(&self) -> Class {
        match self.change {
            Change::Add(_) => Class::ADDS,
            _ => Class::UPDATE,
        }
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<Self::Output, StorageError> {
        let Some(mut rec) = record(tx, self.group)? else {
            return Ok(Err(GroupRefusal::UnknownGroup));
        };
        let Some(me) = rec.members.iter().find(|m| m.user == self.actor) else {
            return Ok(Err(GroupRefusal::NotMember));
        };
        let is_admin = me.admin;
        let before = user_names(&rec);
        let mut notices = Vec::new();
        let mut told_too = Vec::new();
        let mut joined = Vec::new();
        match self.change {
            Change::Add(users) => {
                if !is_admin {
                    return Ok(Err(GroupRefusal::NotAdmin));
                }
                let mut fresh: Vec<String> = Vec::new();
                for u in users {
                    if !before.contains(&u) && !fresh.contains(&u) {
                        if crate::accounts::user_record(tx, &u)?.is_none() {
                            return Ok(Err(GroupRefusal::UnknownUser(u)));
                        }
                        fresh.push(u);
                    }
                }
                if fresh.is_empty() {
                    return Ok(Ok(info(self.group, &rec)));
                }
                if rec.members.len() + fresh.len() > self.max_members {
                    return Ok(Err(GroupRefusal::Full));
                }
                tx.admit(self.group, &mut rec, &fresh);
                joined = fresh.clone();
                notices.push(GroupChange::Added(fresh));
            }
            Change::Remove(users) => {
                if !is_admin {
                    return Ok(Err(GroupRefusal::NotAdmin));
                }
                let gone: Vec<String> = users
                    .into_iter()
                    .filter(|u| before.contains(u) && *u != self.actor)
                    .collect();
                if gone.is_empty() {
                    return Ok(Ok(info(self.group, &rec)));
                }
                tx.dismiss(self.group, &mut rec, &gone);
                told_too = gone.clone();
                notices.push(GroupChange::Removed(gone));
            }
            Change::Promote(user) => {
                if !is_admin {
                    return Ok(Err(GroupRefusal::NotAdmin));
                }
                let Some(m) = rec.members.iter_mut().find(|m| m.user == user) else {
                    return Ok(Err(GroupRefusal::UnknownUser(user)));
                };
                if m.admin {
                    return Ok(Ok(info(self.group, &rec)));
                }
                m.admin = true;
                notices.push(GroupChange::Promoted(vec![user]));
            }
            Change::Leave => {
                let promoted = tx.dismiss(self.group, &mut rec, std::slice::from_ref(&self.actor));
                told_too.push(self.actor.clone());
                notices.push(GroupChange::Left);
                if let Some(p) = promoted {
                    notices.push(GroupChange::Promoted(vec![p]));
                }
            }
        }
        // The first event is the one that adds or removes: its readers include those it
        // removes (their last item), and those it adds start there.
        let mut left = told_too;
        for change in notices {
            rec.epoch += 1;
            let mut readers = user_names(&rec);
            readers.extend(left.iter().cloned());
            tx.tell(
                readers,
                &self.actor,
                self.group,
                rec.epoch,
                change,
                (&joined, &left),
                self.now_ms,
            )?;
            joined.clear();
            left.clear();
        }
        if rec.members.is_empty() {
            // The last member left: nobody can see or use the group any more.
            tx.remove(keys::group(self.group));
            tx.mem.cache::<GroupCache>().groups.remove(&self.group);
        } else {
            tx.put_group(self.group, &rec)?;
        }
        Ok(Ok(info(self.group, &rec)))
    }
}

/// Stores an invite token of `group` (admins only).
#[derive(Debug)]
pub(crate) struct CreateInvite {
    pub(crate) actor: String,
    pub(crate) group: GroupId,
    pub(crate) token: String,
    /// 0: valid until revoked.
    pub(crate) expires_at_ms: u64,
}

impl Write for CreateInvite {
    type Output = Result<(), GroupRefusal>;

    fn class(&self) -> Class {
        Class::ADDS
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<Self::Output, StorageError> {
        match record(tx, self.group)? {
            None => return Ok(Err(GroupRefusal::UnknownGroup)),
            Some(rec) => match rec.members.iter().find(|m| m.user == self.actor) {
                None => return Ok(Err(GroupRefusal::NotMember)),
                Some(m) if !m.admin => return Ok(Err(GroupRefusal::NotAdmin)),
                Some(_) => {}
            },
        }
        let rec = InviteRecord {
            group: self.group.0,
            expires_at_ms: self.expires_at_ms,
        };
        tx.put(keys::group_invite(&self.token), encode(&rec)?);
        Ok(Ok(()))
    }
}

/// Revokes an invite token of `group` (admins only).
#[derive(Debug)]
pub(crate) struct RevokeInvite {
    pub(crate) actor: String,
    pub(crate) group: GroupId,
    pub(crate) token: String,
}

impl Write for RevokeInvite {
    type Output = Result<(), GroupRefusal>;

    fn class(&self) -> Class {
        Class::UPDATE
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<Self::Output, StorageError> {
        let Some(rec) = record(tx, self.group)? else {
            return Ok(Err(GroupRefusal::UnknownGroup));
        };
        match rec.members.iter().find(|m| m.user == self.actor) {
            None => return Ok(Err(GroupRefusal::NotMember)),
            Some(m) if !m.admin => return Ok(Err(GroupRefusal::NotAdmin)),
            Some(_) => {}
        }
        let key = keys::group_invite(&self.token);
        let Some(v) = tx.read(&key)? else {
            return Ok(Err(GroupRefusal::InviteInvalid));
        };
        if decode::<InviteRecord>(&v, "group invite")?.group != self.group.0 {
            return Ok(Err(GroupRefusal::InviteInvalid));
        }
        tx.remove(key);
        Ok(Ok(()))
    }
}

/// Joins the group of an invite token.
#[derive(Debug)]
pub(crate) struct JoinByInvite {
    pub(crate) user: String,
    pub(crate) token: String,
    pub(crate) max_members: usize,
    pub(crate) now_ms: u64,
}

impl Write for JoinByInvite {
    type Output = Result<GroupInfo, GroupRefusal>;

    fn class(&self) -> Class {
        Class::ADDS
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<Self::Output, StorageError> {
        let Some(v) = tx.read(&keys::group_invite(&self.token))? else {
            return Ok(Err(GroupRefusal::InviteInvalid));
        };
        let invite = decode::<InviteRecord>(&v, "group invite")?;
        if invite.expires_at_ms != 0 && self.now_ms >= invite.expires_at_ms {
            return Ok(Err(GroupRefusal::InviteInvalid));
        }
        let group = GroupId(invite.group);
        let Some(mut rec) = record(tx, group)? else {
            return Ok(Err(GroupRefusal::InviteInvalid));
        };
        if rec.members.iter().any(|m| m.user == self.user) {
            return Ok(Ok(info(group, &rec)));
        }
        if rec.members.len() >= self.max_members {
            return Ok(Err(GroupRefusal::Full));
        }
        tx.admit(group, &mut rec, std::slice::from_ref(&self.user));
        rec.epoch += 1;
        tx.tell(
            user_names(&rec),
            &self.user,
            group,
            rec.epoch,
            GroupChange::Joined,
            (std::slice::from_ref(&self.user), &[]),
            self.now_ms,
        )?;
        tx.put_group(group, &rec)?;
        Ok(Ok(info(group, &rec)))
    }
}

/// One message to every member of a group, appended once to the group's log (the sending
/// device skips it; the sender's other devices read it like every member's).
#[derive(Debug)]
pub(crate) struct GroupSend {
    pub(crate) from: String,
    pub(crate) from_device: DeviceId,
    pub(crate) client_msg_id: ClientMsgId,
    pub(crate) group: GroupId,
    pub(crate) epoch: u64,
    pub(crate) body: Vec<u8>,
    /// The item is dropped this long after `now_ms` (0: never).
    pub(crate) expires_in_secs: u32,
    pub(crate) now_ms: u64,
}

impl Write for GroupSend {
    type Output = GroupSendOutcome;

    fn class(&self) -> Class {
        Class::ADDS
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<GroupSendOutcome, StorageError> {
        let dedup_key = keys::dedup(&self.from, self.from_device, &self.client_msg_id);
        if let Some(v) = tx.read(&dedup_key)? {
            let ts = keys::be_u64(&v).unwrap_or(0);
            return Ok(GroupSendOutcome::Duplicate { server_ts_ms: ts });
        }
        let refuse = |r| Ok(GroupSendOutcome::Refused(r));
        let Some(cached) = tx.cached_group(self.group)? else {
            return refuse(GroupRefusal::UnknownGroup);
        };
        if !cached.slots.contains_key(&self.from) {
            return refuse(GroupRefusal::NotMember);
        }
        if cached.record.epoch != self.epoch {
            return refuse(GroupRefusal::Changed {
                epoch: cached.record.epoch,
            });
        }
        let of = cached.record.members.len().saturating_sub(1) as u32;
        let item = StoredItem {
            from: self.from.clone(),
            from_device: self.from_device,
            client_msg_id: self.client_msg_id,
            server_ts_ms: self.now_ms,
            payload: Payload::Group(Box::new(GroupMessage {
                group: self.group,
                body: self.body,
            })),
        };
        let seq = tx.append_to_log(self.group, item, cached.readers.clone())?;
        tx.logged_message(
            self.group,
            seq,
            (&self.from, self.client_msg_id),
            of,
            self.now_ms,
        )?;
        if self.expires_in_secs > 0 {
            let at = self
                .now_ms
                .saturating_add(u64::from(self.expires_in_secs) * 1000);
            tx.put(
                keys::expiry(at, &keys::group_log(self.group, seq)),
                Vec::new(),
            );
        }
        tx.put(dedup_key, self.now_ms.to_be_bytes().to_vec());
        Ok(GroupSendOutcome::Stored {
            server_ts_ms: self.now_ms,
            seq,
            of,
        })
    }
}

/// A member read a group message: counted once per member in its receipt record.
#[derive(Debug)]
pub(crate) struct MarkRead {
    pub(crate) reader: String,
    pub(crate) group: GroupId,
    pub(crate) sender: String,
    pub(crate) client_msg_id: ClientMsgId,
}

impl Write for MarkRead {
    /// The message's new counts when they changed.
    type Output = Option<GroupReceipt>;

    fn class(&self) -> Class {
        Class::UPDATE
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<Option<GroupReceipt>, StorageError> {
        if self.reader == self.sender {
            return Ok(None);
        }
        let Some(cached) = tx.cached_group(self.group)? else {
            return Ok(None);
        };
        let Some(&slot) = cached.slots.get(&self.reader) else {
            return Ok(None);
        };
        if let Some(logged) =
            crate::group_log::mark_read(tx, self.group, slot, &self.sender, self.client_msg_id)?
        {
            return Ok(logged);
        }
        let key = keys::group_receipt(self.group, &self.sender, &self.client_msg_id);
        let Some(v) = tx.read(&key)? else {
            return Ok(None);
        };
        let mut receipt = decode::<ReceiptRecord>(&v, "group receipt")?;
        // Reading implies having it.
        let fresh_delivery = set_bit(&mut receipt.delivered, slot);
        if !set_bit(&mut receipt.read, slot) && !fresh_delivery {
            return Ok(None);
        }
        tx.put(key, encode(&receipt)?);
        let tell = worth_telling(count_bits(&receipt.read), receipt.of);
        Ok(tell.then(|| receipt.receipt(self.group, self.client_msg_id)))
    }
}

/// A reference to a group message was acknowledged by a device of `member`: one reference
/// fewer (the body goes with the last), and the member counts as delivered. Returns the
/// sender and the new counts when they changed.
pub(crate) fn reference_acked(
    tx: &mut Tx<'_>,
    member: &str,
    group: GroupId,
    sender: &str,
    client_msg_id: ClientMsgId,
) -> Result<Option<(String, GroupReceipt)>, StorageError> {
    let key = keys::group_receipt(group, sender, &client_msg_id);
    let Some(v) = tx.read(&key)? else {
        return Ok(None); // expired or swept
    };
    let mut receipt = decode::<ReceiptRecord>(&v, "group receipt")?;
    receipt.refs_left = receipt.refs_left.saturating_sub(1);
    if receipt.refs_left == 0 {
        tx.remove(keys::group_body(group, sender, &client_msg_id));
    }
    let mut changed = false;
    if member != sender {
        let slot = tx
            .cached_group(group)?
            .and_then(|g| g.slots.get(member).copied());
        if let Some(slot) = slot {
            changed = set_bit(&mut receipt.delivered, slot);
        }
    }
    tx.put(key, encode(&receipt)?);
    let tell = changed && worth_telling(count_bits(&receipt.delivered), receipt.of);
    Ok(tell.then(|| (sender.to_owned(), receipt.receipt(group, client_msg_id))))
}

/// Drops a group message whose timer ran out: its body and receipt record (its references
/// are then skipped when read, and freed by their acks or the retention sweep).
pub(crate) fn expire_body(tx: &mut Tx<'_>, body_key: &[u8]) {
    if let Some(receipt) = keys::receipt_of_body(body_key) {
        tx.remove(receipt);
    }
    tx.remove(body_key.to_vec());
}

/// Receipt records (with their bodies, if still there) older than `cutoff_ms`, at most
/// `limit`: removed. Returns how many.
pub(crate) fn sweep(tx: &mut Tx<'_>, cutoff_ms: u64, limit: usize) -> Result<usize, StorageError> {
    let mut old = Vec::new();
    for kv in tx.scan(&[keys::GROUP_RECEIPT]) {
        let (k, v) = kv?;
        let created = decode::<ReceiptRecord>(&v, "group receipt")
            .map(|r| r.created_ms)
            .unwrap_or(0);
        if created < cutoff_ms {
            old.push(k);
            if old.len() >= limit {
                break;
            }
        }
    }
    let n = old.len();
    for k in old {
        if let Some(body) = keys::body_of_receipt(&k) {
            tx.remove(body);
        }
        tx.remove(k);
    }
    Ok(n)
}
