//! The committer: the one place that writes. Operations are applied in the order they were
//! submitted, each batch as one engine batch; the [`CommitListener`] hears of appended items
//! at once (so live recipients get them while the batch is being made durable); the
//! committer thread makes applied batches durable (flush + fsync, see [`KvEngine::sync`]), at
//! most one fsync per `commit_delay`, and only then answers the waiters that need durability.
//! A batch is applied on the submitting thread when the committer is idle, or by the
//! committer thread from its queue when it is busy (see [`Handle`]).
//!
//! A backup ([`Op::Backup`]) is not part of a batch: the committer commits what was queued
//! before it, runs the copy (see `backup.rs`) while every later write waits, then goes on.
//!
//! Faults: when the engine fails a batch or an fsync, nothing of what was not made durable
//! may show: its waiters are answered with [`StorageError::Unavailable`], the listener never
//! hears of its items (it hears only after the fsync), and the engine is closed at once (its
//! memory may hold the failed writes, a dedup key among them, and after a failed fsync the
//! page cache cannot be trusted) and reopened from its files once the disk has room again;
//! reopening replays the engine's journal, so what is found there was on disk. Until then
//! every operation is refused. Below the free-space watermark (`health.rs`) only the writes
//! that add data are refused.
use crate::backup::BackupReport;
use crate::device_registry::{self, LinkOutcome};
use crate::engine::{self, Engine, EngineSlot, KvEngine, Tuning, WriteBatch};
use crate::health::{FreeSpaceWatch, HealthCell, StorageHealth};
use crate::key_directory::{self, ClaimedBundle, KeyUpload, UploadOutcome};
use crate::records::{decode_item, decode_user, encode, StoredItem, UserRecord};
use crate::store::{
    AckOutcome, AppendOutcome, CommitListener, RegisterOutcome, StoreStats, SweepOutcome,
};
use crate::unacked::{LoggedItem, Taken, UnackedLog};
use crate::{keys, MailboxId, StorageError};
use missive_proto::{
    ClientMsgId, DeviceEnvelope, DeviceId, Payload, ServerSeq, UserDevices, Visibility,
};
use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most items a single sweep step removes, so one step never makes a huge batch.
const SWEEP_STEP_LIMIT: usize = 10_000;

/// Mailboxes whose item count and bytes the committer keeps in memory; past this the cache
/// starts over (a mailbox not in it is counted again by a scan on its next append).
const USAGE_CACHE_LIMIT: usize = 100_000;

/// Contact marks the committer remembers having written; past this it starts over.
const CONTACT_CACHE_LIMIT: usize = 100_000;

/// How often a failed engine is tried again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// Users whose device list the committer keeps in memory; past this the cache starts over, so
/// sends to many (or made-up) names cannot grow it without bound.
const DEVICE_CACHE_LIMIT: usize = 100_000;

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
        /// One copy per device of `to`.
        envelopes: Vec<DeviceEnvelope>,
        /// One copy per other device of `from`.
        own: Vec<DeviceEnvelope>,
        /// Undelivered copies are dropped this long after `now_ms` (0: never).
        expires_in_secs: u32,
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
    UploadKeys(KeyUpload),
    ClaimKeys {
        user: String,
    },
    CreateLinkCode {
        user: String,
        code: String,
        now_ms: u64,
    },
    LinkDevice {
        user: String,
        code: String,
        key: [u8; 32],
        max_devices: usize,
        now_ms: u64,
    },
    RemoveDevice {
        user: String,
        device: DeviceId,
    },
    Retract {
        from: String,
        client_msg_id: ClientMsgId,
        to: String,
    },
    Expire {
        now_ms: u64,
    },
    Sweep {
        now_ms: u64,
    },
    /// A consistent copy of the whole store into the store directory `dest`; runs alone,
    /// between two commits.
    Backup {
        dest: std::path::PathBuf,
        engine: Engine,
        tuning: Tuning,
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
    Backup(BackupReport),
    KeysUploaded(UploadOutcome),
    KeysClaimed(Vec<ClaimedBundle>),
    Linked(LinkOutcome),
    /// `None`: no such device.
    Removed(Option<usize>),
    Retracted(usize),
    Done,
}

/// An operation and where to send its answer.
pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Result<Reply, StorageError>>,
}

/// How the committer forms its commits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most operations taken into one batch, and made durable by one fsync.
    pub(crate) max_batch: usize,
    /// Least time between two fsyncs (see `StoreConfig::commit_delay`).
    pub(crate) commit_delay: Duration,
    /// Most undelivered items one device mailbox holds before sends to it are refused.
    pub(crate) mailbox_max_items: u64,
    /// Most bytes of undelivered items one device mailbox holds before sends are refused.
    pub(crate) mailbox_max_bytes: u64,
    /// Most undelivered envelopes of one sender in one device mailbox.
    pub(crate) mailbox_max_items_per_sender: u64,
    /// Most bytes of undelivered envelopes of one sender in one device mailbox.
    pub(crate) mailbox_max_bytes_per_sender: u64,
    /// Invite tokens older than this no longer register anyone, and are swept.
    pub(crate) invite_ttl: Duration,
    /// Link codes older than this link nothing, and are swept.
    pub(crate) link_code_ttl: Duration,
    /// Tell the listener of items when their batch is applied, not after its fsync.
    pub(crate) deliver_before_fsync: bool,
}

/// Opens the store's engine afresh from its files (after a failure).
pub(crate) type Reopen = Box<dyn Fn() -> Result<Arc<dyn KvEngine>, StorageError> + Send>;

/// How to reopen the engine after a failure, and the watermark of its disk.
pub(crate) struct EngineHome {
    /// Opens the engine from its files.
    pub(crate) reopen: Reopen,
    /// A directory on the engine's filesystem, for the free-space watermark.
    pub(crate) dir: PathBuf,
    /// Free bytes below which data-adding writes are refused (0: off).
    pub(crate) min_free_bytes: u64,
}

/// Starts the committer thread; operations go to it through the returned [`Handle`].
pub(crate) fn spawn(
    slot: Arc<EngineSlot>,
    home: EngineHome,
    limits: Limits,
    retention: Duration,
    listener: Option<CommitListener>,
    stats: Arc<StoreStats>,
    health: Arc<HealthCell>,
) -> Result<(Handle, std::thread::JoinHandle<()>), StorageError> {
    let committer = Committer {
        db: slot.get(),
        slot,
        free_space: FreeSpaceWatch::new(&home.dir, home.min_free_bytes),
        // The first look at the free space comes at once.
        recheck_at: (home.min_free_bytes > 0).then(Instant::now),
        home,
        health,
        next_reopen: None,
        reopened: false,
        usage: HashMap::new(),
        contacts: HashMap::new(),
        contact_count: 0,
        seqs: HashMap::new(),
        acked_floor: HashMap::new(),
        unacked: UnackedLog::new(UNACKED_LOG_LIMIT),
        devices: HashMap::new(),
        listener,
        stats,
        limits,
        retention_ms: retention.as_millis() as u64,
        unsynced: Unsynced::default(),
        last_sync: None,
        syncing: false,
    };
    let core = Arc::new(Mutex::new(committer));
    // Unbounded: callers are bounded by protocol limits (in-flight sends per connection,
    // connections), and an eager, non-blocking enqueue keeps each caller's order.
    let (queue, queued) = flume::unbounded();
    // One pending ring is enough: the committer looks at everything when it wakes.
    let (doorbell, rings) = flume::bounded(1);
    let thread_core = core.clone();
    let parked = Arc::new(AtomicBool::new(false));
    let thread_parked = parked.clone();
    let thread = std::thread::Builder::new()
        .name("missive-committer".into())
        .spawn(move || run(&thread_core, &queued, &rings, &thread_parked))?;
    Ok((
        Handle {
            core,
            queue,
            doorbell,
            max_batch: limits.max_batch,
            parked,
        },
        thread,
    ))
}

/// The writers' side of the committer.
///
/// An operation is applied on the calling thread when the committer is idle: nothing queued,
/// no fsync running, the lock free. That is the common case at a sparse load, and it saves
/// two thread hand-offs per operation (to the committer and back to the connection that
/// waits for the item), which were most of a message's cost there. Otherwise the operation
/// is queued, and the committer applies the queue in one batch when it is free: under load
/// the batching stays as it was. Either way the committer thread alone runs the fsyncs, at
/// most one per `commit_delay`, and only it answers the waiters that need durability.
/// Clones share the committer; it stops once the last clone is dropped (or at shutdown).
#[derive(Clone)]
pub(crate) struct Handle {
    core: Arc<Mutex<Committer>>,
    queue: flume::Sender<Request>,
    doorbell: flume::Sender<()>,
    max_batch: usize,
    /// The committer thread is waiting for work (it holds nothing): read by the tests that
    /// need it idle, set by the thread at no measurable cost.
    #[cfg_attr(not(test), allow(dead_code))]
    parked: Arc<AtomicBool>,
}

