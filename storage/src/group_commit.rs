//! The committer: the one thread that writes. It drains waiting operations into one sled
//! batch, applies it, flushes, fsyncs the database file, and only then answers every waiter
//! and tells the [`CommitListener`] about appended items.

use crate::records::{decode_item, decode_user, encode, StoredItem, UserRecord};
use crate::store::{
    AckOutcome, AppendOutcome, CommitListener, RegisterOutcome, StorageError, StoreStats,
    SweepOutcome,
};
use crate::{keys, MailboxId};
use missive_proto::{ClientMsgId, DeviceId, Payload, ServerSeq, Visibility};
use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most items a single sweep step removes, so one step never makes a huge batch.
const SWEEP_STEP_LIMIT: usize = 10_000;

/// A change to a user record.
#[derive(Debug)]
pub(crate) enum UserUpdate {
    Visibility(Visibility),
    LastSeen(u64),
    Disabled(bool),
}

/// A write operation.
#[derive(Debug)]
pub(crate) enum Op {
    Append {
        from: String,
        from_device: DeviceId,
        client_msg_id: ClientMsgId,
        to: String,
        envelope: Vec<u8>,
        now_ms: u64,
    },
    Ack {
        mailbox: MailboxId,
        up_to: ServerSeq,
        now_ms: u64,
    },
    Register {
        user: String,
        device: DeviceId,
        key: [u8; 32],
        invite: Option<String>,
        require_invite: bool,
        now_ms: u64,
    },
    UpdateUser {
        user: String,
        update: UserUpdate,
    },
    AddInvite {
        token: String,
        now_ms: u64,
    },
    AddDevice {
        user: String,
        device: DeviceId,
        key: [u8; 32],
    },
    Sweep {
        now_ms: u64,
    },
    Shutdown,
}

/// The committer's answer to one operation.
#[derive(Debug)]
pub(crate) enum Reply {
    Append(AppendOutcome),
    Ack(AckOutcome),
    Register(RegisterOutcome),
    Updated(bool),
    Sweep(SweepOutcome),
    Done,
}

/// An operation and where to send its answer.
pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Result<Reply, StorageError>>,
}

/// Starts the committer thread.
pub(crate) fn spawn(
    db: sled::Db,
    db_file: std::fs::File,
    rx: mpsc::UnboundedReceiver<Request>,
    max_batch: usize,
    retention: Duration,
    listener: Option<CommitListener>,
    stats: Arc<StoreStats>,
) -> Result<std::thread::JoinHandle<()>, StorageError> {
    let committer = Committer {
        db,
        db_file,
        seqs: HashMap::new(),
        listener,
        stats,
        max_batch,
        retention_ms: retention.as_millis() as u64,
    };
    Ok(std::thread::Builder::new()
        .name("missive-committer".into())
        .spawn(move || committer.run(rx))?)
}

/// Devices of `name` as stored on disk.
pub(crate) fn devices_on_disk(db: &sled::Db, name: &str) -> Result<Vec<DeviceId>, StorageError> {
    let prefix = keys::devices_of(name);
    let mut out = Vec::new();
    for kv in db.scan_prefix(&prefix) {
        let (k, _) = kv?;
        let tail: [u8; 4] = k[prefix.len()..]
            .try_into()
            .map_err(|_| StorageError::Corrupt(format!("device key of {name}")))?;
        out.push(DeviceId(u32::from_be_bytes(tail)));
    }
    Ok(out)
}

struct Committer {
    db: sled::Db,
    db_file: std::fs::File,
    /// Next seq per mailbox, loaded lazily from the `s` counters.
    seqs: HashMap<MailboxId, u64>,
    listener: Option<CommitListener>,
    stats: Arc<StoreStats>,
    max_batch: usize,
    retention_ms: u64,
}

/// What the operations of the current batch have written so far, so that later operations in
/// the same batch see it (the tree only changes when the batch is applied).
#[derive(Default)]
struct Pending {
    dedup: HashMap<Vec<u8>, u64>,
    users: HashMap<String, UserRecord>,
    devices: HashMap<String, Vec<DeviceId>>,
    used_invites: HashSet<String>,
    new_invites: HashSet<String>,
    deleted: HashSet<Vec<u8>>,
    events: Vec<(MailboxId, ServerSeq, StoredItem)>,
}

