//! What a message writes: its copies in device mailboxes (with their quotas, seqs, contact
//! marks, dedup key and expiry), what an ack deletes (and the `Delivered` receipts it
//! queues), what "delete for everyone" and the expiry sweeps drop. The committer applies
//! these writes (see `write.rs`); the rules live here.

use crate::device_registry;
use crate::records::{decode_item, encode, StoredItem};
use crate::store::{AckOutcome, AppendOutcome, SweepOutcome};
use crate::unacked::{LoggedItem, Reference, Taken};
use crate::write::{Class, Reads, Tx, Write};
use crate::{keys, MailboxId, StorageError};
use missive_proto::{ClientMsgId, DeviceEnvelope, DeviceId, Payload, ServerSeq, UserDevices};
use std::collections::HashMap;
use std::ops::Bound;

/// Most items a single sweep step removes, so one step never makes a huge batch.
pub(crate) const SWEEP_STEP_LIMIT: usize = 10_000;

/// Mailboxes whose item count and bytes the committer keeps in memory; past this the cache
/// starts over (a mailbox not in it is counted again by a scan on its next append).
pub(crate) const USAGE_CACHE_LIMIT: usize = 100_000;

/// Contact marks the committer remembers having written; past this it starts over.
const CONTACT_CACHE_LIMIT: usize = 100_000;

/// Users whose device list the committer keeps in memory; past this the cache starts over, so
/// sends to many (or made-up) names cannot grow it without bound.
const DEVICE_CACHE_LIMIT: usize = 100_000;

/// Acks spanning fewer seqs than this read each item by key instead of scanning a range.
const POINT_ACK_LIMIT: u64 = 64;

/// Seqs a mailbox's counter reserves at a time: the `s` counter on disk is written once per
/// this many items instead of with every batch that appends to the mailbox (at a sparse load,
/// where a batch holds one operation, that was two of the ~7 memtable writes of a message).
/// After a crash the mailbox goes on from the mark, leaving a gap of fewer than this many
/// seqs: seqs only have to grow, clients ack them cumulatively and nobody counts on them
/// being dense.
pub const SEQ_RESERVATION: u64 = 256;

/// A mailbox's seqs as the committer allocates them.
pub(crate) struct SeqState {
    /// The seq the next item gets.
    next: u64,
    /// Every seq at or above this is unused, as written (or about to be) in the `s` counter.
    reserved: u64,
}

/// What one device mailbox holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Usage {
    items: u64,
    bytes: u64,
    /// Envelopes (items, record bytes) per sender: one sender may fill only a share of a
    /// mailbox.
    by_sender: HashMap<String, (u64, u64)>,
}

/// Who sent a message, and its id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sender<'a> {
    /// The sending user.
    pub(crate) user: &'a str,
    /// The sending device.
    pub(crate) device: DeviceId,
    /// The sender's id of the message.
    pub(crate) client_msg_id: ClientMsgId,
}

/// Whether `copies` name each of `devices` (ascending, distinct) exactly once.
fn names_exactly(copies: &[DeviceEnvelope], devices: &[DeviceId]) -> bool {
    if copies.len() != devices.len() {
        return false;
    }
    let mut named: Vec<DeviceId> = copies.iter().map(|c| c.device).collect();
    named.sort_unstable();
    named == devices
}

/// Whether acknowledging `item` in `mb` tells its sender "delivered": a message does, except
/// the copy a sender's own other device gets (that device is not the recipient).
fn earns_receipt(mb: &MailboxId, item: &StoredItem) -> bool {
    matches!(item.payload, Payload::Envelope(_))
        && !(item.from == mb.user && item.from_device != mb.device)
}

/// Devices of `name` as stored on disk.
pub(crate) fn devices_on_disk(
    db: &(impl Reads + ?Sized),
    name: &str,
) -> Result<Vec<DeviceId>, StorageError> {
    let prefix = keys::devices_of(name);
    let mut out = Vec::new();
    for kv in db.scan(&prefix) {
        let (k, _) = kv?;
        let tail: [u8; 4] = k[prefix.len()..]
            .try_into()
            .map_err(|_| StorageError::Corrupt(format!("device key of {name}")))?;
        out.push(DeviceId(u32::from_be_bytes(tail)));
    }
    Ok(out)
}

