//! What a write is, seen from the committer: a value that implements [`Write`] and decides,
//! over a [`Tx`], what one operation puts and removes. The committer (`group_commit.rs`) only
//! batches these, applies the batch, fsyncs and answers; each concern (mailboxes, accounts,
//! the key directory, devices, groups) owns its writes in its own module. A new kind of write
//! is a struct and an `impl Write` beside the records it touches, plus the `Store` method that
//! submits it: the committer does not change.
//!
//! A [`Tx`] reads through the batch being built: a key put earlier in the batch is seen with its
//! new value, a key removed earlier is gone (see [`Reads`]). The committer's caches of what is
//! on disk (seqs, usage, devices) live in [`Memory`], which it forgets after a failure.

use crate::engine::{KvEngine, KvIter, WriteBatch};
use crate::group_commit::Limits;
use crate::unacked::UnackedLog;
use crate::{MailboxId, StorageError};
use missive_proto::DeviceId;
use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use tokio::sync::oneshot;

/// How the committer treats a kind of write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Class {
    /// The write adds data, and is refused below the free-space watermark. Deletions and
    /// small updates go on: they free space or cost a few bytes.
    pub(crate) adds_data: bool,
    /// The answer may go out before the batch is fsync'd (only when a crash undoing the
    /// write harms nobody, e.g. an ack: the items are delivered again).
    pub(crate) answer_before_sync: bool,
    /// The write may be applied on the submitting thread when the committer is idle (small,
    /// frequent writes); large ones always go through the committer thread.
    pub(crate) inline: bool,
}

impl Class {
    /// A small write that adds data: the common case.
    pub(crate) const ADDS: Self = Self {
        adds_data: true,
        answer_before_sync: false,
        inline: true,
    };
    /// A small write that adds nothing (updates, deletions).
    pub(crate) const UPDATE: Self = Self {
        adds_data: false,
        answer_before_sync: false,
        inline: true,
    };
    /// A bounded but possibly large step (sweeps): never on a caller's thread.
    pub(crate) const MAINTENANCE: Self = Self {
        adds_data: false,
        answer_before_sync: false,
        inline: false,
    };
}

/// One kind of write: what it puts and removes, decided over the batch being built.
pub(crate) trait Write: Send + 'static {
    /// What the caller gets back once the write is durable.
    type Output: Send + 'static;
    /// How the committer treats it.
    fn class(&self) -> Class;
    /// Adds this write to `tx`. An `Err` answers the caller with it; the rest of the batch
    /// goes on, so a write must not leave half of itself in `tx` when it fails (check first,
    /// then write).
    fn apply(self, tx: &mut Tx<'_>) -> Result<Self::Output, StorageError>;
}

/// A write and its waiter, with the type erased so that the committer can queue any kind.
pub(crate) trait Job: Send {
    /// The write's class.
    fn class(&self) -> Class;
    /// Applies the write to `tx`, keeping its result for [`Job::answer`].
    fn apply(&mut self, tx: &mut Tx<'_>);
    /// Answers the waiter: the kept result, or `failure` when the batch did not last.
    fn answer(self: Box<Self>, failure: Option<StorageError>);
}

/// A [`Write`] with its reply channel.
pub(crate) struct Typed<W: Write> {
    write: Option<W>,
    result: Option<Result<W::Output, StorageError>>,
    reply: oneshot::Sender<Result<W::Output, StorageError>>,
}

impl<W: Write> Typed<W> {
    /// Boxes `write` with the channel its result goes to.
    pub(crate) fn boxed(
        write: W,
        reply: oneshot::Sender<Result<W::Output, StorageError>>,
    ) -> Box<dyn Job> {
        Box::new(Self {
            write: Some(write),
            result: None,
            reply,
        })
    }
}

impl<W: Write> Job for Typed<W> {
    fn class(&self) -> Class {
        self.write.as_ref().map_or(Class::UPDATE, W::class)
    }

