//! The embedded database engines under the store, behind one small internal interface.
//!
//! The committer and the read paths only need an ordered byte-key map: point reads, ordered
//! range and prefix scans, an atomic batch of puts and removes, and "make everything applied so
//! far durable" (flush + fsync). [`KvEngine`] is exactly that; `sled.rs` and `fjall.rs` are its
//! two implementations. No engine type leaves this module.

mod fjall;
mod sled;
mod unavailable;

use crate::StorageError;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Which embedded engine holds a store. Both keep the same keys (see `keys.rs`) and give the
/// same guarantees; they differ in speed, disk and memory use (see bench/RESULTS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Engine {
    /// sled 0.34: a B+tree over a log-structured page store. The default.
    #[default]
    Sled,
    /// fjall 3.1: an LSM tree with a write-ahead journal.
    Fjall,
}

impl Engine {
    /// Every engine, for tools and tests that cover them all.
    pub const ALL: [Self; 2] = [Self::Sled, Self::Fjall];

    /// The engine's name as written in configuration (`"sled"`, `"fjall"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sled => "sled",
            Self::Fjall => "fjall",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown storage engine {s:?} (expected \"sled\" or \"fjall\")"))
    }
}

/// Engine tuning, taken from [`crate::StoreConfig`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    /// Page (sled) or block (fjall) cache, bytes.
    pub(crate) cache_bytes: u64,
    /// fjall: the active memtable is sealed and flushed to a table once it holds this much.
    pub(crate) memtable_bytes: u64,
}

/// A key and its value, copied out of the engine.
pub(crate) type Kv = (Vec<u8>, Vec<u8>);

/// An ordered scan. Errors are per item, as the engines report them.
pub(crate) type KvIter<'a> = Box<dyn Iterator<Item = Result<Kv, StorageError>> + 'a>;

/// One write of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    /// Set the key to this value.
    Put(Vec<u8>),
    /// Remove the key.
    Remove,
    /// Remove a key that was put exactly once (a mailbox item: its seq is never reused). An
    /// engine may then drop the removal together with the put as soon as the two meet (fjall:
    /// a weak tombstone, so a memtable flush writes neither the delivered item nor its
    /// tombstone); the others treat it as [`Write::Remove`].
    RemoveWrittenOnce,
}

/// Puts and removes that an engine applies atomically, in order.
#[derive(Debug, Default)]
pub(crate) struct WriteBatch {
    ops: Vec<(Vec<u8>, Write)>,
}

impl WriteBatch {
    /// Sets `key` to `value`.
    pub(crate) fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Write::Put(value.into())));
    }

    /// Removes `key` (a no-op when absent).
    pub(crate) fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Write::Remove));
    }

    /// Removes `key`, which was put exactly once and never overwritten: see
    /// [`Write::RemoveWrittenOnce`].
    pub(crate) fn remove_written_once(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Write::RemoveWrittenOnce));
    }

    /// Number of puts and removes.
    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there is nothing to write.
    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations, in the order they were added.
    pub(crate) fn into_ops(self) -> Vec<(Vec<u8>, Write)> {
        self.ops
    }
}

/// What the store needs from an embedded ordered key-value engine.
///
/// Only the committer calls `apply`, `sync` and `close`, one call at a time (its thread, or a
/// writer's thread holding its lock, see `group_commit::Handle`); reads may come from any
/// thread at any time.
pub(crate) trait KvEngine: Send + Sync {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Every entry with a key between `start` and `end`, in key order.
    fn range(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> KvIter<'_>;

    /// Every entry whose key starts with `prefix`, in key order.
    fn prefix(&self, prefix: &[u8]) -> KvIter<'_>;

    /// Applies `batch` atomically: after a crash either all of it or none of it is there.
    /// Not yet durable: see [`KvEngine::sync`].
    fn apply(&self, batch: WriteBatch) -> Result<(), StorageError>;

    /// Makes every applied batch durable (flushed and fsync'd) before returning.
    fn sync(&self) -> Result<(), StorageError>;

    /// True while background work of the engine may hold `apply` up for a long while (fjall:
    /// a memtable flush or a compaction, whose install blocks writes for up to ~150 ms on this
    /// project's VM). Writers then leave their operations to the committer thread rather than
    /// block a network thread. Must be cheap and never block.
    fn background_work(&self) -> bool {
        false
    }

    /// Bytes the engine's files occupy on disk.
    fn size_on_disk(&self) -> Result<u64, StorageError>;

    /// Reclaims the space of deleted and overwritten entries while the database stays open
    /// and in use, blocking until done. Returns `false`, doing nothing, when the engine cannot
    /// (sled: its only way is rewriting a stopped store into a fresh copy, see `compact.rs`).
    fn compact(&self) -> Result<bool, StorageError>;

    /// Clean shutdown: makes everything durable and leaves the files so that the next open
    /// is fast (fjall: flushes the memtable so the journal need not be replayed).
    fn close(&self) -> Result<(), StorageError>;
}

/// Opens (or creates) the `engine` database in `path`, which is that engine's own directory.
pub(crate) fn open(
    engine: Engine,
    path: &Path,
    tuning: Tuning,
) -> Result<Arc<dyn KvEngine>, StorageError> {
    Ok(match engine {
        Engine::Sled => Arc::new(sled::SledEngine::open(path, tuning)?),
        Engine::Fjall => Arc::new(fjall::FjallEngine::open(path, tuning)?),
    })
}

/// The engine a store currently runs on, shared by the committer (which replaces it after a
/// failure: see `group_commit.rs`) and the read paths (which take it per read).
pub(crate) struct EngineSlot {
    current: RwLock<Arc<dyn KvEngine>>,
}

impl EngineSlot {
    /// A slot holding `db`.
    pub(crate) fn new(db: Arc<dyn KvEngine>) -> Self {
        Self {
            current: RwLock::new(db),
        }
    }

    /// The engine to use for one read or one batch. Held only for that: a failed engine can
    /// be reopened only once every holder has let go of it.
    pub(crate) fn get(&self) -> Arc<dyn KvEngine> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Puts `db` in, returning the engine it replaces.
    pub(crate) fn replace(&self, db: Arc<dyn KvEngine>) -> Arc<dyn KvEngine> {
        std::mem::replace(
            &mut *self
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            db,
        )
    }
}

/// The stand-in engine of a store whose engine failed (see `unavailable.rs`).
pub(crate) fn unavailable() -> Arc<dyn KvEngine> {
    Arc::new(unavailable::UnavailableEngine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_names_round_trip() {
        for e in Engine::ALL {
            assert_eq!(e.name().parse::<Engine>(), Ok(e));
        }
        assert!("rocksdb".parse::<Engine>().unwrap_err().contains("rocksdb"));
    }
}