impl Tx<'_> {
    /// Devices of `user`: committed ones (cached) plus those added earlier in this batch,
    /// without those removed in it; ascending.
    pub(crate) fn devices(&mut self, user: &str) -> Result<Vec<DeviceId>, StorageError> {
        let mut devs = match self.mem.devices.get(user) {
            Some(devs) => devs.clone(),
            None => {
                let devs = devices_on_disk(self.db, user)?;
                if self.mem.devices.len() >= DEVICE_CACHE_LIMIT {
                    self.mem.devices.clear();
                }
                self.mem.devices.insert(user.to_owned(), devs.clone());
                devs
            }
        };
        if let Some(extra) = self.pending.devices.get(user) {
            for d in extra {
                if !devs.contains(d) {
                    devs.push(*d);
                }
            }
            devs.sort_unstable();
        }
        if !self.pending.removed_devices.is_empty() {
            devs.retain(|d| {
                !self
                    .pending
                    .removed_devices
                    .contains(&(user.to_owned(), *d))
            });
        }
        Ok(devs)
    }

    /// Records that this batch adds `device` to `user` (its key is put by the caller).
    pub(crate) fn device_added(&mut self, user: &str, device: DeviceId) {
        self.pending
            .devices
            .entry(user.to_owned())
            .or_default()
            .push(device);
    }

    /// The next seq of `mb`. The mailbox's counter on disk is a mark every seq at or above
    /// which is unused; it is raised by [`SEQ_RESERVATION`] (in the batch that takes the first
    /// seq past it) rather than written with every batch.
    fn next_seq(&mut self, mb: &MailboxId) -> Result<ServerSeq, StorageError> {
        let state = match self.mem.seqs.get_mut(mb) {
            Some(state) => state,
            None => {
                let mut mark = match self.db.get(&keys::seq_counter(mb))? {
                    Some(v) => keys::be_u64(&v)
                        .ok_or_else(|| StorageError::Corrupt(format!("seq counter of {mb}")))?,
                    None => 1,
                };
                if self.mem.reopened {
                    // A live session may have read items of a failed batch (applied, never
                    // durable) whose seqs lie above the mark on disk; it skips seqs below what
                    // it delivered. Past a reopen, seqs go on a whole reservation above the
                    // mark: a gap, never a reuse.
                    mark += SEQ_RESERVATION;
                }
                self.mem.seqs.entry(mb.clone()).or_insert(SeqState {
                    next: mark,
                    reserved: mark,
                })
            }
        };
        let seq = state.next;
        state.next += 1;
        if seq >= state.reserved {
            state.reserved = seq + SEQ_RESERVATION;
            self.pending.seq_marks.insert(mb.clone(), state.reserved);
        }
        Ok(ServerSeq(seq))
    }

    /// What `mb` holds (items, record bytes), counted by a scan the first time it is needed.
    fn usage(&mut self, mb: &MailboxId) -> Result<&mut Usage, StorageError> {
        if !self.mem.usage.contains_key(mb) {
            let mut counted = Usage::default();
            for kv in self.db.prefix(&keys::mailbox_prefix(mb)) {
                let (_, v) = kv?;
                counted.items += 1;
                counted.bytes += v.len() as u64;
                // A damaged item counts for the mailbox, not for any sender.
                if let Ok(item) = decode_item(&v) {
                    if matches!(item.payload, Payload::Envelope(_)) {
                        let share = counted.by_sender.entry(item.from).or_default();
                        share.0 += 1;
                        share.1 += v.len() as u64;
                    }
                }
            }
            // Not bounded here: dropping counts in the middle of a batch would lose its own
            // pending writes; the committer bounds the map after each batch.
            self.mem.usage.insert(mb.clone(), counted);
        }
        self.mem
            .usage
            .get_mut(mb)
            .ok_or_else(|| StorageError::Db("mailbox usage vanished".into()))
    }

    /// Takes a deleted item of `mb` (an envelope of `sender`, or a receipt) off its usage,
    /// when the usage is loaded (otherwise the next scan counts without it).
    fn unuse(&mut self, mb: &MailboxId, bytes: u64, sender: Option<&str>) {
        if let Some(u) = self.mem.usage.get_mut(mb) {
            u.items = u.items.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(bytes);
            if let Some(share) = sender.and_then(|s| u.by_sender.get_mut(s)) {
                share.0 = share.0.saturating_sub(1);
                share.1 = share.1.saturating_sub(bytes);
                if share.0 == 0 {
                    if let Some(s) = sender {
                        u.by_sender.remove(s);
                    }
                }
            }
        }
    }

    /// Whether `mb` has room for one more envelope of `len` bytes from `from`.
    fn has_room(&mut self, mb: &MailboxId, from: &str, len: u64) -> Result<bool, StorageError> {
        let limits = *self.limits;
        let u = self.usage(mb)?;
        let (mine, my_bytes) = u.by_sender.get(from).copied().unwrap_or_default();
        Ok(u.items < limits.mailbox_max_items
            && u.bytes.saturating_add(len) <= limits.mailbox_max_bytes
            && mine < limits.mailbox_max_items_per_sender
            && my_bytes.saturating_add(len) <= limits.mailbox_max_bytes_per_sender)
    }

    /// Appends `item` to `mb` under its next seq; the listener hears of it after the fsync.
    pub(crate) fn push_item(
        &mut self,
        mb: MailboxId,
        item: StoredItem,
    ) -> Result<ServerSeq, StorageError> {
        let record = encode(&item)?;
        self.push_item_as(mb, item, record, None)
    }

    /// Appends a reference to a message stored once (`stored`, whose body is empty: the same
    /// bytes for every mailbox, encoded once) to each of `mailboxes`; the listener hears of
    /// each as `shown` (with the body), so live delivery needs no read. Returns how many.
    pub(crate) fn push_references(
        &mut self,
        mailboxes: Vec<MailboxId>,
        stored: &StoredItem,
        shown: &StoredItem,
    ) -> Result<usize, StorageError> {
        let record = encode(stored)?;
        let n = mailboxes.len();
        for mb in mailboxes {
            self.push_item_as(mb, stored.clone(), record.clone(), Some(shown.clone()))?;
        }
        Ok(n)
    }

    fn push_item_as(
        &mut self,
        mb: MailboxId,
        item: StoredItem,
        record: Vec<u8>,
        shown: Option<StoredItem>,
    ) -> Result<ServerSeq, StorageError> {
        let seq = self.next_seq(&mb)?;
        let bytes = record.len() as u64;
        // Mailbox items are read back only through scans of the committed engine and the
        // unacked log, never by a later write of the same batch: no copy in `written`.
        self.put_unseen(keys::mailbox_item(&mb, seq), record);
        let usage = self.usage(&mb)?;
        usage.items += 1;
        usage.bytes += bytes;
        if matches!(item.payload, Payload::Envelope(_)) {
            // A sender already counted here (the common case) costs no allocation.
            match usage.by_sender.get_mut(&item.from) {
                Some(share) => *share = (share.0 + 1, share.1 + bytes),
                None => {
                    usage.by_sender.insert(item.from.clone(), (1, bytes));
                }
            }
        }
        let reference = match &item.payload {
            Payload::Group(g) => Some(Reference::Group(g.group)),
            Payload::Story(_) => Some(Reference::Story),
            _ => None,
        };
        let receipt_to = (earns_receipt(&mb, &item) || reference.is_some())
            .then(|| (item.from.clone(), item.client_msg_id));
        self.mem.unacked.stored(
            &mb,
            LoggedItem {
                seq: seq.0,
                receipt_to,
                reference,
                bytes,
            },
        );
        self.pending.events.push(crate::store::Appended::Mailbox {
            mailbox: mb,
            seq,
            item: shown.unwrap_or(item),
        });
        Ok(seq)
    }

    /// Writes that `from` has messaged `to` (once: later sends find it in the cache or the
    /// engine). Presence and typing between users follow these marks.
    fn mark_contact(&mut self, from: &str, to: &str, now_ms: u64) -> Result<(), StorageError> {
        // The common case, a known pair, allocates nothing.
        if from == to
            || self
                .mem
                .contacts
                .get(from)
                .is_some_and(|known| known.contains(to))
        {
            return Ok(());
        }
        let key = keys::contact(from, to);
        if self.read(&key)?.is_none() {
            self.put(key, now_ms.to_be_bytes().to_vec());
        }
        if self.mem.contact_count >= CONTACT_CACHE_LIMIT {
            self.mem.contacts.clear();
            self.mem.contact_count = 0;
        }
        self.mem
            .contacts
            .entry(from.to_owned())
            .or_default()
            .insert(to.to_owned());
        self.mem.contact_count += 1;
        Ok(())
    }

    /// Deletes mailbox items whose deletion the usage and unacked bookkeeping did not see.
    fn items_dropped_aside(&mut self) {
        self.pending.usage_stale = true;
        self.mem.unacked.clear();
    }
}