impl Handle {
    /// Applies or queues `req`, keeping the order of the calls. False when the committer has
    /// stopped (the request is dropped, so its waiter sees `Closed`).
    pub(crate) fn submit(&self, req: Request) -> bool {
        let Some(req) = self.try_apply_here(req) else {
            return true;
        };
        if self.queue.send(req).is_err() {
            return false;
        }
        let _ = self.doorbell.try_send(());
        true
    }

    /// False once the committer thread has stopped (shut down, or died).
    pub(crate) fn is_alive(&self) -> bool {
        !self.queue.is_disconnected()
    }

    /// Applies `req` on this thread if that cannot reorder it behind anything; gives it back
    /// when it must be queued instead. Never blocks on the committer: a busy lock means queue.
    fn try_apply_here(&self, req: Request) -> Option<Request> {
        if !applies_inline(&req.op) || !self.is_alive() {
            return Some(req);
        }
        let Ok(mut core) = self.core.try_lock() else {
            return Some(req);
        };
        // Anything queued was submitted before this (the committer takes from the queue only
        // under this lock), so it goes first; during an fsync the engine is busy with it. Past
        // a few operations per fsync the load is high enough to batch: the committer thread
        // then applies them, and the caller (a network thread) keeps its time for the network.
        // And the engine's background work (fjall's flush) can stall a write for a long while:
        // better the committer thread than a network thread.
        if core.syncing
            || !self.queue.is_empty()
            || core.unsynced.ops >= INLINE_OPS_PER_SYNC
            || core.db.background_work()
        {
            return Some(req);
        }
        let was_durable = core.unsynced.since.is_none();
        core.apply_batch(vec![req]);
        // A failure arms the reopen timer, which the committer must learn of too.
        let ring = (was_durable && core.unsynced.since.is_some())
            || core.unsynced.answers.len() >= self.max_batch
            || core.next_reopen.is_some();
        drop(core);
        if ring {
            // The committer learns that an fsync is now owed, and when.
            let _ = self.doorbell.try_send(());
        }
        None
    }
}

/// Most operations applied on callers' threads between two fsyncs; later ones in the same
/// interval are queued for the committer thread. At 4,000 msgs/s (about 14 operations per
/// fsync) all are applied inline; at saturation (100 and more) most are batched. With 32, the
/// saturated 400-client shape lost about 13 % in one A/B; with 16, nothing measurable.
const INLINE_OPS_PER_SYNC: u64 = 16;

/// Operations that may be applied on the caller's thread: the small, frequent ones. Sweeps
/// (up to thousands of deletes), backups and the shutdown always go through the committer.
fn applies_inline(op: &Op) -> bool {
    !matches!(op, Op::Sweep { .. } | Op::Backup { .. } | Op::Shutdown)
}

/// Locks the committer state. A panic while holding the lock cannot leave it half-written in
/// a way later operations trust: a failed or interrupted batch is never answered as stored.
fn lock(core: &Mutex<Committer>) -> MutexGuard<'_, Committer> {
    core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The committer thread: applies what was queued, fsyncs on time, closes the engine at the end.