    fn apply(&mut self, tx: &mut Tx<'_>) {
        if let Some(w) = self.write.take() {
            self.result = Some(w.apply(tx));
        }
    }

    fn answer(self: Box<Self>, failure: Option<StorageError>) {
        let r = match (failure, self.result) {
            (Some(e), _) => Err(e),
            (None, Some(r)) => r,
            (None, None) => Err(StorageError::Db("a write was answered unapplied".into())),
        };
        let _ = self.reply.send(r);
    }
}

/// Reads of the store: the committed engine, or a [`Tx`] that also sees its own batch.
pub(crate) trait Reads {
    /// The value of `key`.
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Every entry whose key starts with `prefix`, in key order (in a [`Tx`]: without the
    /// entries removed earlier in the batch; entries put in the batch are not listed).
    fn scan(&self, prefix: &[u8]) -> KvIter<'_>;
}

impl Reads for dyn KvEngine + '_ {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.get(key)
    }
    fn scan(&self, prefix: &[u8]) -> KvIter<'_> {
        self.prefix(prefix)
    }
}

/// What the committer remembers of the engine between batches, so that frequent writes need
/// no reads. Forgotten (see [`Memory::forget`]) when a write may or may not have landed.
pub(crate) struct Memory {
    /// Items and record bytes per device mailbox, loaded by a scan on first use.
    pub(crate) usage: HashMap<MailboxId, crate::mailbox::Usage>,
    /// Per sender, the recipients it is known to have a contact mark for.
    pub(crate) contacts: HashMap<String, HashSet<String>>,
    /// Marks held in `contacts`, for its bound.
    pub(crate) contact_count: usize,
    /// Next seq and reserved mark per mailbox, loaded lazily from the `s` counters.
    pub(crate) seqs: HashMap<MailboxId, crate::mailbox::SeqState>,
    /// Per mailbox, a seq at or below which every item is known deleted (by an earlier ack in
    /// this process). Acks scan from just above it: in an LSM engine the deleted items stay
    /// as tombstones until compaction, and scanning from seq 0 walked all of them on every
    /// ack. Seqs only grow, so nothing can appear below it later.
    pub(crate) acked_floor: HashMap<MailboxId, u64>,
    /// Devices per user as committed, loaded lazily, so that an append needs no prefix scan.
    pub(crate) devices: HashMap<String, Vec<DeviceId>>,
    /// Items stored by this process and not acknowledged yet: acks of them need no reads.
    pub(crate) unacked: UnackedLog,
    /// The engine was reopened after a failure in this process (seqs then skip ahead).
    pub(crate) reopened: bool,
    /// Caches of other concerns, one per type (see [`Memory::cache`]).
    caches: HashMap<TypeId, Box<dyn Any + Send>>,
}

impl Memory {
    /// An empty memory whose unacked log holds at most `unacked_limit` items.
    pub(crate) fn new(unacked_limit: usize) -> Self {
        Self {
            usage: HashMap::new(),
            contacts: HashMap::new(),
            contact_count: 0,
            seqs: HashMap::new(),
            acked_floor: HashMap::new(),
            devices: HashMap::new(),
            unacked: UnackedLog::new(unacked_limit),
            reopened: false,
            caches: HashMap::new(),
        }
    }

    /// The cache of type `T` (made empty on first use): a module keeps what it remembers of
    /// its records between batches here, and it is forgotten with the rest after a failure.
    pub(crate) fn cache<T: Default + Send + 'static>(&mut self) -> &mut T {
        self.caches
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()))
            .downcast_mut::<T>()
            .expect("a cache is stored under its own type id")
    }

    /// Drops what is remembered of the engine's state (after a write that may or may not
    /// have landed: seq counters may have advanced in memory for writes that never did).
    pub(crate) fn forget(&mut self) {
        self.usage.clear();
        self.contacts.clear();
        self.contact_count = 0;
        self.seqs.clear();
        self.acked_floor.clear();
        self.unacked.clear();
        self.devices.clear();
        self.caches.clear();
    }
}

