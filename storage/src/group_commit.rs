//! The committer: the one place that writes. Operations are applied in the order they were
//! submitted, each batch as one engine batch; the [`CommitListener`] hears of appended items
//! at once (so live recipients get them while the batch is being made durable); the
//! committer thread makes applied batches durable (flush + fsync, see [`KvEngine::sync`]), at
//! most one fsync per `commit_delay`, and only then answers the waiters that need durability.
//! A batch is applied on the submitting thread when the committer is idle, or by the
//! committer thread from its queue when it is busy (see [`Handle`]).
//!
//! What each write puts and removes is not decided here: a write is a value implementing
//! `write::Write`, applied over a `write::Tx`, and lives beside its records (`mailbox.rs`,
//! `accounts.rs`, `key_directory.rs`, `device_registry.rs`, ...). The committer only batches,
//! applies, fsyncs and answers.
//!
//! A backup ([`Request::Backup`]) is not part of a batch: the committer commits what was queued
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
use crate::engine::{self, Engine, EngineSlot, KvEngine, Tuning, WriteBatch};
use crate::health::{FreeSpaceWatch, HealthCell, StorageHealth};
use crate::mailbox::USAGE_CACHE_LIMIT;
use crate::store::{Appended, CommitListener, StoreStats};
use crate::write::{Job, Memory, Pending, Tx};
use crate::{keys, StorageError};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How often a failed engine is tried again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// What the committer is asked to do.
pub(crate) enum Request {
    /// A write, applied in a batch with the others waiting (see `write.rs`).
    Write(Box<dyn Job>),
    /// A consistent copy of the whole store into the store directory `dest`; runs alone,
    /// between two commits.
    Backup {
        dest: PathBuf,
        engine: Engine,
        tuning: Tuning,
        reply: oneshot::Sender<Result<BackupReport, StorageError>>,
    },
    /// Commit what is queued, close the engine, stop; answered once the engine is closed.
    Shutdown(oneshot::Sender<()>),
}

impl Request {
    /// Answers the waiter with `e` without doing anything.
    fn refuse(self, e: StorageError) {
        match self {
            Self::Write(job) => job.answer(Some(e)),
            Self::Backup { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Self::Shutdown(reply) => drop(reply),
        }
    }
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
    /// Undelivered items and dedup keys older than this are swept.
    pub(crate) retention: Duration,
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
        mem: Memory::new(UNACKED_LOG_LIMIT),
        listener,
        stats,
        limits,
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
        if !applies_inline(&req) || !self.is_alive() {
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
        let Request::Write(job) = req else {
            return Some(req);
        };
        core.apply_batch(vec![job]);
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
fn applies_inline(req: &Request) -> bool {
    matches!(req, Request::Write(job) if job.class().inline)
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
    let mut shutdown_reply = None;
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
            match req {
                Request::Backup {
                    dest,
                    engine,
                    tuning,
                    reply,
                } => {
                    // The writes queued before the backup are in it, those after it are
                    // not: commit the first, and hold the rest until the copy is verified
                    // (the lock is held throughout, so nothing is applied on the side).
                    if !writes.is_empty() {
                        c.apply_batch(std::mem::take(&mut writes));
                    }
                    c.sync();
                    let r = crate::backup::backup(c.db.as_ref(), engine, tuning, &dest);
                    let _ = reply.send(r);
                }
                Request::Shutdown(reply) => {
                    shutting_down = true;
                    shutdown_reply = Some(reply);
                    break;
                }
                Request::Write(job) => writes.push(job),
            }
        }
        if !writes.is_empty() {
            c.apply_batch(writes);
        }
        if c.next_check().is_some_and(|at| Instant::now() >= at) {
            c.try_reopen();
        }
        if shutting_down {
            // The last fsync runs even with nothing applied since the one before: what a
            // caller's thread applied is then surely on disk before the engine closes.
            c.unsynced.since.get_or_insert_with(Instant::now);
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
            r.refuse(StorageError::Closed);
        }
    }
    if let Err(e) = c.db.close() {
        tracing::error!(error = %e, "closing the storage engine failed");
    }
    // Later writers must not apply anything on the side: the engine is closed. The queue's
    // receiver goes with this thread, which `Handle::is_alive` sees; the `syncing` mark keeps
    // a writer that already checked it off the engine.
    c.syncing = true;
    drop(c);
    if let Some(reply) = shutdown_reply {
        let _ = reply.send(());
    }
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

/// Puts and removes after which an engine batch is closed (between two writes, never inside
/// one): bounds the work of one engine batch when group messages fan out.
const MAX_BATCH_WRITES: usize = 16_384;

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
    /// What the committer remembers of the engine between batches (seqs, usage, devices).
    mem: Memory,
    listener: Option<CommitListener>,
    stats: Arc<StoreStats>,
    limits: Limits,
    /// Applied writes not yet fsync'd, and the answers waiting for that fsync.
    unsynced: Unsynced,
    /// When the last fsync began.
    last_sync: Option<Instant>,
    /// An fsync is running (outside the lock): writers queue instead of applying.
    syncing: bool,
}

/// What the next fsync makes durable.
#[derive(Default)]
struct Unsynced {
    /// When the oldest applied-but-unsynced batch was applied; `None` when all is durable.
    since: Option<Instant>,
    /// Operations applied since the last fsync (the acks answered early among them).
    ops: u64,
    /// Writes whose answers promise durability, answered after the fsync.
    answers: Vec<Box<dyn Job>>,
    /// Items for the listener, told after the fsync (never about writes that did not last).
    events: Vec<Appended>,
}

/// One fsync in progress: what it covers and when it began.
struct SyncJob {
    unsynced: Unsynced,
    started: Instant,
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

