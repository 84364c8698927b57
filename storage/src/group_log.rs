//! Group logs: a group's messages and membership events are written once, in order, to the
//! group's log (`L group seq`), and every member device reads that log through a cursor of
//! its own (`K group user device`: the highest seq it acknowledged).
//!
//! A group message therefore costs one durable write however many members the group has,
//! and an acknowledgement moves one cursor, whatever it covers. Each user may read a span of
//! the log (`R user group`): from the event that let them in to the event that took them
//! out, so a removed member gets its removal and nothing after it, and a new member nothing
//! from before.
//!
//! "Delivered to n of m" is counted from the cursors, not stored per message: a member has
//! a message when the highest cursor of its devices is at or past it. The committer keeps
//! those highest cursors sorted per group, so a count is a binary search, and it keeps the
//! latest messages' senders so that an ack can tell them their new counts. Reads are
//! recorded per message (`j group sender id`), as a bitmap over member slots.
//!
//! Items below every cursor of a group, or older than the retention, are dropped by the
//! sweep.

use crate::groups::GroupRecord;
use crate::records::{decode, decode_item, encode, StoredItem};
use crate::store::Appended;
use crate::write::{Class, Reads, Tx, Write};
use crate::{keys, StorageError};
use missive_proto::{ClientMsgId, DeviceId, GroupId, GroupReceipt, Payload, ServerSeq};
use rkyv::{Archive, Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

/// The end of the span of a user who is still a member.
const OPEN: u64 = u64::MAX;

/// Messages per group whose sender the committer remembers, to tell it new counts live
/// (older ones are still counted: the sender asks with `Receipts`).
const RECENT_MESSAGES: usize = 1024;

/// Groups whose counts the committer keeps; past this it starts over. With
/// [`RECENT_MESSAGES`] this bounds the memory to about 100 MB for groups of 1,024 members.
const COUNTS_LIMIT: usize = 1_000;

/// The part of a group's log one user may read: `from..=until` (`until` is open while the
/// user is a member).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) from: u64,
    pub(crate) until: u64,
}

impl Span {
    fn encode(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.from.to_be_bytes());
        v.extend_from_slice(&self.until.to_be_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<Self> {
        if v.len() != 16 {
            return None;
        }
        Some(Self {
            from: keys::be_u64(&v[..8])?,
            until: keys::be_u64(&v[8..])?,
        })
    }
}

fn span(
    r: &(impl Reads + ?Sized),
    user: &str,
    group: GroupId,
) -> Result<Option<Span>, StorageError> {
    match r.read(&keys::group_reader(user, group))? {
        None => Ok(None),
        Some(v) => Span::decode(&v)
            .map(Some)
            .ok_or_else(|| StorageError::Corrupt(format!("log span of {user} in {}", group.0))),
    }
}

/// Where one device stands in one group's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// The group.
    pub group: GroupId,
    /// The first seq the device has not acknowledged.
    pub next: ServerSeq,
    /// The last seq it may read (`u64::MAX` while its user is a member).
    pub until: ServerSeq,
    /// The seq the log's next item gets: items wait for the device when `next` is below it.
    pub head: ServerSeq,
}

/// What the store keeps of a logged group message besides its item: where it is in the log,
/// how many members it went to, and which of them read it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogReceipt {
    /// When it was stored, ms since the Unix epoch (drives the retention sweep).
    pub(crate) created_ms: u64,
    /// Its seq in the group's log.
    pub(crate) seq: u64,
    /// Members it went to (the sender not counted).
    pub(crate) of: u32,
    /// Slots of the members who read it.
    pub(crate) read: Vec<u8>,
}

/// The next seq of each group's log, as the committer allocates them.
#[derive(Default)]
struct Heads(HashMap<GroupId, u64>);

/// The log positions of every device of `user`'s groups (those with anything left to read
/// or still a member).
pub(crate) fn positions(
    r: &(impl Reads + ?Sized),
    user: &str,
    device: DeviceId,
) -> Result<Vec<LogPosition>, StorageError> {
    let prefix = keys::group_readers_of(user);
    let mut out = Vec::new();
    for kv in r.scan(&prefix) {
        let (k, v) = kv?;
        let Some(group) = k.get(prefix.len()..).and_then(keys::be_u64).map(GroupId) else {
            continue;
        };
        let Some(span) = Span::decode(&v) else {
            continue;
        };
        let acked = cursor(r, group, user, device)?.unwrap_or(span.from.saturating_sub(1));
        let next = acked.saturating_add(1).max(span.from);
        if next > span.until {
            continue;
        }
        let head = head_on_disk(r, group)?;
        out.push(LogPosition {
            group,
            next: ServerSeq(next),
            until: ServerSeq(span.until),
            head: ServerSeq(head),
        });
    }
    Ok(out)
}