fn run(
    core: &Mutex<Committer>,
    queued: &flume::Receiver<Request>,
    rings: &flume::Receiver<()>,
    parked: &AtomicBool,
) {
    let mut shutting_down = false;
    while !shutting_down {
        if queued.is_empty() {
            let deadline = {
                let c = lock(core);
                match (c.sync_deadline(), c.next_check()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            // From here until woken the thread touches neither the lock nor the queue.
            parked.store(true, Ordering::Release);
            let woke = match deadline {
                None => rings.recv().map_err(|_| ()),
                Some(deadline) => match rings.recv_deadline(deadline) {
                    Ok(()) | Err(flume::RecvTimeoutError::Timeout) => Ok(()),
                    Err(flume::RecvTimeoutError::Disconnected) => Err(()),
                },
            };
            parked.store(false, Ordering::Release);
            // Every handle is gone: nothing more can arrive.
            if woke.is_err() && queued.is_empty() {
                break;
            }
        }
        let mut c = lock(core);
        let mut writes = Vec::new();
        while writes.len() < c.limits.max_batch {
            let Ok(req) = queued.try_recv() else { break };
            match req.op {
                Op::Backup {
                    dest,
                    engine,
                    tuning,
                } => {
                    // The writes queued before the backup are in it, those after it are
                    // not: commit the first, and hold the rest until the copy is verified
                    // (the lock is held throughout, so nothing is applied on the side).
                    if !writes.is_empty() {
                        c.apply_batch(std::mem::take(&mut writes));
                    }
                    c.sync();
                    let r = crate::backup::backup(c.db.as_ref(), engine, tuning, &dest);
                    let _ = req.reply.send(r.map(Reply::Backup));
                }
                Op::Shutdown => {
                    shutting_down = true;
                    writes.push(req);
                    break;
                }
                op => writes.push(Request {
                    op,
                    reply: req.reply,
                }),
            }
        }
        if !writes.is_empty() {
            c.apply_batch(writes);
        }
        if c.next_check().is_some_and(|at| Instant::now() >= at) {
            c.try_reopen();
        }
        if shutting_down {
            c.sync();
        } else if c.sync_due() {
            sync_unlocked(c, core);
        }
    }
    let mut c = lock(core);
    // Whatever was applied becomes durable before the engine closes.
    c.sync();
    if shutting_down {
        // Refuse what arrived after the shutdown request instead of leaving it hanging; once
        // the receiver is gone (below), later submissions fail at once, and a request caught
        // in between is dropped with it, which its waiter also sees as `Closed`.
        while let Ok(r) = queued.try_recv() {
            let _ = r.reply.send(Err(StorageError::Closed));
        }
    }
    if let Err(e) = c.db.close() {
        tracing::error!(error = %e, "closing the storage engine failed");
    }
    // Later writers must not apply anything on the side: the engine is closed. The queue's
    // receiver goes with this thread, which `Handle::is_alive` sees; the `syncing` mark keeps
    // a writer that already checked it off the engine.
    c.syncing = true;
}

/// Runs the owed fsync without holding the lock, so that reads of the committer state are
/// not held up; writers meanwhile queue (they see `syncing`). Answers its waiters after.
fn sync_unlocked(mut c: MutexGuard<'_, Committer>, core: &Mutex<Committer>) {
    let Some(job) = c.begin_sync() else { return };
    let db = c.db.clone();
    drop(c);
    let result = db.sync();
    let mut c = lock(core);
    c.syncing = false;
    c.finish_sync(job, result);
}

/// Devices of `name` as stored on disk.
/// Who sent a message, and its id.
#[derive(Debug, Clone, Copy)]
struct Sender<'a> {
    user: &'a str,
    device: DeviceId,
    client_msg_id: ClientMsgId,
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

pub(crate) fn devices_on_disk(
    db: &dyn KvEngine,
    name: &str,
) -> Result<Vec<DeviceId>, StorageError> {
    let prefix = keys::devices_of(name);
    let mut out = Vec::new();
    for kv in db.prefix(&prefix) {
        let (k, _) = kv?;
        let tail: [u8; 4] = k[prefix.len()..]
            .try_into()
            .map_err(|_| StorageError::Corrupt(format!("device key of {name}")))?;
        out.push(DeviceId(u32::from_be_bytes(tail)));
    }
    Ok(out)
}

/// Seqs a mailbox's counter reserves at a time: the `s` counter on disk is written once per
/// this many items instead of with every batch that appends to the mailbox (at a sparse load,
/// where a batch holds one operation, that was two of the ~7 memtable writes of a message). After a crash the mailbox goes on from the mark, leaving a gap
/// of fewer than this many seqs: seqs only have to grow, clients ack them cumulatively and
/// nobody counts on them being dense.
pub const SEQ_RESERVATION: u64 = 256;

/// A mailbox's seqs as the committer allocates them.
struct SeqState {
    /// The seq the next item gets.
    next: u64,
    /// Every seq at or above this is unused, as written (or about to be) in the `s` counter.
    reserved: u64,
}

impl SeqState {
    /// Takes the next seq; past the reserved mark, raises the mark in this batch's writes.
    fn allocate(&mut self, pending: &mut Pending, mb: &MailboxId) -> ServerSeq {
        let seq = self.next;
        self.next += 1;
        if seq >= self.reserved {
            self.reserved = seq + SEQ_RESERVATION;
            pending.seq_marks.insert(mb.clone(), self.reserved);
        }
        ServerSeq(seq)
    }
}

/// Acks spanning fewer seqs than this read each item by key instead of scanning a range.
const POINT_ACK_LIMIT: u64 = 64;
/// Unacknowledged items the committer remembers so that their acks need no reads (about
/// 100 bytes each: ~13 MB at the limit).
const UNACKED_LOG_LIMIT: usize = 131_072;

struct Committer {
    /// The engine in use (the slot's, taken when it was put there).
    db: Arc<dyn KvEngine>,
    /// Where the read paths find the engine; replaced after a failure.
    slot: Arc<EngineSlot>,
    /// Where to reopen the engine from.
    home: EngineHome,
    free_space: FreeSpaceWatch,
    health: Arc<HealthCell>,
    /// Set while the engine is failed: when to try reopening it next.
    next_reopen: Option<Instant>,
    /// When to look at the free space again (with no write to trigger a look).
    recheck_at: Option<Instant>,
    /// The engine was reopened after a failure in this process (see `next_seq`).
    reopened: bool,
    /// Items and record bytes per device mailbox, loaded by a scan on first use.
    usage: HashMap<MailboxId, Usage>,
    /// Contact marks known to be written (see `keys::contact`).
    /// Per sender, the recipients it is known to have a mark for.
    contacts: HashMap<String, HashSet<String>>,
    /// Marks held in `contacts`, for its bound.
    contact_count: usize,
    /// Next seq and reserved mark per mailbox, loaded lazily from the `s` counters.
    seqs: HashMap<MailboxId, SeqState>,
    /// Per mailbox, a seq at or below which every item is known deleted (by an earlier ack in
    /// this process). Acks scan from just above it: in an LSM engine the deleted items stay
    /// as tombstones until compaction, and scanning from seq 0 walked all of them on every
    /// ack (a third of the edge's CPU at 4,000 msgs/s on fjall). Seqs only grow, so nothing
    /// can appear below it later. Cleared with `seqs` when a commit fails.
    acked_floor: HashMap<MailboxId, u64>,
    /// Devices per user as committed, loaded lazily, so that an append needs no prefix scan
    /// (the scan was a fifth of the committer's time on fjall). Only the committer adds
    /// devices, so it keeps this exact: see `commit`.
    devices: HashMap<String, Vec<DeviceId>>,
    /// Items stored by this process and not acknowledged yet: acks of them need no reads.
    /// Cleared when a commit fails or a sweep deletes items.
    unacked: UnackedLog,
    listener: Option<CommitListener>,
    stats: Arc<StoreStats>,
    limits: Limits,
    retention_ms: u64,
    /// Applied writes not yet fsync'd, and the answers waiting for that fsync.
    unsynced: Unsynced,
    /// When the last fsync began.
    last_sync: Option<Instant>,
    /// An fsync is running (outside the lock): writers queue instead of applying.
    syncing: bool,
}

/// An answer to give once its operation is durable.
type Answer = (
    oneshot::Sender<Result<Reply, StorageError>>,
    Result<Reply, StorageError>,
);

/// What the next fsync makes durable.
#[derive(Default)]
struct Unsynced {
    /// When the oldest applied-but-unsynced batch was applied; `None` when all is durable.
    since: Option<Instant>,
    /// Operations applied since the last fsync (the acks answered early among them).
    ops: u64,
    /// Answers that promise durability, given after the fsync.
    answers: Vec<Answer>,
    /// Items for the listener, told after the fsync (never about writes that did not last).
    events: Vec<(MailboxId, ServerSeq, StoredItem)>,
}

/// What one device mailbox holds.
#[derive(Debug, Clone, Default)]
struct Usage {
    items: u64,
    bytes: u64,
    /// Envelopes (items, record bytes) per sender: one sender may fill only a share of a
    /// mailbox.
    by_sender: HashMap<String, (u64, u64)>,
}

/// One fsync in progress: what it covers and when it began.
struct SyncJob {
    unsynced: Unsynced,
    started: Instant,
}

/// Whether `op` only adds data, and is refused below the free-space watermark. Acks, expiry
/// and user-record updates go on: the first two free space, the last is a few bytes.
fn adds_data(op: &Op) -> bool {
    matches!(
        op,
        Op::Append { .. }
            | Op::Register { .. }
            | Op::AddInvite { .. }
            | Op::AddDevice { .. }
            | Op::UploadKeys(_)
            | Op::CreateLinkCode { .. }
            | Op::LinkDevice { .. }
    )
}

/// Whether `op`'s answer may go out before its batch is fsync'd. An ack only deletes
/// delivered items (and queues receipts): should a crash undo it, the items are delivered
/// again and the recipient's SDK drops what it has seen, so nobody needs to wait for its fsync.
fn answer_before_sync(op: &Op) -> bool {
    matches!(op, Op::Ack { .. })
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
    /// One-time keys handed out by claims in this batch (deleted when it is applied).
    claimed_keys: HashSet<Vec<u8>>,
    /// Link codes used by this batch.
    used_link_codes: HashSet<String>,
    /// Devices removed by this batch.
    removed_devices: HashSet<(String, DeviceId)>,
    /// Items deleted by acks answered from the unacked log (not in `deleted`).
    deleted_logged: u64,
    events: Vec<(MailboxId, ServerSeq, StoredItem)>,
    /// The new reserved mark of every mailbox this batch raised one for (see `next_seq`).
    seq_marks: HashMap<MailboxId, u64>,
    /// A sweep deleted items without counting them: usage is counted afresh after the batch.
    usage_stale: bool,
}

impl Committer {
    /// When the applied writes are to be fsync'd: at once after a quiet spell, otherwise
    /// `commit_delay` after the previous fsync began, so a busy store fsyncs at most once per
    /// delay and every write waits at most one delay for it. `None` when nothing waits.
    fn sync_deadline(&self) -> Option<Instant> {
        let since = self.unsynced.since?;
        Some(match self.last_sync {
            Some(last) => since.max(last + self.limits.commit_delay),
            None => since,
        })
    }

    /// Whether the applied writes should be fsync'd now rather than wait for more batches.
    fn sync_due(&self) -> bool {
        match self.sync_deadline() {
            None => false,
            Some(deadline) => {
                self.unsynced.answers.len() >= self.limits.max_batch || Instant::now() >= deadline
            }
        }
    }

    /// Builds one batch from `reqs`, applies it, and tells the listener about its items (live
    /// recipients get them before the fsync). Answers that need no fsync go out now, the rest
    /// wait in `unsynced` for [`Committer::sync`].
    fn apply_batch(&mut self, reqs: Vec<Request>) {
        if self.next_reopen.is_some() {
            for req in reqs {
                let _ = req.reply.send(Err(StorageError::Unavailable(
                    "storage failed and is being reopened".into(),
                )));
            }
            return;
        }
        let low_space = self.space_is_low();
        let mut batch = WriteBatch::default();
        let mut pending = Pending::default();
        let mut answers = Vec::with_capacity(reqs.len());
        let build_started = Instant::now();
        for req in reqs {
            if low_space && adds_data(&req.op) {
                let _ = req.reply.send(Err(StorageError::Unavailable(
                    "free disk space is below the watermark".into(),
                )));
                continue;
            }
            let early = answer_before_sync(&req.op);
            let r = self.apply(&mut batch, &mut pending, req.op);
            answers.push((early, req.reply, r));
        }
        for (mb, mark) in pending.seq_marks.drain() {
            batch.insert(keys::seq_counter(&mb), mark.to_be_bytes());
        }
        if answers.is_empty() {
            return;
        }
        let applied = self.db.apply(batch);
        self.stats
            .record_build(build_started.elapsed().as_micros() as u64);
        if let Err(e) = applied {
            for (_, reply, _) in answers {
                let _ = reply.send(Err(StorageError::Unavailable(format!(
                    "the write failed: {e}"
                ))));
            }
            self.fail("applying a batch failed", &e);
            return;
        }
        self.stats
            .items_appended
            .fetch_add(pending.events.len() as u64, Ordering::Relaxed);
        self.stats.items_deleted.fetch_add(
            pending.deleted.len() as u64 + pending.deleted_logged,
            Ordering::Relaxed,
        );
        if pending.usage_stale || self.usage.len() > USAGE_CACHE_LIMIT {
            self.usage.clear();
        }
        // A removed device took its mailbox, keys and counters with it: what the committer
        // remembers of the engine is read again (removals are rare).
        if !pending.removed_devices.is_empty() {
            self.forget_caches();
        }
        // Devices added by this batch are in the engine now (a failed fsync clears the cache).
        for (user, added) in pending.devices.drain() {
            if let Some(devs) = self.devices.get_mut(&user) {
                for d in added {
                    if !devs.contains(&d) {
                        devs.push(d);
                    }
                }
                devs.sort_unstable_by_key(|d| d.0);
            }
        }
        // By default live recipients hear of the items once the fsync made them durable (see
        // `finish_sync`): an item a failed fsync undoes is then never delivered. With
        // `deliver_before_fsync` they hear at once, a fsync earlier (see `StoreConfig`).
        if self.limits.deliver_before_fsync {
            if let Some(listener) = &self.listener {
                for (mb, seq, item) in &pending.events {
                    listener(mb, *seq, item);
                }
            }
        } else {
            self.unsynced.events.append(&mut pending.events);
        }
        self.unsynced.since.get_or_insert_with(Instant::now);
        self.unsynced.ops += answers.len() as u64;
        for (early, reply, r) in answers {
            if early {
                let _ = reply.send(r);
            } else {
                self.unsynced.answers.push((reply, r));
            }
        }
    }

    /// Makes every applied batch durable (one flush + fsync), then answers their waiters.
    fn sync(&mut self) {
        if let Some(job) = self.begin_sync() {
            let result = self.db.sync();
            self.finish_sync(job, result);
        }
    }

    /// Takes what the next fsync makes durable, or `None` when everything is.
    fn begin_sync(&mut self) -> Option<SyncJob> {
        self.unsynced.since?;
        let started = Instant::now();
        self.last_sync = Some(started);
        self.syncing = true;
        Some(SyncJob {
            unsynced: std::mem::take(&mut self.unsynced),
            started,
        })
    }

    /// Records the fsync of `job` and answers its waiters.
    fn finish_sync(&mut self, job: SyncJob, result: Result<(), StorageError>) {
        self.syncing = false;
        let SyncJob { unsynced, started } = job;
        match result {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats.ops.fetch_add(unsynced.ops, Ordering::Relaxed);
                self.stats
                    .record_flush(started.elapsed().as_micros() as u64);
                self.stats
                    .max_batch_seen
                    .fetch_max(unsynced.ops, Ordering::Relaxed);
                if let Some(listener) = &self.listener {
                    for (mb, seq, item) in &unsynced.events {
                        listener(mb, *seq, item);
                    }
                }
                for (reply, r) in unsynced.answers {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                for (reply, _) in unsynced.answers {
                    let _ = reply.send(Err(StorageError::Unavailable(format!(
                        "the fsync failed: {e}"
                    ))));
                }
                self.fail("group commit (fsync) failed", &e);
            }
        }
    }

    /// The engine failed a write or an fsync: what it holds in memory may include writes that
    /// are not on disk, so it is closed at once (never asked to sync again) and every
    /// operation is refused until [`Committer::try_reopen`] has opened it again from its
    /// files. Waiters of batches applied but not yet durable are told so.
    fn fail(&mut self, what: &str, e: &StorageError) {
        tracing::error!(
            error = %e,
            "{what}: storage refuses operations until its engine is reopened"
        );
        self.forget_caches();
        let unsynced = std::mem::take(&mut self.unsynced);
        for (reply, _) in unsynced.answers {
            let _ = reply.send(Err(StorageError::Unavailable(format!(
                "an earlier write failed: {e}"
            ))));
        }
        // Dropped without `close` (which would seal and flush the memtable). Dropping may
        // still write out what the engine buffered (fjall's journal persists on drop): the
        // reopen then finds those writes durable, and a sender's retry is answered
        // `Sent{duplicate}`; nothing was delivered or answered before that. The engine's
        // files and lock are released once the last reader lets go of it.
        self.db = engine::unavailable();
        drop(self.slot.replace(engine::unavailable()));
        self.health
            .set(StorageHealth::Failed, format!("{what}: {e}"));
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.next_reopen = Some(Instant::now() + REOPEN_EVERY);
    }

    /// When the committer must wake to reopen the engine or look at the free space again.
    fn next_check(&self) -> Option<Instant> {
        self.next_reopen.or(self.recheck_at)
    }

    /// Reopens a failed engine from its files (replaying its journal) once the disk is above
    /// the watermark again; tries again later when it cannot.
    fn try_reopen(&mut self) {
        let now = Instant::now();
        if self.next_reopen.is_none() {
            // Not failed: this was a low-space recheck.
            self.space_is_low();
            return;
        }
        if self.free_space.is_low(now) {
            self.next_reopen = Some(now + REOPEN_EVERY);
            return;
        }
        let reopened = (self.home.reopen)().and_then(|db| db.sync().map(|()| db));
        match reopened {
            Ok(db) => {
                self.forget_caches();
                self.db = db.clone();
                drop(self.slot.replace(db));
                self.next_reopen = None;
                self.reopened = true;
                self.health.set(StorageHealth::Ok, "");
                self.stats.reopens.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("storage engine reopened: taking writes again");
                self.space_is_low();
            }
            Err(e) => {
                tracing::debug!(error = %e, "storage engine not reopened yet");
                self.health
                    .set(StorageHealth::Failed, format!("reopening failed: {e}"));
                self.next_reopen = Some(now + REOPEN_EVERY);
            }
        }
    }

    /// Whether free space is below the watermark; reports changes (health, log) and keeps a
    /// recheck armed, so the store's health follows the disk without a write to notice it.
    fn space_is_low(&mut self) -> bool {
        if self.next_reopen.is_some() {
            return true;
        }
        let low = self.free_space.is_low(Instant::now());
        if low {
            if self
                .health
                .set(StorageHealth::LowSpace, self.free_space.describe())
            {
                tracing::warn!(space = %self.free_space.describe(), "disk below the free-space watermark: refusing new messages and accounts");
            }
        } else if self.health.set(StorageHealth::Ok, "") {
            tracing::info!(space = %self.free_space.describe(), "disk above the free-space watermark again");
        }
        if self.free_space.is_on() {
            self.recheck_at = Some(Instant::now() + REOPEN_EVERY);
        }
        low
    }

    /// Drops what the committer remembers of the engine's state, after a write that may or
    /// may not have landed: seq counters may have advanced in memory for writes that never did.
    fn forget_caches(&mut self) {
        self.usage.clear();
        self.contacts.clear();
        self.contact_count = 0;
        self.seqs.clear();
        self.acked_floor.clear();
        self.unacked.clear();
        self.devices.clear();
    }

    fn apply(
        &mut self,
        batch: &mut WriteBatch,
        pending: &mut Pending,
        op: Op,
    ) -> Result<Reply, StorageError> {
        match op {
            Op::Append {
                from,
                from_device,
                client_msg_id,
                to,
                envelopes,
                own,
                expires_in_secs,
                now_ms,
            } => self
                .append(
                    batch,
                    pending,
                    Sender {
                        user: &from,
                        device: from_device,
                        client_msg_id,
                    },
                    &to,
                    (envelopes, own),
                    expires_in_secs,
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
                batch.insert(keys::invite(&token), now_ms.to_be_bytes());
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
                batch.insert(keys::device(&user, device), key);
                pending.devices.entry(user).or_default().push(device);
                Ok(Reply::Updated(true))
            }
            Op::UploadKeys(upload) => {
                let exists = self
                    .devices(pending, &upload.user)?
                    .contains(&upload.device);
                key_directory::upload(
                    self.db.as_ref(),
                    batch,
                    &pending.claimed_keys,
                    exists,
                    upload,
                )
                .map(Reply::KeysUploaded)
            }
            Op::ClaimKeys { user } => {
                let devices = self.devices(pending, &user)?;
                key_directory::claim(
                    self.db.as_ref(),
                    batch,
                    &mut pending.claimed_keys,
                    &user,
                    &devices,
                )
                .map(Reply::KeysClaimed)
            }
            Op::CreateLinkCode { user, code, now_ms } => {
                if self.user_record(pending, &user)?.is_none() {
                    return Ok(Reply::Updated(false));
                }
                batch.insert(
                    keys::link_code(&code),
                    device_registry::link_code_value(&user, now_ms),
                );
                Ok(Reply::Updated(true))
            }
            Op::LinkDevice {
                user,
                code,
                key,
                max_devices,
                now_ms,
            } => {
                let devices = self.devices(pending, &user)?;
                let outcome = device_registry::link(
                    self.db.as_ref(),
                    batch,
                    &mut pending.used_link_codes,
                    (&user, &code, key),
                    &devices,
                    max_devices,
                    self.limits.link_code_ttl.as_millis() as u64,
                    now_ms,
                )?;
                if let LinkOutcome::Linked(device) = outcome {
                    pending.devices.entry(user).or_default().push(device);
                }
                Ok(Reply::Linked(outcome))
            }
            Op::RemoveDevice { user, device } => {
                let devices = self.devices(pending, &user)?;
                if !devices.contains(&device) {
                    return Ok(Reply::Removed(None));
                }
                let items =
                    device_registry::remove(self.db.as_ref(), batch, &user, device, &devices)?;
                pending.removed_devices.insert((user, device));
                Ok(Reply::Removed(Some(items)))
            }
            Op::Retract {
                from,
                client_msg_id,
                to,
            } => {
                let mut mailboxes: Vec<MailboxId> = self
                    .devices(pending, &to)?
                    .into_iter()
                    .map(|d| MailboxId::new(to.clone(), d))
                    .collect();
                if from != to {
                    mailboxes.extend(
                        self.devices(pending, &from)?
                            .into_iter()
                            .map(|d| MailboxId::new(from.clone(), d)),
                    );
                }
                let mut removed = 0;
                for mb in &mailboxes {
                    for kv in self.db.prefix(&keys::mailbox_prefix(mb)) {
                        let (k, v) = kv?;
                        if pending.deleted.contains(&k) {
                            continue;
                        }
                        let Ok(item) = decode_item(&v) else { continue };
                        if item.from == from
                            && item.client_msg_id == client_msg_id
                            && matches!(item.payload, Payload::Envelope(_))
                        {
                            batch.remove(k.clone());
                            pending.deleted.insert(k);
                            removed += 1;
                        }
                    }
                }
                if removed > 0 {
                    // Deleted outside the usage and unacked bookkeeping: counted afresh.
                    pending.usage_stale = true;
                    self.unacked.clear();
                }
                Ok(Reply::Retracted(removed))
            }
            Op::Expire { now_ms } => {
                let mut out = SweepOutcome::default();
                self.expire(batch, pending, now_ms, &mut out)?;
                Ok(Reply::Sweep(out))
            }
            Op::Sweep { now_ms } => self.sweep(batch, pending, now_ms).map(Reply::Sweep),
            // `run` takes backups out of the batch before it gets here.
            Op::Backup { .. } => Err(StorageError::Backup(
                "a backup cannot be part of a batch".into(),
            )),
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
        match self.db.get(&keys::user(user))? {
            Some(v) => Ok(Some(decode_user(&v)?)),
            None => Ok(None),
        }
    }

    /// Devices of `user`: committed ones (cached) plus those added earlier in this batch.
    fn devices(&mut self, pending: &Pending, user: &str) -> Result<Vec<DeviceId>, StorageError> {
        let mut devs = match self.devices.get(user) {
            Some(devs) => devs.clone(),
            None => {
                let devs = devices_on_disk(self.db.as_ref(), user)?;
                if self.devices.len() >= DEVICE_CACHE_LIMIT {
                    self.devices.clear();
                }
                self.devices.insert(user.to_owned(), devs.clone());
                devs
            }
        };
        if let Some(extra) = pending.devices.get(user) {
            for d in extra {
                if !devs.contains(d) {
                    devs.push(*d);
                }
            }
            devs.sort_unstable();
        }
        if !pending.removed_devices.is_empty() {
            devs.retain(|d| !pending.removed_devices.contains(&(user.to_owned(), *d)));
        }
        Ok(devs)
    }

    /// The next seq of `mb`. The mailbox's counter on disk is a mark every seq at or above
    /// which is unused; it is raised by [`SEQ_RESERVATION`] (in the batch that takes the first
    /// seq past it) rather than written with every batch.
    fn next_seq(
        &mut self,
        pending: &mut Pending,
        mb: &MailboxId,
    ) -> Result<ServerSeq, StorageError> {
        if let Some(state) = self.seqs.get_mut(mb) {
            return Ok(state.allocate(pending, mb));
        }
        let mut mark = match self.db.get(&keys::seq_counter(mb))? {
            Some(v) => keys::be_u64(&v)
                .ok_or_else(|| StorageError::Corrupt(format!("seq counter of {mb}")))?,
            None => 1,
        };
        if self.reopened {
            // A live session may have read items of a failed batch (applied, never durable)
            // whose seqs lie above the mark on disk; it skips seqs below what it delivered.
            // Past a reopen, seqs go on a whole reservation above the mark: a gap, never a
            // reuse.
            mark += SEQ_RESERVATION;
        }
        let mut state = SeqState {
            next: mark,
            reserved: mark,
        };
        let seq = state.allocate(pending, mb);
        self.seqs.insert(mb.clone(), state);
        Ok(seq)
    }

    /// What `mb` holds (items, record bytes), counted by a scan the first time it is needed.
    fn usage(&mut self, mb: &MailboxId) -> Result<&mut Usage, StorageError> {
        if !self.usage.contains_key(mb) {
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
            // pending writes; `apply_batch` bounds the map after each batch.
            self.usage.insert(mb.clone(), counted);
        }
        self.usage
            .get_mut(mb)
            .ok_or_else(|| StorageError::Db("mailbox usage vanished".into()))
    }

    /// Takes a deleted item of `mb` (an envelope of `sender`, or a receipt) off its usage,
    /// when the usage is loaded (otherwise the next scan counts without it).
    fn unuse(&mut self, mb: &MailboxId, bytes: u64, sender: Option<&str>) {
        if let Some(u) = self.usage.get_mut(mb) {
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

    fn push_item(
        &mut self,
        batch: &mut WriteBatch,
        pending: &mut Pending,
        mb: MailboxId,
        item: StoredItem,
    ) -> Result<ServerSeq, StorageError> {
        let seq = self.next_seq(pending, &mb)?;
        let record = encode(&item)?;
        let bytes = record.len() as u64;
        batch.insert(keys::mailbox_item(&mb, seq), record);
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
        let receipt_to = earns_receipt(&mb, &item).then(|| (item.from.clone(), item.client_msg_id));
        self.unacked.stored(
            &mb,
            LoggedItem {
                seq: seq.0,
                receipt_to,
                bytes,
            },
        );
        pending.events.push((mb, seq, item));
        Ok(seq)
    }

    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        batch: &mut WriteBatch,
        pending: &mut Pending,
        sender: Sender<'_>,
        to: &str,
        (envelopes, own): (Vec<DeviceEnvelope>, Vec<DeviceEnvelope>),
        expires_in_secs: u32,
        now_ms: u64,
    ) -> Result<AppendOutcome, StorageError> {
        let Sender {
            user: from,
            device: from_device,
            client_msg_id,
        } = sender;
        let dedup_key = keys::dedup(from, from_device, &client_msg_id);
        if let Some(ts) = pending.dedup.get(&dedup_key) {
            return Ok(AppendOutcome::Duplicate { server_ts_ms: *ts });
        }
        if let Some(v) = self.db.get(&dedup_key)? {
            let ts = keys::be_u64(&v).unwrap_or(0);
            return Ok(AppendOutcome::Duplicate { server_ts_ms: ts });
        }
        let recipients = self.devices(pending, to)?;
        if recipients.is_empty() {
            return Ok(AppendOutcome::UnknownRecipient);
        }
        // Checked here, in the batch that writes, so a device linked or removed a moment ago
        // is never missed: every device gets its own copy or nobody gets one.
        let mut current = Vec::new();
        if !names_exactly(&envelopes, &recipients) {
            current.push(UserDevices {
                user: to.to_owned(),
                devices: recipients,
            });
        }
        let mine = if from == to {
            Vec::new()
        } else {
            self.devices(pending, from)?
        };
        let others: Vec<DeviceId> = mine.iter().copied().filter(|d| *d != from_device).collect();
        if !names_exactly(&own, &others) {
            current.push(UserDevices {
                user: from.to_owned(),
                devices: mine,
            });
        }
        if !current.is_empty() {
            return Ok(AppendOutcome::DeviceMismatch(current));
        }
        let copies: Vec<(MailboxId, Vec<u8>)> = envelopes
            .into_iter()
            .map(|c| (MailboxId::new(to, c.device), c.envelope))
            .chain(
                own.into_iter()
                    .map(|c| (MailboxId::new(from, c.device), c.envelope)),
            )
            .collect();
        // Nothing is written unless every device mailbox has room for its copy.
        let limits = self.limits;
        for (mb, envelope) in &copies {
            let len = envelope.len() as u64;
            let u = self.usage(mb)?;
            let (mine, my_bytes) = u.by_sender.get(from).copied().unwrap_or_default();
            if u.items >= limits.mailbox_max_items
                || u.bytes.saturating_add(len) > limits.mailbox_max_bytes
                || mine >= limits.mailbox_max_items_per_sender
                || my_bytes.saturating_add(len) > limits.mailbox_max_bytes_per_sender
            {
                return Ok(AppendOutcome::MailboxFull);
            }
        }
        self.mark_contact(batch, from, to, now_ms)?;
        let n = copies.len();
        for (mb, envelope) in copies {
            let item = StoredItem {
                from: from.to_owned(),
                from_device,
                client_msg_id,
                server_ts_ms: now_ms,
                payload: Payload::Envelope(envelope),
            };
            let seq = self.push_item(batch, pending, mb.clone(), item)?;
            if expires_in_secs > 0 {
                let at = now_ms.saturating_add(u64::from(expires_in_secs) * 1000);
                batch.insert(keys::expiry(at, &keys::mailbox_item(&mb, seq)), Vec::new());
            }
        }
        batch.insert(dedup_key.clone(), now_ms.to_be_bytes());
        pending.dedup.insert(dedup_key, now_ms);
        Ok(AppendOutcome::Stored {
            server_ts_ms: now_ms,
            devices: n,
        })
    }

    /// Writes that `from` has messaged `to` (once: later sends find it in the cache or the
    /// engine). Presence and typing between users follow these marks.
    fn mark_contact(
        &mut self,
        batch: &mut WriteBatch,
        from: &str,
        to: &str,
        now_ms: u64,
    ) -> Result<(), StorageError> {
        // The common case, a known pair, allocates nothing.
        if from == to
            || self
                .contacts
                .get(from)
                .is_some_and(|known| known.contains(to))
        {
            return Ok(());
        }
        let key = keys::contact(from, to);
        if self.db.get(&key)?.is_none() {
            batch.insert(key, now_ms.to_be_bytes());
        }
        if self.contact_count >= CONTACT_CACHE_LIMIT {
            self.contacts.clear();
            self.contact_count = 0;
        }
        self.contacts
            .entry(from.to_owned())
            .or_default()
            .insert(to.to_owned());
        self.contact_count += 1;
        Ok(())
    }

    fn ack(
        &mut self,
        batch: &mut WriteBatch,
        pending: &mut Pending,
        mb: &MailboxId,
        up_to: ServerSeq,
        now_ms: u64,
    ) -> Result<AckOutcome, StorageError> {
        let floor = self.acked_floor.get(mb).copied().unwrap_or(0);
        if up_to.0 <= floor && floor > 0 {
            return Ok(AckOutcome::default());
        }
        let first = floor.saturating_add(1).min(up_to.0);
        // Counted before this batch deletes anything: a scan later in the batch would still
        // see the items deleted here (the engine changes only when the batch is applied).
        self.usage(mb)?;
        let mut out = AckOutcome::default();
        let mut receipts = Vec::new();
        let mut acked = Vec::new();
        if let Taken::Exact(items) = self.unacked.take_acked(mb, first, up_to.0) {
            for item in items {
                batch.remove_written_once(keys::mailbox_item(mb, ServerSeq(item.seq)));
                let sender = item.receipt_to.as_ref().map(|(s, _)| s.as_str());
                self.unuse(mb, item.bytes, sender);
                pending.deleted_logged += 1;
                out.deleted += 1;
                receipts.extend(item.receipt_to);
            }
        } else if up_to.0 - first < POINT_ACK_LIMIT {
            // A short span: point reads (bloom filters skip the tables that cannot hold the
            // key) cost far less than setting up a merged range scan over every table.
            for seq in first..=up_to.0 {
                let k = keys::mailbox_item(mb, ServerSeq(seq));
                if let Some(v) = self.db.get(&k)? {
                    acked.push((k, v));
                }
            }
        } else {
            let start = keys::mailbox_item(mb, ServerSeq(first));
            let end = keys::mailbox_item(mb, up_to);
            for kv in self.db.range(Bound::Included(start), Bound::Included(end)) {
                acked.push(kv?);
            }
        }
        for (k, v) in acked {
            if !pending.deleted.insert(k.clone()) {
                continue; // already acked earlier in this batch
            }
            batch.remove_written_once(k);
            out.deleted += 1;
            // A damaged item is still deleted, it just cannot produce a receipt.
            match decode_item(&v) {
                Ok(item) if matches!(item.payload, Payload::Envelope(_)) => {
                    self.unuse(mb, v.len() as u64, Some(&item.from));
                    if earns_receipt(mb, &item) {
                        receipts.push((item.from, item.client_msg_id))
                    }
                }
                Ok(_) => self.unuse(mb, v.len() as u64, None),
                Err(e) => {
                    self.unuse(mb, v.len() as u64, None);
                    tracing::warn!(mailbox = %mb, error = %e, "acked a damaged item")
                }
            }
        }
        match self.acked_floor.get_mut(mb) {
            Some(f) => *f = (*f).max(up_to.0),
            None => {
                self.acked_floor.insert(mb.clone(), up_to.0);
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
        batch: &mut WriteBatch,
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
            let ttl_ms = self.limits.invite_ttl.as_millis() as u64;
            let valid = pending.new_invites.contains(&token)
                || self
                    .db
                    .get(&keys::invite(&token))?
                    .and_then(|v| keys::be_u64(&v))
                    .is_some_and(|created| now_ms.saturating_sub(created) <= ttl_ms);
            if !valid || pending.used_invites.contains(&token) {
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
        batch.insert(keys::device(user, device), key);
        pending.users.insert(user.to_owned(), rec);
        pending
            .devices
            .entry(user.to_owned())
            .or_default()
            .push(device);
        Ok(RegisterOutcome::Created)
    }

    /// Drops the disappearing messages whose timer ran out (the index is ordered by time, so
    /// this reads only what is due). Bounded like a sweep step.
    fn expire(
        &mut self,
        batch: &mut WriteBatch,
        pending: &mut Pending,
        now_ms: u64,
        out: &mut SweepOutcome,
    ) -> Result<(), StorageError> {
        let mut expired = Vec::new();
        for kv in self.db.prefix(&[keys::EXPIRY]) {
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
        for k in expired {
            if let Some((_, item)) = keys::parse_expiry(&k) {
                // Gone already when it was delivered and acknowledged.
                if !pending.deleted.contains(item) && self.db.get(item)?.is_some() {
                    batch.remove(item.to_vec());
                    pending.deleted.insert(item.to_vec());
                    pending.usage_stale = true;
                    out.items += 1;
                }
            }
            batch.remove(k);
        }
        if pending.usage_stale {
            // Deleted outside the unacked log: acks look items up again.
            self.unacked.clear();
        }
        Ok(())
    }

    fn sweep(
        &mut self,
        batch: &mut WriteBatch,
        pending: &mut Pending,
        now_ms: u64,
    ) -> Result<SweepOutcome, StorageError> {
        let cutoff = now_ms.saturating_sub(self.retention_ms);
        let mut out = SweepOutcome::default();
        // Expired items leave the mailboxes without an ack: the log would name them. The
        // usage counts are dropped once the batch is applied (see `apply_batch`): dropped
        // now, an append later in this batch would count items this sweep deletes.
        self.unacked.clear();
        pending.usage_stale = true;
        // Mailbox items: seq order within a mailbox follows store time, so after the first
        // young item of a mailbox we jump to the next mailbox.
        let mut from: Bound<Vec<u8>> = Bound::Included(vec![keys::MAILBOX]);
        'mailboxes: loop {
            let mut iter = self.db.range(from.clone(), Bound::Unbounded);
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
                    if pending.deleted.insert(k.clone()) {
                        batch.remove_written_once(k);
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
        for kv in self.db.prefix(&[keys::DEDUP]) {
            let (k, v) = kv?;
            if keys::be_u64(&v).is_none_or(|ts| ts < cutoff) {
                batch.remove(k);
                out.dedup_keys += 1;
                if out.items + out.dedup_keys >= SWEEP_STEP_LIMIT {
                    out.more = true;
                    return Ok(out);
                }
            }
        }
        self.expire(batch, pending, now_ms, &mut out)?;
        if out.more {
            return Ok(out);
        }
        let link_cutoff = now_ms.saturating_sub(self.limits.link_code_ttl.as_millis() as u64);
        for kv in self.db.prefix(&[keys::LINK_CODE]) {
            let (k, v) = kv?;
            if device_registry::parse_link_code(&v).is_none_or(|(created, _)| created < link_cutoff)
            {
                batch.remove(k);
                out.invites += 1;
            }
            if out.items + out.dedup_keys + out.invites >= SWEEP_STEP_LIMIT {
                out.more = true;
                return Ok(out);
            }
        }
        let invite_cutoff = now_ms.saturating_sub(self.limits.invite_ttl.as_millis() as u64);
        for kv in self.db.prefix(&[keys::INVITE]) {
            let (k, v) = kv?;
            if keys::be_u64(&v).is_none_or(|created| created < invite_cutoff) {
                batch.remove(k);
                out.invites += 1;
                if out.items + out.dedup_keys + out.invites >= SWEEP_STEP_LIMIT {
                    out.more = true;
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! The committer over an in-memory engine whose `sync` the test holds back, to prove that
    //! no waiter and no listener hears of a write before the engine made it durable.

    use super::*;
    use crate::engine::{Kv, KvIter, Write};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// What the gated engine's next `sync` does.
    enum Gate {
        Pass,
        Fail,
    }

    /// Clones share everything: a clone is the same engine reopened.
    #[derive(Clone)]
    struct GatedEngine {
        map: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
        /// Tells the test that a sync started (after the batch was applied).
        entered: std::sync::mpsc::Sender<()>,
        /// The test's decision for each sync.
        gate: Arc<Mutex<std::sync::mpsc::Receiver<Gate>>>,
        /// What `background_work` says.
        background: Arc<std::sync::atomic::AtomicBool>,
        /// The name of the thread that applied each batch.
        appliers: Arc<Mutex<Vec<String>>>,
    }

    impl GatedEngine {
        fn scan(&self, keep: impl Fn(&[u8]) -> bool) -> KvIter<'_> {
            let map = self.map.lock().unwrap();
            let items: Vec<Kv> = map
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Box::new(items.into_iter().map(Ok))
        }
    }

    impl KvEngine for GatedEngine {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
            Ok(self.map.lock().unwrap().get(key).cloned())
        }
        fn range(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> KvIter<'_> {
            let range = (start, end);
            self.scan(|k| std::ops::RangeBounds::contains(&range, &k.to_vec()))
        }
        fn prefix(&self, prefix: &[u8]) -> KvIter<'_> {
            let prefix = prefix.to_vec();
            self.scan(move |k| k.starts_with(&prefix))
        }
        fn apply(&self, batch: WriteBatch) -> Result<(), StorageError> {
            let name = std::thread::current().name().unwrap_or("").to_string();
            self.appliers.lock().unwrap().push(name);
            let mut map = self.map.lock().unwrap();
            for (k, v) in batch.into_ops() {
                match v {
                    Write::Put(v) => map.insert(k, v),
                    Write::Remove | Write::RemoveWrittenOnce => map.remove(&k),
                };
            }
            Ok(())
        }
        fn sync(&self) -> Result<(), StorageError> {
            let _ = self.entered.send(());
            match self.gate.lock().unwrap().recv() {
                Ok(Gate::Pass) => Ok(()),
                Ok(Gate::Fail) | Err(_) => Err(StorageError::Db("fsync failed".into())),
            }
        }
        fn background_work(&self) -> bool {
            self.background.load(Ordering::SeqCst)
        }
        fn size_on_disk(&self) -> Result<u64, StorageError> {
            Ok(0)
        }
        fn compact(&self) -> Result<bool, StorageError> {
            Ok(false)
        }
        fn close(&self) -> Result<(), StorageError> {
            Ok(())
        }
    }

    type Events = Arc<Mutex<Vec<ServerSeq>>>;

    struct Harness {
        ops: Handle,
        entered: std::sync::mpsc::Receiver<()>,
        gate: std::sync::mpsc::Sender<Gate>,
        events: Events,
        /// The name of the thread that applied each appended item (the listener's thread).
        appliers: Arc<Mutex<Vec<String>>>,
        /// Makes the engine report background work (a flush) when set.
        background: Arc<std::sync::atomic::AtomicBool>,
        committer: std::thread::JoinHandle<()>,
        /// Times the committer reopened the engine.
        reopens: Arc<std::sync::atomic::AtomicUsize>,
    }

    fn harness() -> Harness {
        harness_with_delay(Duration::ZERO)
    }

    fn harness_with_delay(commit_delay: Duration) -> Harness {
        harness_with(commit_delay, false)
    }

    fn harness_with(commit_delay: Duration, deliver_before_fsync: bool) -> Harness {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (gate, gate_rx) = std::sync::mpsc::channel();
        let mut map = BTreeMap::new();
        map.insert(keys::device("bob", DeviceId(1)), vec![0; 32]);
        let background: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let appliers: Arc<Mutex<Vec<String>>> = Arc::default();
        let engine = GatedEngine {
            map: Arc::new(Mutex::new(map)),
            entered: entered_tx,
            gate: Arc::new(Mutex::new(gate_rx)),
            background: background.clone(),
            appliers: appliers.clone(),
        };
        let reopens: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (again, counter) = (engine.clone(), reopens.clone());
        let home = EngineHome {
            reopen: Box::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(Arc::new(again.clone()) as Arc<dyn KvEngine>)
            }),
            dir: std::env::temp_dir(),
            min_free_bytes: 0,
        };
        let events: Events = Arc::default();
        let ev = events.clone();
        let listener: CommitListener = Arc::new(move |_, seq, _| {
            ev.lock().unwrap().push(seq);
        });
        let (ops, committer) = spawn(
            Arc::new(EngineSlot::new(Arc::new(engine))),
            home,
            Limits {
                max_batch: 64,
                commit_delay,
                mailbox_max_items: 1000,
                mailbox_max_bytes: 1 << 20,
                mailbox_max_items_per_sender: 1000,
                mailbox_max_bytes_per_sender: 1 << 20,
                deliver_before_fsync,
                invite_ttl: Duration::from_secs(3600),
                link_code_ttl: Duration::from_secs(300),
            },
            Duration::from_secs(3600),
            Some(listener),
            Arc::default(),
            Arc::default(),
        )
        .unwrap();
        Harness {
            reopens,
            ops,
            entered,
            gate,
            events,
            appliers,
            background,
            committer,
        }
    }

    fn submit(h: &Harness, op: Op) -> oneshot::Receiver<Result<Reply, StorageError>> {
        let (reply, rx) = oneshot::channel();
        assert!(h.ops.submit(Request { op, reply }));
        rx
    }

    /// Message `n` from alice to bob.
    fn append_op(n: u8) -> Op {
        Op::Append {
            from: "alice".into(),
            from_device: DeviceId(1),
            client_msg_id: ClientMsgId([n; 16]),
            to: "bob".into(),
            envelopes: vec![DeviceEnvelope {
                device: DeviceId(1),
                envelope: vec![n],
            }],
            own: Vec::new(),
            expires_in_secs: 0,
            now_ms: 1,
        }
    }

    fn append(h: &Harness, n: u8) -> oneshot::Receiver<Result<Reply, StorageError>> {
        submit(h, append_op(n))
    }

    fn ack(h: &Harness, up_to: u64) -> oneshot::Receiver<Result<Reply, StorageError>> {
        submit(
            h,
            Op::Ack {
                mailbox: MailboxId::new("bob", DeviceId(1)),
                up_to: ServerSeq(up_to),
                now_ms: 2,
            },
        )
    }

    /// Appends message `n`, lets its sync pass and checks it was stored.
    fn append_synced(h: &Harness, n: u8) {
        let stored = append(h, n);
        h.entered.recv().unwrap();
        h.gate.send(Gate::Pass).unwrap();
        assert!(stored.blocking_recv().unwrap().is_ok());
    }

    fn shutdown(h: Harness) {
        let (reply, _rx) = oneshot::channel();
        assert!(h.ops.submit(Request {
            op: Op::Shutdown,
            reply
        }));
        h.entered.recv().unwrap();
        h.gate.send(Gate::Pass).unwrap();
        h.committer.join().unwrap();
    }

    #[test]
    fn delivering_before_the_fsync_tells_the_listener_at_once_and_the_waiter_after() {
        let h = harness_with(Duration::ZERO, true);
        let mut reply = append(&h, 1);
        h.entered.recv().unwrap();
        // The sync has started, not finished: live delivery already knows, the sender not.
        assert_eq!(*h.events.lock().unwrap(), vec![ServerSeq(1)]);
        assert!(matches!(
            reply.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        h.gate.send(Gate::Pass).unwrap();
        assert!(reply.blocking_recv().unwrap().is_ok());
        assert_eq!(h.events.lock().unwrap().len(), 1, "told once");
        shutdown(h);
    }

    #[test]
    fn the_listener_and_the_waiters_hear_only_after_the_sync() {
        let h = harness();
        let mut reply = append(&h, 1);
        // The batch is applied and the sync has started, but not finished: neither the
        // listener (live delivery) nor the writer (the sender's `Sent`) knows yet.
        h.entered.recv().unwrap();
        assert!(matches!(
            reply.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        assert!(h.events.lock().unwrap().is_empty());
        h.gate.send(Gate::Pass).unwrap();
        let r = reply.blocking_recv().unwrap().unwrap();
        assert!(matches!(
            r,
            Reply::Append(AppendOutcome::Stored { devices: 1, .. })
        ));
        assert_eq!(*h.events.lock().unwrap(), vec![ServerSeq(1)]);
        shutdown(h);
    }

    #[test]
    fn a_failed_sync_answers_every_waiter_and_reopens_the_engine() {
        // A long commit delay gathers the second and third writes into one fsync.
        let h = harness_with_delay(Duration::from_millis(300));
        let first = append(&h, 1);
        h.entered.recv().unwrap();
        h.gate.send(Gate::Pass).unwrap();
        assert!(first.blocking_recv().unwrap().is_ok());
        let (second, third) = (append(&h, 2), append(&h, 3));
        h.entered.recv().unwrap();
        h.gate.send(Gate::Fail).unwrap();
        for reply in [second, third] {
            let r = reply.blocking_recv().unwrap();
            assert!(
                matches!(r, Err(StorageError::Unavailable(_))),
                "every waiter of the failed fsync hears of it: {r:?}"
            );
        }
        // The listener never heard of what the failed fsync did not make durable.
        assert_eq!(*h.events.lock().unwrap(), vec![ServerSeq(1)]);
        // Until the engine is reopened, writes are refused at once (no sync is entered).
        let refused = append(&h, 4).blocking_recv().unwrap();
        assert!(matches!(refused, Err(StorageError::Unavailable(_))));
        assert_eq!(h.reopens.load(Ordering::SeqCst), 0);
        // About a second later the engine is reopened: its probe fsync comes to the gate.
        h.entered
            .recv_timeout(Duration::from_secs(5))
            .expect("the engine was never reopened");
        assert_eq!(h.reopens.load(Ordering::SeqCst), 1);
        h.gate.send(Gate::Pass).unwrap();
        let fifth = append(&h, 5);
        h.entered.recv().unwrap();
        h.gate.send(Gate::Pass).unwrap();
        assert!(fifth.blocking_recv().unwrap().is_ok());
        assert_eq!(h.events.lock().unwrap().len(), 2);
        shutdown(h);
    }

    #[test]
    fn a_backup_holds_the_writes_queued_before_it_and_none_after() {
        let h = harness();
        let dir = tempfile::tempdir().unwrap();
        let first = append(&h, 1);
        // While the first write's sync is held, queue a backup and a write behind it.
        h.entered.recv().unwrap();
        let (reply, backup) = oneshot::channel();
        let op = Op::Backup {
            dest: dir.path().join("copy"),
            engine: Engine::Fjall,
            tuning: crate::StoreConfig::default().tuning(),
        };
        assert!(h.ops.submit(Request { op, reply }));
        let second = append(&h, 2);
        h.gate.send(Gate::Pass).unwrap();
        assert!(first.blocking_recv().unwrap().is_ok());
        // The second write's sync starts only once the backup has answered.
        h.entered.recv().unwrap();
        let Reply::Backup(report) = backup.blocking_recv().unwrap().unwrap() else {
            panic!("not a backup reply")
        };
        assert_eq!(report.counts.mailbox_items, 1, "{report:?}");
        h.gate.send(Gate::Pass).unwrap();
        assert!(second.blocking_recv().unwrap().is_ok());
        shutdown(h);
    }

    #[test]
    fn an_ack_is_answered_before_its_sync() {
        let h = harness();
        append_synced(&h, 1);
        let mut acked = ack(&h, 1);
        // The ack's batch is applied and its sync is held: the ack already has its answer
        // (one item deleted, one receipt queued for alice's device… which has no device here).
        h.entered.recv().unwrap();
        let Ok(Ok(Reply::Ack(outcome))) = acked.try_recv() else {
            panic!("the ack waited for its sync")
        };
        assert_eq!(outcome.deleted, 1);
        h.gate.send(Gate::Pass).unwrap();
        shutdown(h);
    }

    #[test]
    fn a_commit_delay_folds_batches_into_one_sync_and_keeps_its_deadline() {
        let delay = Duration::from_millis(300);
        let h = harness_with_delay(delay);
        // After a quiet spell a write is fsync'd at once: the delay only spaces fsyncs.
        let started = Instant::now();
        append_synced(&h, 1);
        assert!(
            started.elapsed() < delay,
            "the first write waited for the delay"
        );
        // The next two writes (applied here, or queued for the committer when it still holds
        // its lock): neither the listener nor the senders hear of them before their fsync.
        let mut second = append(&h, 2);
        let mut third = append(&h, 3);
        assert_eq!(h.events.lock().unwrap().len(), 1);
        assert!(matches!(
            second.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        assert!(matches!(
            third.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        // With nothing more arriving, their sync still comes, one delay after the last one
        // began, and covers both.
        h.entered.recv().unwrap();
        // (The first sync began after `started`, so this one at least a delay after it.)
        assert!(started.elapsed() >= delay);
        h.gate.send(Gate::Pass).unwrap();
        assert!(second.blocking_recv().unwrap().is_ok());
        assert!(third.blocking_recv().unwrap().is_ok());
        assert!(
            h.entered.try_recv().is_err(),
            "a second sync ran for the third write"
        );
        assert_eq!(
            *h.events.lock().unwrap(),
            vec![ServerSeq(1), ServerSeq(2), ServerSeq(3)]
        );
        shutdown(h);
    }

    /// Waits (bounded) until the committer thread waits for work: a write that finds its
    /// lock held is queued, which is correct but not what the tests of the inline path look at.
    fn settle(h: &Harness) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(h.ops.parked.load(Ordering::Acquire) && h.ops.queue.is_empty()) {
            assert!(Instant::now() < deadline, "the committer never went idle");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_write_to_an_idle_committer_is_applied_on_the_callers_thread() {
        let h = harness();
        settle(&h);
        let mut stored = append(&h, 1);
        // Applied here, before `submit` returned.
        let me = std::thread::current().name().unwrap_or("").to_string();
        assert_eq!(*h.appliers.lock().unwrap(), vec![me]);
        // The answer still waits for the committer's fsync.
        h.entered.recv().unwrap();
        assert!(matches!(
            stored.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        h.gate.send(Gate::Pass).unwrap();
        assert!(stored.blocking_recv().unwrap().is_ok());
        shutdown(h);
    }

    #[test]
    fn writes_during_an_fsync_queue_and_keep_their_order() {
        let h = harness();
        let first = append(&h, 1);
        h.entered.recv().unwrap();
        // The fsync of the first write is running: the next writes are not applied here but
        // queued for the committer, which applies them in order once the fsync is done.
        let second = append(&h, 2);
        let third = append(&h, 3);
        assert_eq!(h.appliers.lock().unwrap().len(), 1);
        h.gate.send(Gate::Pass).unwrap();
        assert!(first.blocking_recv().unwrap().is_ok());
        assert_eq!(*h.events.lock().unwrap(), vec![ServerSeq(1)]);
        h.entered.recv().unwrap();
        // Both in one batch, applied by the committer thread.
        let appliers = h.appliers.lock().unwrap().clone();
        assert_eq!(appliers[1..], ["missive-committer"]);
        h.gate.send(Gate::Pass).unwrap();
        assert!(second.blocking_recv().unwrap().is_ok());
        assert!(third.blocking_recv().unwrap().is_ok());
        assert_eq!(
            *h.events.lock().unwrap(),
            vec![ServerSeq(1), ServerSeq(2), ServerSeq(3)]
        );
        shutdown(h);
    }

    #[test]
    fn after_shutdown_a_write_is_refused() {
        let h = harness();
        append_synced(&h, 1);
        let ops = h.ops.clone();
        let events_before = h.events.lock().unwrap().len();
        let events = h.events.clone();
        shutdown(h);
        assert!(!ops.is_alive());
        let (reply, rx) = oneshot::channel();
        assert!(!ops.submit(Request {
            op: append_op(9),
            reply
        }));
        assert!(rx.blocking_recv().is_err());
        assert_eq!(
            events.lock().unwrap().len(),
            events_before,
            "applied after shutdown"
        );
    }

    #[test]
    fn while_the_engine_flushes_writes_go_to_the_committer_thread() {
        let h = harness();
        h.background.store(true, Ordering::SeqCst);
        let stored = append(&h, 1);
        h.entered.recv().unwrap();
        assert_eq!(*h.appliers.lock().unwrap(), ["missive-committer"]);
        h.gate.send(Gate::Pass).unwrap();
        assert!(stored.blocking_recv().unwrap().is_ok());
        // Once the flush is over, writes are applied on the caller's thread again.
        h.background.store(false, Ordering::SeqCst);
        settle(&h);
        append_synced(&h, 2);
        let me = std::thread::current().name().unwrap_or("").to_string();
        assert_eq!(h.appliers.lock().unwrap()[1], me);
        shutdown(h);
    }
}