/// A message from (`from`, `from_device`) to `to`: one copy per device of `to`, one per other
/// device of the sender, stored only if both sets name exactly the current devices and every
/// mailbox has room; deduplicated by the sender's message id.
#[derive(Debug)]
pub(crate) struct Append {
    pub(crate) from: String,
    pub(crate) from_device: DeviceId,
    pub(crate) client_msg_id: ClientMsgId,
    pub(crate) to: String,
    /// One copy per device of `to`.
    pub(crate) envelopes: Vec<DeviceEnvelope>,
    /// One copy per other device of `from`.
    pub(crate) own: Vec<DeviceEnvelope>,
    /// Undelivered copies are dropped this long after `now_ms` (0: never).
    pub(crate) expires_in_secs: u32,
    pub(crate) now_ms: u64,
}

impl Write for Append {
    type Output = AppendOutcome;

    fn class(&self) -> Class {
        Class::ADDS
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<AppendOutcome, StorageError> {
        let sender = Sender {
            user: &self.from,
            device: self.from_device,
            client_msg_id: self.client_msg_id,
        };
        let dedup_key = keys::dedup(sender.user, sender.device, &sender.client_msg_id);
        if let Some(v) = tx.read(&dedup_key)? {
            let ts = keys::be_u64(&v).unwrap_or(0);
            return Ok(AppendOutcome::Duplicate { server_ts_ms: ts });
        }
        let to = self.to.as_str();
        let from = sender.user;
        let recipients = tx.devices(to)?;
        if recipients.is_empty() {
            return Ok(AppendOutcome::UnknownRecipient);
        }
        // Checked here, in the batch that writes, so a device linked or removed a moment ago
        // is never missed: every device gets its own copy or nobody gets one.
        let mut current = Vec::new();
        if !names_exactly(&self.envelopes, &recipients) {
            current.push(UserDevices {
                user: to.to_owned(),
                devices: recipients,
            });
        }
        let mine = if from == to {
            Vec::new()
        } else {
            tx.devices(from)?
        };
        let others: Vec<DeviceId> = mine
            .iter()
            .copied()
            .filter(|d| *d != sender.device)
            .collect();
        if !names_exactly(&self.own, &others) {
            current.push(UserDevices {
                user: from.to_owned(),
                devices: mine,
            });
        }
        if !current.is_empty() {
            return Ok(AppendOutcome::DeviceMismatch(current));
        }
        let copies: Vec<(MailboxId, Vec<u8>)> = self
            .envelopes
            .into_iter()
            .map(|c| (MailboxId::new(to, c.device), c.envelope))
            .chain(
                self.own
                    .into_iter()
                    .map(|c| (MailboxId::new(from, c.device), c.envelope)),
            )
            .collect();
        // Nothing is written unless every device mailbox has room for its copy.
        for (mb, envelope) in &copies {
            if !tx.has_room(mb, from, envelope.len() as u64)? {
                return Ok(AppendOutcome::MailboxFull);
            }
        }
        tx.mark_contact(from, to, self.now_ms)?;
        let n = copies.len();
        for (mb, envelope) in copies {
            let item = StoredItem {
                from: from.to_owned(),
                from_device: sender.device,
                client_msg_id: sender.client_msg_id,
                server_ts_ms: self.now_ms,
                payload: Payload::Envelope(envelope),
            };
            let seq = tx.push_item(mb.clone(), item)?;
            if self.expires_in_secs > 0 {
                let at = self
                    .now_ms
                    .saturating_add(u64::from(self.expires_in_secs) * 1000);
                tx.put(keys::expiry(at, &keys::mailbox_item(&mb, seq)), Vec::new());
            }
        }
        tx.put(dedup_key, self.now_ms.to_be_bytes().to_vec());
        Ok(AppendOutcome::Stored {
            server_ts_ms: self.now_ms,
            devices: n,
        })
    }
}

/// Deletes every item of a mailbox up to a seq and queues a `Delivered` receipt to every
/// device of each deleted message's sender.
#[derive(Debug)]
pub(crate) struct Ack {
    pub(crate) mailbox: MailboxId,
    pub(crate) up_to: ServerSeq,
    pub(crate) now_ms: u64,
}

impl Write for Ack {
    type Output = AckOutcome;