fn cursor(
    r: &(impl Reads + ?Sized),
    group: GroupId,
    user: &str,
    device: DeviceId,
) -> Result<Option<u64>, StorageError> {
    Ok(r.read(&keys::group_cursor(group, user, device))?
        .and_then(|v| keys::be_u64(&v)))
}

fn head_on_disk(r: &(impl Reads + ?Sized), group: GroupId) -> Result<u64, StorageError> {
    Ok(r.read(&keys::group_head(group))?
        .and_then(|v| keys::be_u64(&v))
        .unwrap_or(1))
}

/// Items `from..=until` of `group`'s log, at most `limit` and about `max_bytes` of bodies.
pub(crate) fn read(
    db: &dyn crate::engine::KvEngine,
    group: GroupId,
    from: u64,
    until: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<(ServerSeq, StoredItem)>, StorageError> {
    let start = keys::group_log(group, from);
    let end = keys::group_log(group, until);
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for kv in db
        .range(Bound::Included(start), Bound::Included(end))
        .take(limit)
    {
        let (k, v) = kv?;
        let (_, seq) = keys::parse_group_log(&k)
            .ok_or_else(|| StorageError::Corrupt("group log key".into()))?;
        let item = decode_item(&v)?;
        if let Payload::Group(g) = &item.payload {
            bytes = bytes.saturating_add(g.body.len());
        }
        out.push((ServerSeq(seq), item));
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(out)
}

/// Per group: the highest acknowledged seq of each member (over its devices), sorted, so
/// that "how many members have message `seq`" is two binary searches; and the latest
/// messages' senders.
#[derive(Debug, Default)]
struct Counts {
    /// Member → (first seq of its span, highest seq any of its devices acknowledged).
    members: HashMap<String, (u64, u64)>,
    /// The members' acknowledged seqs, ascending.
    acked: Vec<u64>,
    /// The members' first seqs, ascending.
    from: Vec<u64>,
    /// The latest messages, by seq.
    recent: VecDeque<Recent>,
}

#[derive(Debug, Clone)]
struct Recent {
    seq: u64,
    sender: String,
    client_msg_id: ClientMsgId,
    of: u32,
}

impl Counts {
    /// Counted from the member list and the cursors as `r` sees them.
    fn load(
        r: &(impl Reads + ?Sized),
        group: GroupId,
        rec: &GroupRecord,
    ) -> Result<Self, StorageError> {
        let mut members = HashMap::with_capacity(rec.members.len());
        for m in &rec.members {
            let from = span(r, &m.user, group)?.map_or(1, |s| s.from);
            members.insert(m.user.clone(), (from, from.saturating_sub(1)));
        }
        let prefix = keys::group_cursors(group);
        for kv in r.scan(&prefix) {
            let (k, v) = kv?;
            let (Some((user, _)), Some(acked)) = (keys::parse_group_cursor(&k), keys::be_u64(&v))
            else {
                continue;
            };
            if let Some(m) = members.get_mut(user) {
                m.1 = m.1.max(acked);
            }
        }
        let mut acked: Vec<u64> = members.values().map(|m| m.1).collect();
        let mut from: Vec<u64> = members.values().map(|m| m.0).collect();
        acked.sort_unstable();
        from.sort_unstable();
        Ok(Self {
            members,
            acked,
            from,
            recent: VecDeque::new(),
        })
    }

    /// Members other than `sender` who have message `seq`. Every member whose span starts
    /// after `seq` has acknowledged at least up to its start, so it is in the first count
    /// and taken out by the second.
    fn delivered(&self, seq: u64, sender: &str) -> u32 {
        let have = self.acked.len() - self.acked.partition_point(|a| *a < seq);
        let later = self.from.len() - self.from.partition_point(|f| *f <= seq);
        let mut n = have.saturating_sub(later);
        if let Some(&(from, acked)) = self.members.get(sender) {
            if from <= seq && acked >= seq {
                n = n.saturating_sub(1);
            }
        }
        n as u32
    }

    /// `member` acknowledged up to `seq`; its previous highest when that rose.
    fn acked(&mut self, member: &str, seq: u64) -> Option<u64> {
        let entry = self.members.get_mut(member)?;
        let before = entry.1;
        if seq <= before {
            return None;
        }
        entry.1 = seq;
        if let Ok(i) = self.acked.binary_search(&before) {
            self.acked.remove(i);
        }
        let at = self.acked.partition_point(|a| *a < seq);
        self.acked.insert(at, seq);
        Some(before)
    }

    fn remember(&mut self, recent: Recent) {
        if self.recent.len() >= RECENT_MESSAGES {
            self.recent.pop_front();
        }
        self.recent.push_back(recent);
    }
}

/// Per-group counts (see [`Counts`]), dropped whenever membership changes.
#[derive(Default)]
struct CountsCache(HashMap<GroupId, Counts>);

impl Tx<'_> {
    /// The seq `group`'s next log item gets.
    fn log_head(&mut self, group: GroupId) -> Result<u64, StorageError> {
        if let Some(h) = self.mem.cache::<Heads>().0.get(&group) {
            return Ok(*h);
        }
        let mut head = head_on_disk(self, group)?;
        if self.mem.reopened {
            // A live session may have read items of a failed batch (applied, never durable);
            // past a reopen the log goes on above them: a gap, never a reuse.
            head += crate::mailbox::SEQ_RESERVATION;
        }
        self.mem.cache::<Heads>().0.insert(group, head);
        Ok(head)
    }

    /// Appends `item` to `group`'s log, to be read by the devices of `readers`; its seq.
    pub(crate) fn append_to_log(
        &mut self,
        group: GroupId,
        item: StoredItem,
        readers: Arc<[String]>,
    ) -> Result<u64, StorageError> {
        let seq = self.log_head(group)?;
        // Log items are read back only by reads of the committed engine.
        self.put_unseen(keys::group_log(group, seq), encode(&item)?);
        self.put(keys::group_head(group), (seq + 1).to_be_bytes().to_vec());
        self.mem.cache::<Heads>().0.insert(group, seq + 1);
        self.pending.events.push(Appended::Group {
            group,
            seq: ServerSeq(seq),
            item,
            readers,
        });
        Ok(seq)
    }

    /// `user` may read `group`'s log from `from` on: its devices start there.
    pub(crate) fn open_span(
        &mut self,
        user: &str,
        group: GroupId,
        from: u64,
    ) -> Result<(), StorageError> {
        let span = Span { from, until: OPEN };
        self.put(keys::group_reader(user, group), span.encode());
        for device in self.devices(user)? {
            self.put(
                keys::group_cursor(group, user, device),
                from.saturating_sub(1).to_be_bytes().to_vec(),
            );
        }
        self.mem.cache::<CountsCache>().0.remove(&group);
        Ok(())
    }

    /// `user` may read `group`'s log up to `until` (its removal) and no further.
    pub(crate) fn close_span(
        &mut self,
        user: &str,
        group: GroupId,
        until: u64,
    ) -> Result<(), StorageError> {
        if let Some(mut s) = span(self, user, group)? {
            s.until = until;
            self.put(keys::group_reader(user, group), s.encode());
        }
        self.mem.cache::<CountsCache>().0.remove(&group);
        Ok(())
    }

    /// A device just added to `user` reads each of its groups from now on, like a linked
    /// device sees its account's conversations from the moment it was linked.
    pub(crate) fn start_group_cursors(
        &mut self,
        user: &str,
        device: DeviceId,
    ) -> Result<(), StorageError> {
        let prefix = keys::group_readers_of(user);
        let mut open = Vec::new();
        for kv in self.scan(&prefix) {
            let (k, v) = kv?;
            if let (Some(group), Some(span)) = (
                k.get(prefix.len()..).and_then(keys::be_u64),
                Span::decode(&v),
            ) {
                if span.until == OPEN {
                    open.push(GroupId(group));
                }
            }
        }
        for group in open {
            let head = self.log_head(group)?;
            self.put(
                keys::group_cursor(group, user, device),
                head.saturating_sub(1).to_be_bytes().to_vec(),
            );
        }
        Ok(())
    }

    /// A device removed from `user` holds no group log back any more.
    pub(crate) fn drop_group_cursors(
        &mut self,
        user: &str,
        device: DeviceId,
    ) -> Result<(), StorageError> {
        let prefix = keys::group_readers_of(user);
        let mut groups = Vec::new();
        for kv in self.scan(&prefix) {
            let (k, _) = kv?;
            if let Some(group) = k.get(prefix.len()..).and_then(keys::be_u64) {
                groups.push(GroupId(group));
            }
        }
        for group in groups {
            self.remove(keys::group_cursor(group, user, device));
        }
        Ok(())
    }

    /// The counts of `group` (loaded on first use), or `None` when the group is gone.
    fn counts(&mut self, group: GroupId) -> Result<Option<&mut Counts>, StorageError> {
        if !self.mem.cache::<CountsCache>().0.contains_key(&group) {
            let Some(rec) = crate::groups::record(self, group)? else {
                return Ok(None);
            };
            let counts = Counts::load(self, group, &rec)?;
            let cache = self.mem.cache::<CountsCache>();
            if cache.0.len() >= COUNTS_LIMIT {
                cache.0.clear();
            }
            cache.0.insert(group, counts);
        }
        Ok(self.mem.cache::<CountsCache>().0.get_mut(&group))
    }

    /// Records a logged message: its receipt record, and its sender for the acks that tell
    /// it its counts. (The sending device's session skips it and acknowledges past it.)
    pub(crate) fn logged_message(
        &mut self,
        group: GroupId,
        seq: u64,
        (sender, client_msg_id): (&str, ClientMsgId),
        of: u32,
        now_ms: u64,
    ) -> Result<(), StorageError> {
        let receipt = LogReceipt {
            created_ms: now_ms,
            seq,
            of,
            read: Vec::new(),
        };
        self.put(
            keys::group_log_receipt(group, sender, &client_msg_id),
            encode(&receipt)?,
        );
        if let Some(counts) = self.counts(group)? {
            counts.remember(Recent {
                seq,
                sender: sender.to_owned(),
                client_msg_id,
                of,
            });
        }
        Ok(())
    }
}

/// Whether a count that just grew to `n` of `of` is worth a live update to the sender: every
/// step in a small group; in a large one the first, each tenth of the way, and the last (the
/// sender can always ask for the exact counts), so a 1,024-member group's acks do not send
/// its sender a thousand frames per message.
pub(crate) fn worth_telling(n: u32, of: u32) -> bool {
    of <= 32 || n <= 1 || n >= of || (n * 10 / of) != ((n - 1) * 10 / of)
}

/// Set bits of a slot bitmap.
pub(crate) fn count_bits(bits: &[u8]) -> u32 {
    bits.iter().map(|b| b.count_ones()).sum()
}

/// A device acknowledged `group`'s log up to `up_to`: its cursor moves there (never back,
/// never past its span). A removed member's cursors and span go once all its devices passed
/// the end of its span. Returns the senders whose messages' counts are worth telling.
#[derive(Debug)]
pub(crate) struct AckLog {
    pub(crate) user: String,
    pub(crate) device: DeviceId,
    pub(crate) group: GroupId,
    pub(crate) up_to: u64,
}

impl Write for AckLog {
    type Output = Vec<(String, GroupReceipt)>;

    /// Like a mailbox ack: should a crash undo it, the items are delivered again and the
    /// SDK drops what it has seen.
    fn class(&self) -> Class {
        Class {
            answer_before_sync: true,
            ..Class::UPDATE
        }
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<Self::Output, StorageError> {
        let Some(span) = span(tx, &self.user, self.group)? else {
            return Ok(Vec::new());
        };
        let up_to = self.up_to.min(span.until);
        let key = keys::group_cursor(self.group, &self.user, self.device);
        let before = match tx.read(&key)?.and_then(|v| keys::be_u64(&v)) {
            Some(c) => c,
            None if tx.devices(&self.user)?.contains(&self.device) => span.from.saturating_sub(1),
            None => return Ok(Vec::new()), // not a device of this user (any more)
        };
        if up_to <= before {
            return Ok(Vec::new());
        }
        tx.put(key, up_to.to_be_bytes().to_vec());
        if span.until != OPEN {
            if up_to >= span.until {
                drop_span_when_drained(tx, &self.user, self.group, span.until)?;
            }
            return Ok(Vec::new());
        }
        let Some(counts) = tx.counts(self.group)? else {
            return Ok(Vec::new());
        };
        let Some(was) = counts.acked(&self.user, up_to) else {
            return Ok(Vec::new());
        };
        let first = counts.recent.partition_point(|m| m.seq <= was);
        let mut tell = Vec::new();
        for m in counts.recent.range(first..) {
            if m.seq > up_to {
                break;
            }
            if m.sender == self.user {
                continue;
            }
            let n = counts.delivered(m.seq, &m.sender);
            if worth_telling(n, m.of) {
                tell.push((m.clone(), n));
            }
        }
        let mut out = Vec::with_capacity(tell.len());
        for (m, delivered) in tell {
            let read = match tx.read(&keys::group_log_receipt(
                self.group,
                &m.sender,
                &m.client_msg_id,
            ))? {
                Some(v) => count_bits(&decode::<LogReceipt>(&v, "group log receipt")?.read),
                None => 0,
            };
            out.push((
                m.sender,
                GroupReceipt {
                    group: self.group,
                    client_msg_id: m.client_msg_id,
                    delivered,
                    read,
                    of: m.of,
                },
            ));
        }
        Ok(out)
    }
}

/// Drops a removed member's span and cursors once every device of it read to `until`.
fn drop_span_when_drained(
    tx: &mut Tx<'_>,
    user: &str,
    group: GroupId,
    until: u64,
) -> Result<(), StorageError> {
    let devices = tx.devices(user)?;
    for d in &devices {
        if cursor(tx, group, user, *d)?.unwrap_or(0) < until {
            return Ok(());
        }
    }
    for d in devices {
        tx.remove(keys::group_cursor(group, user, d));
    }
    tx.remove(keys::group_reader(user, group));
    Ok(())
}

/// The member in slot `slot` read `sender`'s logged message: the new counts when they changed;
/// `None` also when the message is not a logged one.
pub(crate) fn mark_read(
    tx: &mut Tx<'_>,
    group: GroupId,
    slot: u32,
    sender: &str,
    client_msg_id: ClientMsgId,
) -> Result<Option<Option<GroupReceipt>>, StorageError> {
    let key = keys::group_log_receipt(group, sender, &client_msg_id);
    let Some(v) = tx.read(&key)? else {
        return Ok(None);
    };
    let mut receipt = decode::<LogReceipt>(&v, "group log receipt")?;
    if !crate::groups::set_bit(&mut receipt.read, slot) {
        return Ok(Some(None));
    }
    tx.put(key, encode(&receipt)?);
    let read = count_bits(&receipt.read);
    if !worth_telling(read, receipt.of) {
        return Ok(Some(None));
    }
    let delivered = match tx.counts(group)? {
        // Reading implies having it.
        Some(c) => c.delivered(receipt.seq, sender).max(read),
        None => read,
    };
    Ok(Some(Some(GroupReceipt {
        group,
        client_msg_id,
        delivered,
        read,
        of: receipt.of,
    })))
}

/// The receipt of `sender`'s logged message `id`, counted from the cursors as `r` sees them.
pub(crate) fn receipt(
    r: &(impl Reads + ?Sized),
    group: GroupId,
    sender: &str,
    id: ClientMsgId,
) -> Result<Option<GroupReceipt>, StorageError> {
    let Some(v) = r.read(&keys::group_log_receipt(group, sender, &id))? else {
        return Ok(None);
    };
    let receipt = decode::<LogReceipt>(&v, "group log receipt")?;
    let read = count_bits(&receipt.read);
    let delivered = match crate::groups::record(r, group)? {
        Some(rec) => Counts::load(r, group, &rec)?
            .delivered(receipt.seq, sender)
            .max(read),
        None => read,
    };
    Ok(Some(GroupReceipt {
        group,
        client_msg_id: id,
        delivered,
        read,
        of: receipt.of,
    }))
}

/// Drops a logged message whose timer ran out (its item and receipt record).
pub(crate) fn expire_item(tx: &mut Tx<'_>, log_key: &[u8]) -> Result<(), StorageError> {
    if let Some(v) = tx.read(log_key)? {
        if let Ok(item) = decode_item(&v) {
            if let Some((group, _)) = keys::parse_group_log(log_key) {
                tx.remove(keys::group_log_receipt(
                    group,
                    &item.from,
                    &item.client_msg_id,
                ));
            }
        }
    }
    tx.remove(log_key.to_vec());
    Ok(())
}

/// One bounded step of the log sweep: items every reader acknowledged or older than
/// `cutoff_ms`, receipt records older than `cutoff_ms`, and the logs of groups that are
/// gone. Returns how many records it removed (at most about `limit`).
pub(crate) fn sweep(tx: &mut Tx<'_>, cutoff_ms: u64, limit: usize) -> Result<usize, StorageError> {
    let mut doomed: Vec<Vec<u8>> = Vec::new();
    let mut heads = Vec::new();
    for kv in tx.scan(&[keys::GROUP_HEAD]) {
        let (k, _) = kv?;
        if let Some(g) = k.get(1..).and_then(keys::be_u64) {
            heads.push(GroupId(g));
        }
    }
    for group in heads {
        if doomed.len() >= limit {
            break;
        }
        let gone = crate::groups::record(tx, group)?.is_none();
        let mut low: Option<u64> = None;
        let mut cursors = Vec::new();
        for kv in tx.scan(&keys::group_cursors(group)) {
            let (k, v) = kv?;
            let acked = keys::be_u64(&v).unwrap_or(0);
            low = Some(low.map_or(acked, |l: u64| l.min(acked)));
            cursors.push(k);
        }
        let low = if gone && cursors.is_empty() {
            u64::MAX
        } else {
            low.unwrap_or(0)
        };
        for kv in tx.scan(&keys::group_log_prefix(group)) {
            let (k, v) = kv?;
            let Some((_, seq)) = keys::parse_group_log(&k) else {
                continue;
            };
            let old = decode_item(&v).map_or(true, |i| i.server_ts_ms < cutoff_ms);
            if seq > low && !old {
                break;
            }
            doomed.push(k);
            if doomed.len() >= limit {
                break;
            }
        }
        if gone && cursors.is_empty() && doomed.len() < limit {
            doomed.push(keys::group_head(group));
        }
    }
    for kv in tx.scan(&[keys::GROUP_LOG_RECEIPT]) {
        if doomed.len() >= limit {
            break;
        }
        let (k, v) = kv?;
        let created = decode::<LogReceipt>(&v, "group log receipt")
            .map(|r| r.created_ms)
            .unwrap_or(0);
        if created < cutoff_ms {
            doomed.push(k);
        }
    }
    let n = doomed.len();
    for k in doomed {
        if k.first() == Some(&keys::GROUP_HEAD) {
            if let Some(g) = k.get(1..).and_then(keys::be_u64) {
                tx.mem.cache::<Heads>().0.remove(&GroupId(g));
            }
        }
        tx.remove(k);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts of members given as (name, first seq of their span, highest seq acked).
    fn counts(members: &[(&str, u64, u64)]) -> Counts {
        let mut c = Counts::default();
        for (name, from, acked) in members {
            c.members.insert((*name).to_owned(), (*from, *acked));
            c.acked.push(*acked);
            c.from.push(*from);
        }
        c.acked.sort_unstable();
        c.from.sort_unstable();
        c
    }

    #[test]
    fn a_message_counts_the_members_past_it_but_not_its_sender_or_later_members() {
        // alice sent 5; bob has it; carol joined at 8 (her cursor starts at 7, past 5).
        let mut c = counts(&[
            ("alice", 1, 5),
            ("bob", 1, 6),
            ("carol", 8, 7),
            ("dave", 1, 3),
        ]);
        assert_eq!(c.delivered(5, "alice"), 1, "bob only");
        assert_eq!(
            c.delivered(8, "alice"),
            0,
            "carol's own join is not a message to her"
        );
        // dave catches up: one more, and the ack says where he was.
        assert_eq!(c.acked("dave", 9), Some(3));
        assert_eq!(c.delivered(5, "alice"), 2);
        assert_eq!(c.acked("dave", 4), None, "never back");
        assert_eq!(c.acked("nobody", 4), None);
    }

    #[test]
    fn spans_round_trip() {
        let s = Span {
            from: 3,
            until: OPEN,
        };
        assert_eq!(Span::decode(&s.encode()), Some(s));
        assert_eq!(Span::decode(&[1, 2, 3]), None);
    }
}