    /// Builds one batch from `jobs`, applies it, and tells the listener about its items (live
    /// recipients get them before the fsync). Answers that need no fsync go out now, the rest
    /// wait in `unsynced` for [`Committer::sync`].
    fn apply_batch(&mut self, jobs: Vec<Box<dyn Job>>) {
        let mut jobs = jobs.into_iter();
        while jobs.len() > 0 {
            self.apply_engine_batch(&mut jobs);
        }
    }

    /// Applies jobs from `jobs` as one engine batch, stopping after the job that takes the
    /// batch past [`MAX_BATCH_WRITES`] (a group message writes a reference per member device:
    /// others queued behind it go in the next engine batch, under the same fsync).
    fn apply_engine_batch(&mut self, jobs: &mut std::vec::IntoIter<Box<dyn Job>>) {
        if self.next_reopen.is_some() {
            for job in jobs {
                job.answer(Some(StorageError::Unavailable(
                    "storage failed and is being reopened".into(),
                )));
            }
            return;
        }
        let low_space = self.space_is_low();
        let mut batch = WriteBatch::default();
        let mut pending = Pending::default();
        let mut applied_jobs = Vec::with_capacity(jobs.len());
        let build_started = Instant::now();
        {
            let mut tx = Tx::new(
                self.db.as_ref(),
                &mut batch,
                &mut pending,
                &mut self.mem,
                &self.limits,
            );
            for mut job in jobs.by_ref() {
                let class = job.class();
                if low_space && class.adds_data {
                    job.answer(Some(StorageError::Unavailable(
                        "free disk space is below the watermark".into(),
                    )));
                    continue;
                }
                job.apply(&mut tx);
                applied_jobs.push((class.answer_before_sync, job));
                if tx.writes() >= MAX_BATCH_WRITES {
                    break;
                }
            }
        }
        for (mb, mark) in pending.seq_marks.drain() {
            batch.insert(keys::seq_counter(&mb), mark.to_be_bytes());
        }
        if applied_jobs.is_empty() {
            return;
        }
        let applied = self.db.apply(batch);
        self.stats
            .record_build(build_started.elapsed().as_micros() as u64);
        if let Err(e) = applied {
            for (_, job) in applied_jobs {
                job.answer(Some(StorageError::Unavailable(format!(
                    "the write failed: {e}"
                ))));
            }
            self.fail("applying a batch failed", &e);
            return;
        }
        self.stats
            .items_appended
            .fetch_add(pending.events.len() as u64, Ordering::Relaxed);
        self.stats
            .items_deleted
            .fetch_add(pending.deleted + pending.deleted_logged, Ordering::Relaxed);
        if pending.usage_stale || self.mem.usage.len() > USAGE_CACHE_LIMIT {
            self.mem.usage.clear();
        }
        // A removed device took its mailbox, keys and counters with it: what the committer
        // remembers of the engine is read again (removals are rare).
        if !pending.removed_devices.is_empty() {
            self.forget_caches();
        }
        // Devices added by this batch are in the engine now (a failed fsync clears the cache).
        for (user, added) in pending.devices.drain() {
            if let Some(devs) = self.mem.devices.get_mut(&user) {
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
                for appended in &pending.events {
                    listener(appended);
                }
            }
        } else {
            self.unsynced.events.append(&mut pending.events);
        }
        self.unsynced.since.get_or_insert_with(Instant::now);
        self.unsynced.ops += applied_jobs.len() as u64;
        for (early, job) in applied_jobs {
            if early {
                job.answer(None);
            } else {
                self.unsynced.answers.push(job);
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
                    for appended in &unsynced.events {
                        listener(appended);
                    }
                }
                for job in unsynced.answers {
                    job.answer(None);
                }
            }
            Err(e) => {
                for job in unsynced.answers {
                    job.answer(Some(StorageError::Unavailable(format!(
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
        for job in unsynced.answers {
            job.answer(Some(StorageError::Unavailable(format!(
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
                self.mem.reopened = true;
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
        self.mem.forget();
    }
}

#[cfg(test)]
mod tests {
    //! The committer over an in-memory engine whose `sync` the test holds back, to prove that
    //! no waiter and no listener hears of a write before the engine made it durable.

    use super::*;
    use crate::engine::{Kv, KvIter, Write};
    use crate::mailbox::{Ack, Append};
    use crate::store::{AckOutcome, AppendOutcome};
    use crate::write::Typed;
    use crate::MailboxId;
    use missive_proto::ServerSeq;
    use missive_proto::{ClientMsgId, DeviceEnvelope, DeviceId};
    use std::collections::BTreeMap;
    use std::ops::Bound;
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
        let listener: CommitListener = Arc::new(move |appended| {
            if let Appended::Mailbox { seq, .. } = appended {
                ev.lock().unwrap().push(*seq);
            }
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
                retention: Duration::from_secs(3600),
            },
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

    fn submit<W: crate::write::Write>(
        h: &Harness,
        write: W,
    ) -> oneshot::Receiver<Result<W::Output, StorageError>> {
        let (reply, rx) = oneshot::channel();
        assert!(h.ops.submit(Request::Write(Typed::boxed(write, reply))));
        rx
    }

    /// Message `n` from alice to bob.
    fn append_op(n: u8) -> Append {
        Append {
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

    fn append(h: &Harness, n: u8) -> oneshot::Receiver<Result<AppendOutcome, StorageError>> {
        submit(h, append_op(n))
    }

    fn ack(h: &Harness, up_to: u64) -> oneshot::Receiver<Result<AckOutcome, StorageError>> {
        submit(
            h,
            Ack {
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
        assert!(h.ops.submit(Request::Shutdown(reply)));
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
        assert!(matches!(r, AppendOutcome::Stored { devices: 1, .. }));
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
        assert!(h.ops.submit(Request::Backup {
            dest: dir.path().join("copy"),
            engine: Engine::Fjall,
            tuning: crate::StoreConfig::default().tuning(),
            reply,
        }));
        let second = append(&h, 2);
        h.gate.send(Gate::Pass).unwrap();
        assert!(first.blocking_recv().unwrap().is_ok());
        // The second write's sync starts only once the backup has answered.
        h.entered.recv().unwrap();
        let report = backup.blocking_recv().unwrap().unwrap();
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
        let Ok(Ok(outcome)) = acked.try_recv() else {
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
        assert!(!ops.submit(Request::Write(Typed::boxed(append_op(9), reply))));
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