    /// An ack only deletes delivered items (and queues receipts): should a crash undo it, the
    /// items are delivered again and the recipient's SDK drops what it has seen, so nobody
    /// needs to wait for its fsync.
    fn class(&self) -> Class {
        Class {
            answer_before_sync: true,
            ..Class::UPDATE
        }
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<AckOutcome, StorageError> {
        let Self {
            mailbox: mb,
            up_to,
            now_ms,
        } = self;
        let mb = &mb;
        let floor = tx.mem.acked_floor.get(mb).copied().unwrap_or(0);
        if up_to.0 <= floor && floor > 0 {
            return Ok(AckOutcome::default());
        }
        let first = floor.saturating_add(1).min(up_to.0);
        // Counted before this batch deletes anything: a scan later in the batch would still
        // see the items deleted here (the engine changes only when the batch is applied).
        tx.usage(mb)?;
        let mut out = AckOutcome::default();
        let mut receipts = Vec::new();
        let mut acked = Vec::new();
        let mut referenced = Vec::new();
        if let Taken::Exact(items) = tx.mem.unacked.take_acked(mb, first, up_to.0) {
            for item in items {
                tx.remove_unseen(keys::mailbox_item(mb, ServerSeq(item.seq)));
                tx.pending.deleted_logged += 1;
                out.deleted += 1;
                match (item.reference, item.receipt_to) {
                    (Some(r), Some((sender, id))) => {
                        tx.unuse(mb, item.bytes, None);
                        referenced.push((r, sender, id));
                    }
                    (_, receipt_to) => {
                        let sender = receipt_to.as_ref().map(|(s, _)| s.as_str());
                        tx.unuse(mb, item.bytes, sender);
                        receipts.extend(receipt_to);
                    }
                }
            }
        } else if up_to.0 - first < POINT_ACK_LIMIT {
            // A short span: point reads (bloom filters skip the tables that cannot hold the
            // key) cost far less than setting up a merged range scan over every table.
            for seq in first..=up_to.0 {
                let k = keys::mailbox_item(mb, ServerSeq(seq));
                if let Some(v) = tx.db.get(&k)? {
                    acked.push((k, v));
                }
            }
        } else {
            let start = keys::mailbox_item(mb, ServerSeq(first));
            let end = keys::mailbox_item(mb, up_to);
            for kv in tx.db.range(Bound::Included(start), Bound::Included(end)) {
                acked.push(kv?);
            }
        }
        for (k, v) in acked {
            if tx.removed(&k) {
                continue; // already acked earlier in this batch
            }
            tx.remove_written_once(k);
            tx.pending.deleted += 1;
            out.deleted += 1;
            // A damaged item is still deleted, it just cannot produce a receipt.
            match decode_item(&v) {
                Ok(item) if matches!(item.payload, Payload::Envelope(_)) => {
                    tx.unuse(mb, v.len() as u64, Some(&item.from));
                    if earns_receipt(mb, &item) {
                        receipts.push((item.from, item.client_msg_id))
                    }
                }
                Ok(StoredItem {
                    from,
                    client_msg_id,
                    payload: Payload::Group(g),
                    ..
                }) => {
                    tx.unuse(mb, v.len() as u64, None);
                    referenced.push((Reference::Group(g.group), from, client_msg_id));
                }
                Ok(StoredItem {
                    from,
                    client_msg_id,
                    payload: Payload::Story(_),
                    ..
                }) => {
                    tx.unuse(mb, v.len() as u64, None);
                    referenced.push((Reference::Story, from, client_msg_id));
                }
                Ok(_) => tx.unuse(mb, v.len() as u64, None),
                Err(e) => {
                    tx.unuse(mb, v.len() as u64, None);
                    tracing::warn!(mailbox = %mb, error = %e, "acked a damaged item")
                }
            }
        }
        match tx.mem.acked_floor.get_mut(mb) {
            Some(f) => *f = (*f).max(up_to.0),
            None => {
                tx.mem.acked_floor.insert(mb.clone(), up_to.0);
            }
        }
        for (reference, sender, id) in referenced {
            match reference {
                Reference::Group(group) => {
                    if let Some(update) =
                        crate::groups::reference_acked(tx, &mb.user, group, &sender, id)?
                    {
                        out.group_receipts.push(update);
                    }
                }
                Reference::Story => crate::stories::reference_acked(tx, &sender, id)?,
            }
        }
        for (sender, client_msg_id) in receipts {
            for device in tx.devices(&sender)? {
                let item = StoredItem {
                    from: mb.user.clone(),
                    from_device: mb.device,
                    client_msg_id,
                    server_ts_ms: now_ms,
                    payload: Payload::Delivered,
                };
                tx.push_item(MailboxId::new(sender.clone(), device), item)?;
                out.receipts += 1;
            }
        }
        Ok(out)
    }
}

/// Drops every still-queued copy of `from`'s message `client_msg_id` to `to`, in the mailboxes
/// of `to`'s devices and `from`'s other devices ("delete for everyone").
#[derive(Debug)]
pub(crate) struct Retract {
    pub(crate) from: String,
    pub(crate) client_msg_id: ClientMsgId,
    pub(crate) to: String,
}

impl Write for Retract {
    type Output = usize;