impl Committer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut shutting_down = false;
        while !shutting_down {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut reqs = vec![first];
            while reqs.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(r) => reqs.push(r),
                    Err(_) => break,
                }
            }
            shutting_down = reqs.iter().any(|r| matches!(r.op, Op::Shutdown));
            self.commit(reqs);
        }
        if shutting_down {
            // Refuse what arrives after the shutdown request instead of leaving it hanging.
            rx.close();
            while let Ok(r) = rx.try_recv() {
                let _ = r.reply.send(Err(StorageError::Closed));
            }
        }
        let _ = self.db.flush();
        let _ = self.db_file.sync_all();
    }

    fn commit(&mut self, reqs: Vec<Request>) {
        let mut batch = sled::Batch::default();
        let mut pending = Pending::default();
        let mut answers = Vec::with_capacity(reqs.len());
        for req in reqs {
            let r = self.apply(&mut batch, &mut pending, req.op);
            answers.push((req.reply, r));
        }
        let started = Instant::now();
        let durable = self
            .db
            .apply_batch(batch)
            .map_err(StorageError::from)
            .and_then(|()| self.db.flush().map_err(StorageError::from))
            // sled's flush is sync_file_range only; fsync makes the batch survive power loss.
            .and_then(|_| self.db_file.sync_all().map_err(StorageError::from));
        let micros = started.elapsed().as_micros() as u64;
        match durable {
            Ok(()) => {
                let n = answers.len() as u64;
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats.ops.fetch_add(n, Ordering::Relaxed);
                self.stats
                    .flush_micros_total
                    .fetch_add(micros, Ordering::Relaxed);
                self.stats.max_batch_seen.fetch_max(n, Ordering::Relaxed);
                self.stats
                    .items_appended
                    .fetch_add(pending.events.len() as u64, Ordering::Relaxed);
                self.stats
                    .items_deleted
                    .fetch_add(pending.deleted.len() as u64, Ordering::Relaxed);
                if let Some(listener) = &self.listener {
                    for (mb, seq, item) in &pending.events {
                        listener(mb, *seq, item);
                    }
                }
                for (reply, r) in answers {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed");
                // Seq counters may have advanced in memory for writes that never landed.
                self.seqs.clear();
                for (reply, _) in answers {
                    let _ = reply.send(Err(StorageError::Db(e.to_string())));
                }
            }
        }
    }

    fn apply(
        &mut self,
        batch: &mut sled::Batch,
        pending: &mut Pending,
        op: Op,
    ) -> Result<Reply, StorageError> {
        match op {
            Op::Append {
                from,
                from_device,
                client_msg_id,
                to,
                envelope,
                now_ms,
            } => self
                .append(
                    batch,
                    pending,
                    &from,
                    from_device,
                    client_msg_id,
                    &to,
                    envelope,
                    now_ms,
                )
                .map(Reply::Append),
            Op::Ack {
                mailbox,
                up_to,
                now_ms,
            } => self
                .ack(batch, pending, &mailbox, up_to, now_ms)
                .map(Reply::Ack),
            Op::Register {
                user,
                device,
                key,
                invite,
                require_invite,
                now_ms,
            } => self
                .register(
                    batch,
                    pending,
                    &user,
                    device,
                    key,
                    invite,
                    require_invite,
                    now_ms,
                )
                .map(Reply::Register),
            Op::UpdateUser { user, update } => {
                let Some(mut rec) = self.user_record(pending, &user)? else {
                    return Ok(Reply::Updated(false));
                };
                match update {
                    UserUpdate::Visibility(v) => rec.visibility = v,
                    UserUpdate::LastSeen(ms) => rec.last_seen_ms = rec.last_seen_ms.max(ms),
                    UserUpdate::Disabled(d) => rec.disabled = d,
                }
                batch.insert(keys::user(&user), encode(&rec)?);
                pending.users.insert(user, rec);
                Ok(Reply::Updated(true))
            }
            Op::AddInvite { token, now_ms } => {
                batch.insert(keys::invite(&token), &now_ms.to_be_bytes()[..]);
                pending.used_invites.remove(&token);
                pending.new_invites.insert(token);
                Ok(Reply::Done)
            }
            Op::AddDevice { user, device, key } => {
                if self.user_record(pending, &user)?.is_none()
                    || self.devices(pending, &user)?.contains(&device)
                {
                    return Ok(Reply::Updated(false));
                }
                batch.insert(keys::device(&user, device), &key[..]);
                pending.devices.entry(user).or_default().push(device);
                Ok(Reply::Updated(true))
            }
            Op::Sweep { now_ms } => self.sweep(batch, pending, now_ms).map(Reply::Sweep),
            Op::Shutdown => Ok(Reply::Done),
        }
    }

    fn user_record(
        &self,
        pending: &Pending,
        user: &str,
    ) -> Result<Option<UserRecord>, StorageError> {
        if let Some(r) = pending.users.get(user) {
            return Ok(Some(r.clone()));
        }
        match self.db.get(keys::user(user))? {
            Some(v) => Ok(Some(decode_user(&v)?)),
            None => Ok(None),
        }
    }

    fn devices(&self, pending: &Pending, user: &str) -> Result<Vec<DeviceId>, StorageError> {
        let mut devs = devices_on_disk(&self.db, user)?;
        if let Some(extra) = pending.devices.get(user) {
            for d in extra {
                if !devs.contains(d) {
                    devs.push(*d);
                }
            }
        }
        Ok(devs)
    }

    fn next_seq(
        &mut self,
        batch: &mut sled::Batch,
        mb: &MailboxId,
    ) -> Result<ServerSeq, StorageError> {
        let next = match self.seqs.get(mb) {
            Some(n) => *n,
            None => match self.db.get(keys::seq_counter(mb))? {
                Some(v) => keys::be_u64(&v)
                    .ok_or_else(|| StorageError::Corrupt(format!("seq counter of {mb}")))?,
                None => 1,
            },
        };
        self.seqs.insert(mb.clone(), next + 1);
        batch.insert(keys::seq_counter(mb), &(next + 1).to_be_bytes()[..]);
        Ok(ServerSeq(next))
    }

    fn push_item(
        &mut self,
        batch: &mut sled::Batch,
        pending: &mut Pending,
        mb: MailboxId,
        item: StoredItem,
    ) -> Result<(), StorageError> {
        let seq = self.next_seq(batch, &mb)?;
        batch.insert(keys::mailbox_item(&mb, seq), encode(&item)?);
        pending.events.push((mb, seq, item));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        batch: &mut sled::Batch,
        pending: &mut Pending,
        from: &str,
        from_device: DeviceId,
        client_msg_id: ClientMsgId,
        to: &str,
        envelope: Vec<u8>,
        now_ms: u64,
    ) -> Result<AppendOutcome, StorageError> {
        let dedup_key = keys::dedup(from, from_device, &client_msg_id);
        if let Some(ts) = pending.dedup.get(&dedup_key) {
            return Ok(AppendOutcome::Duplicate { server_ts_ms: *ts });
        }
        if let Some(v) = self.db.get(&dedup_key)? {
            let ts = keys::be_u64(&v).unwrap_or(0);
            return Ok(AppendOutcome::Duplicate { server_ts_ms: ts });
        }
        let devices = self.devices(pending, to)?;
        if devices.is_empty() {
            return Ok(AppendOutcome::UnknownRecipient);
        }
        let n = devices.len();
        let mut envelope = Some(envelope);
        for (i, device) in devices.into_iter().enumerate() {
            // The last device takes the buffer; earlier ones get copies.
            let body = if i + 1 == n {
                envelope.take().unwrap_or_default()
            } else {
                envelope.clone().unwrap_or_default()
            };
            let item = StoredItem {
                from: from.to_owned(),
                from_device,
                client_msg_id,
                server_ts_ms: now_ms,
                payload: Payload::Envelope(body),
            };
            self.push_item(batch, pending, MailboxId::new(to, device), item)?;
        }
        batch.insert(dedup_key.clone(), &now_ms.to_be_bytes()[..]);
        pending.dedup.insert(dedup_key, now_ms);
        Ok(AppendOutcome::Stored {
            server_ts_ms: now_ms,
            devices: n,
        })
    }

    fn ack(
        &mut self,
        batch: &mut sled::Batch,
        pending: &mut Pending,
        mb: &MailboxId,
        up_to: ServerSeq,
        now_ms: u64,
    ) -> Result<AckOutcome, StorageError> {
        let start = keys::mailbox_item(mb, ServerSeq(0));
        let end = keys::mailbox_item(mb, up_to);
        let mut out = AckOutcome::default();
        let mut receipts = Vec::new();
        for kv in self.db.range(start..=end) {
            let (k, v) = kv?;
            if !pending.deleted.insert(k.to_vec()) {
                continue; // already acked earlier in this batch
            }
            batch.remove(k.clone());
            out.deleted += 1;
            // A damaged item is still deleted, it just cannot produce a receipt.
            match decode_item(&v) {
                Ok(item) if matches!(item.payload, Payload::Envelope(_)) => {
                    receipts.push((item.from, item.client_msg_id))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(mailbox = %mb, error = %e, "acked a damaged item"),
            }
        }
        for (sender, client_msg_id) in receipts {
            for device in self.devices(pending, &sender)? {
                let item = StoredItem {
                    from: mb.user.clone(),
                    from_device: mb.device,
                    client_msg_id,
                    server_ts_ms: now_ms,
                    payload: Payload::Delivered,
                };
                self.push_item(batch, pending, MailboxId::new(sender.clone(), device), item)?;
                out.receipts += 1;
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        batch: &mut sled::Batch,
        pending: &mut Pending,
        user: &str,
        device: DeviceId,
        key: [u8; 32],
        invite: Option<String>,
        require_invite: bool,
        now_ms: u64,
    ) -> Result<RegisterOutcome, StorageError> {
        if self.user_record(pending, user)?.is_some() {
            return Ok(RegisterOutcome::Taken);
        }
        if require_invite {
            let Some(token) = invite else {
                return Ok(RegisterOutcome::InviteInvalid);
            };
            let exists = pending.new_invites.contains(&token)
                || self.db.get(keys::invite(&token))?.is_some();
            if !exists || pending.used_invites.contains(&token) {
                return Ok(RegisterOutcome::InviteInvalid);
            }
            batch.remove(keys::invite(&token));
            pending.new_invites.remove(&token);
            pending.used_invites.insert(token);
        }
        let rec = UserRecord {
            created_ms: now_ms,
            visibility: Visibility::Everyone,
            last_seen_ms: 0,
            disabled: false,
        };
        batch.insert(keys::user(user), encode(&rec)?);
        batch.insert(keys::device(user, device), &key[..]);
        pending.users.insert(user.to_owned(), rec);
        pending
            .devices
            .entry(user.to_owned())
            .or_default()
            .push(device);
        Ok(RegisterOutcome::Created)
    }

    fn sweep(
        &mut self,
        batch: &mut sled::Batch,
        pending: &mut Pending,
        now_ms: u64,
    ) -> Result<SweepOutcome, StorageError> {
        let cutoff = now_ms.saturating_sub(self.retention_ms);
        let mut out = SweepOutcome::default();
        // Mailbox items: seq order within a mailbox follows store time, so after the first
        // young item of a mailbox we jump to the next mailbox.
        let mut from: Bound<Vec<u8>> = Bound::Included(vec![keys::MAILBOX]);
        'mailboxes: loop {
            let mut iter = self
                .db
                .range::<Vec<u8>, _>((from.clone(), Bound::Unbounded));
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
                    if pending.deleted.insert(k.to_vec()) {
                        batch.remove(k);
                        out.items += 1;
                        if out.items >= SWEEP_STEP_LIMIT {
                            out.more = true;
                            return Ok(out);
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
        for kv in self.db.scan_prefix([keys::DEDUP]) {
            let (k, v) = kv?;
            if keys::be_u64(&v).is_none_or(|ts| ts < cutoff) {
                batch.remove(k);
                out.dedup_keys += 1;
                if out.items + out.dedup_keys >= SWEEP_STEP_LIMIT {
                    out.more = true;
                    break;
                }
            }
        }
        Ok(out)
    }
}