/// What the writes of the current batch did beyond their puts and removes: items for the
/// listener, device changes for the committer's caches.
#[derive(Default)]
pub(crate) struct Pending {
    /// Every key put (`Some`) or removed (`None`) in this batch, latest value.
    pub(crate) written: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Devices added by this batch, per user.
    pub(crate) devices: HashMap<String, Vec<DeviceId>>,
    /// Devices removed by this batch.
    pub(crate) removed_devices: HashSet<(String, DeviceId)>,
    /// Items deleted by acks answered from the unacked log (not in `written`).
    pub(crate) deleted_logged: u64,
    /// Items deleted in all.
    pub(crate) deleted: u64,
    /// Items appended, for the listener (after the fsync).
    pub(crate) events: Vec<crate::store::Appended>,
    /// The new reserved mark of every mailbox this batch raised one for.
    pub(crate) seq_marks: HashMap<MailboxId, u64>,
    /// Items were deleted outside the usage bookkeeping: usage is counted afresh after the
    /// batch.
    pub(crate) usage_stale: bool,
}

/// One batch being built: reads see the batch, writes go into it. Given to [`Write::apply`].
pub(crate) struct Tx<'a> {
    /// The committed engine (reads through it do not see this batch).
    pub(crate) db: &'a dyn KvEngine,
    batch: &'a mut WriteBatch,
    /// What this batch has done so far.
    pub(crate) pending: &'a mut Pending,
    /// The committer's caches.
    pub(crate) mem: &'a mut Memory,
    /// The store's limits.
    pub(crate) limits: &'a Limits,
}

impl<'a> Tx<'a> {
    /// A transaction over `db` writing into `batch`.
    pub(crate) fn new(
        db: &'a dyn KvEngine,
        batch: &'a mut WriteBatch,
        pending: &'a mut Pending,
        mem: &'a mut Memory,
        limits: &'a Limits,
    ) -> Self {
        Self {
            db,
            batch,
            pending,
            mem,
            limits,
        }
    }

    /// Sets `key` to `value`.
    pub(crate) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending
            .written
            .insert(key.clone(), Some(value.clone()));
        self.batch.insert(key, value);
    }

    /// Sets `key` to `value` without remembering it in the batch's reads: only for keys no
    /// later write in the batch reads back (mailbox items, whose readers scan the committed
    /// engine and the unacked log).
    pub(crate) fn put_unseen(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.insert(key, value);
    }

    /// Removes `key` (a no-op when absent).
    pub(crate) fn remove(&mut self, key: Vec<u8>) {
        self.pending.written.insert(key.clone(), None);
        self.batch.remove(key);
    }

    /// Removes `key`, put exactly once and never overwritten (lets an LSM engine drop the
    /// tombstone early: see `engine::Write::RemoveWrittenOnce`).
    pub(crate) fn remove_written_once(&mut self, key: Vec<u8>) {
        self.pending.written.insert(key.clone(), None);
        self.batch.remove_written_once(key);
    }

    /// Removes `key` without remembering it in the batch's reads: only for keys no later
    /// write in the batch can look at (acked mailbox items named by the unacked log).
    pub(crate) fn remove_unseen(&mut self, key: Vec<u8>) {
        self.batch.remove_written_once(key);
    }

    /// Puts and removes in the batch so far.
    pub(crate) fn writes(&self) -> usize {
        self.batch.len()
    }

    /// Whether `key` was removed earlier in this batch.
    pub(crate) fn removed(&self, key: &[u8]) -> bool {
        matches!(self.pending.written.get(key), Some(None))
    }
}

impl Reads for Tx<'_> {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.pending.written.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.db.get(key),
        }
    }

    fn scan(&self, prefix: &[u8]) -> KvIter<'_> {
        let written = &self.pending.written;
        Box::new(self.db.prefix(prefix).filter(move |kv| {
            kv.as_ref()
                .map_or(true, |(k, _)| written.get(k) != Some(&None))
        }))
    }
}