    fn class(&self) -> Class {
        Class::UPDATE
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<usize, StorageError> {
        let Self {
            from,
            client_msg_id,
            to,
        } = self;
        let mut mailboxes: Vec<MailboxId> = tx
            .devices(&to)?
            .into_iter()
            .map(|d| MailboxId::new(to.clone(), d))
            .collect();
        if from != to {
            mailboxes.extend(
                tx.devices(&from)?
                    .into_iter()
                    .map(|d| MailboxId::new(from.clone(), d)),
            );
        }
        let mut doomed = Vec::new();
        for mb in &mailboxes {
            for kv in tx.scan(&keys::mailbox_prefix(mb)) {
                let (k, v) = kv?;
                let Ok(item) = decode_item(&v) else { continue };
                if item.from == from
                    && item.client_msg_id == client_msg_id
                    && matches!(item.payload, Payload::Envelope(_))
                {
                    doomed.push(k);
                }
            }
        }
        let removed = doomed.len();
        for k in doomed {
            tx.remove(k);
            tx.pending.deleted += 1;
        }
        if removed > 0 {
            tx.items_dropped_aside();
        }
        Ok(removed)
    }
}

/// One bounded step dropping the disappearing messages whose timer ran out (the index is
/// ordered by time, so this reads only what is due).
#[derive(Debug)]
pub(crate) struct Expire {
    pub(crate) now_ms: u64,
}

impl Write for Expire {
    type Output = SweepOutcome;

    fn class(&self) -> Class {
        Class::UPDATE
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<SweepOutcome, StorageError> {
        let mut out = SweepOutcome::default();
        expire(tx, self.now_ms, &mut out)?;
        Ok(out)
    }
}

fn expire(tx: &mut Tx<'_>, now_ms: u64, out: &mut SweepOutcome) -> Result<(), StorageError> {
    let mut expired = Vec::new();
    for kv in tx.scan(&[keys::EXPIRY]) {
        let (k, _) = kv?;
        match keys::parse_expiry(&k) {
            Some((at, _)) if at > now_ms => break,
            _ => expired.push(k),
        }
        if expired.len() >= SWEEP_STEP_LIMIT {
            out.more = true;
            break;
        }
    }
    let mut dropped = false;
    for k in expired {
        if let Some((_, item)) = keys::parse_expiry(&k) {
            if item.first() == Some(&keys::GROUP_LOG) {
                crate::group_log::expire_item(tx, item)?;
                tx.pending.deleted += 1;
                out.items += 1;
            } else if item.first() == Some(&keys::GROUP_BODY) {
                crate::groups::expire_body(tx, item);
                tx.pending.deleted += 1;
                out.items += 1;
            } else if item.first() == Some(&keys::STORY) {
                crate::stories::expire(tx, item);
                tx.pending.deleted += 1;
                out.items += 1;
            } else if !tx.removed(item) && tx.db.get(item)?.is_some() {
                // (Gone already when it was delivered and acknowledged.)
                tx.remove(item.to_vec());
                tx.pending.deleted += 1;
                dropped = true;
                out.items += 1;
            }
        }
        tx.remove(k);
    }
    if dropped {
        tx.items_dropped_aside();
    }
    Ok(())
}

/// One bounded step of the retention sweep: items and dedup keys older than the retention,
/// due disappearing messages, stale link codes and invites.
#[derive(Debug)]
pub(crate) struct Sweep {
    pub(crate) now_ms: u64,
}

impl Write for Sweep {
    type Output = SweepOutcome;

    fn class(&self) -> Class {
        Class::MAINTENANCE
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<SweepOutcome, StorageError> {
        let now_ms = self.now_ms;
        let cutoff = now_ms.saturating_sub(tx.limits.retention.as_millis() as u64);
        let mut out = SweepOutcome::default();
        // Expired items leave the mailboxes without an ack: the log would name them. The
        // usage counts are dropped once the batch is applied: dropped now, an append later in
        // this batch would count items this sweep deletes.
        tx.items_dropped_aside();
        // Mailbox items: seq order within a mailbox follows store time, so after the first
        // young item of a mailbox we jump to the next mailbox.
        let mut from: Bound<Vec<u8>> = Bound::Included(vec![keys::MAILBOX]);
        let mut doomed = Vec::new();
        'mailboxes: loop {
            let mut iter = tx.db.range(from.clone(), Bound::Unbounded);
            loop {
                let Some(kv) = iter.next() else {
                    break 'mailboxes;
                };
                let (k, v) = kv?;
                if k.first() != Some(&keys::MAILBOX) {
                    break 'mailboxes;
                }
                let Some((mb, _)) = keys::parse_mailbox_item(&k) else {
                    continue;
                };
                let expired = decode_item(&v)
                    .map(|i| i.server_ts_ms < cutoff)
                    .unwrap_or(true);
                if expired {
                    if !tx.removed(&k) {
                        doomed.push(k);
                        if doomed.len() >= SWEEP_STEP_LIMIT {
                            out.more = true;
                            break 'mailboxes;
                        }
                    }
                } else {
                    let mut past = keys::mailbox_prefix(&mb);
                    past.extend_from_slice(&[0xff; 8]);
                    from = Bound::Excluded(past);
                    continue 'mailboxes;
                }
            }
        }
        out.items = doomed.len();
        for k in doomed {
            tx.remove_written_once(k);
            tx.pending.deleted += 1;
        }
        if out.more {
            return Ok(out);
        }
        let mut dedup = Vec::new();
        for kv in tx.scan(&[keys::DEDUP]) {
            let (k, v) = kv?;
            if keys::be_u64(&v).is_none_or(|ts| ts < cutoff) {
                dedup.push(k);
                if out.items + dedup.len() >= SWEEP_STEP_LIMIT {
                    out.more = true;
                    break;
                }
            }
        }
        out.dedup_keys = dedup.len();
        for k in dedup {
            tx.remove(k);
        }
        if out.more {
            return Ok(out);
        }
        expire(tx, now_ms, &mut out)?;
        if out.more {
            return Ok(out);
        }
        let left = SWEEP_STEP_LIMIT.saturating_sub(out.items + out.dedup_keys);
        let swept = crate::groups::sweep(tx, cutoff, left)?;
        let swept = swept + crate::group_log::sweep(tx, cutoff, left.saturating_sub(swept))?;
        out.items += swept;
        if swept >= left {
            out.more = true;
            return Ok(out);
        }
        let budget = |out: &SweepOutcome, n: usize| out.items + out.dedup_keys + n;
        let link_cutoff = now_ms.saturating_sub(tx.limits.link_code_ttl.as_millis() as u64);
        let mut stale = Vec::new();
        for kv in tx.scan(&[keys::LINK_CODE]) {
            let (k, v) = kv?;
            if device_registry::parse_link_code(&v).is_none_or(|(created, _)| created < link_cutoff)
            {
                stale.push(k);
            }
            if budget(&out, stale.len()) >= SWEEP_STEP_LIMIT {
                out.more = true;
                break;
            }
        }
        if !out.more {
            let invite_cutoff = now_ms.saturating_sub(tx.limits.invite_ttl.as_millis() as u64);
            for kv in tx.scan(&[keys::INVITE]) {
                let (k, v) = kv?;
                if keys::be_u64(&v).is_none_or(|created| created < invite_cutoff) {
                    stale.push(k);
                    if budget(&out, stale.len()) >= SWEEP_STEP_LIMIT {
                        out.more = true;
                        break;
                    }
                }
            }
        }
        out.invites = stale.len();
        for k in stale {
            tx.remove(k);
        }
        Ok(out)
    }
}
