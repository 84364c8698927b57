//! fjall under the [`KvEngine`] interface: one database with one keyspace (`missive`) holding
//! every key space of `keys.rs`. A group commit is one fjall write batch written to the
//! journal, then one `fdatasync` of the journal (`PersistMode::SyncData`) before any waiter is
//! answered.
//!
//! Memtables: the keyspace is created with the configured `memtable_bytes`, and fjall seals a
//! full memtable in a background worker (sealing on the committer thread paused commits for
//! 50–80 ms each time). fjall keeps the size it was created with and never reads the option
//! again, so for a store created with a larger size than configured now, `apply` seals the
//! memtable itself once it passes 1.5 times the configured size.
//!
//! Reopen: fjall replays its journal on open. With nothing flushed, that is every write since
//! the last memtable flush (the 2.2 s reopen of the first experiment with 1M envelopes).
//! [`KvEngine::close`] therefore seals the memtable and waits for fjall to flush it to a
//! table, so a clean reopen inserts nothing; fjall still reads the active journal (it starts a
//! new one only past 64 MB), skipping what is already in tables, which bounds a clean reopen to
//! well under a second. After a crash, about one memtable (`memtable_bytes`) of writes is
//! replayed.
//!
//! Compaction ([`KvEngine::compact`]): fjall compacts in the background as tables pile up,
//! but deleted entries (acked envelopes) linger as tombstones until their table is compacted
//! into the last level. An admin compaction flushes each keyspace's memtable and runs a major
//! compaction (`Keyspace::major_compact`, exported but hidden from fjall's docs like
//! `rotate_memtable`: another reason fjall is held to 3.1.x), while writes go on.

use super::{KvEngine, KvIter, Tuning, WriteBatch};
use crate::StorageError;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::ops::Bound;
use std::path::Path;
use std::time::{Duration, Instant};

/// The one keyspace.
const KEYSPACE: &str = "missive";

/// Longest wait for a memtable flush (on close, and before a compaction) before giving up
/// (the journal still holds everything, so giving up costs only a slower next open, or
/// tombstones left for a later compaction).
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// fjall's errors as ours (a private function, not a `From` impl, so that no fjall type shows
/// in this crate's public API).
fn db_err(e: fjall::Error) -> StorageError {
    StorageError::Db(e.to_string())
}

/// A fjall database in its own directory.
pub(crate) struct FjallEngine {
    db: Database,
    items: Keyspace,
    memtable_bytes: u64,
}

impl FjallEngine {
    pub(crate) fn open(path: &Path, tuning: Tuning) -> Result<Self, StorageError> {
        let db = Database::builder(path)
            .cache_size(tuning.cache_bytes)
            // Batches stay in the journal's buffer until `sync` (flush + fdatasync), instead
            // of one `write` per batch: at a sparse load that was one syscall per operation.
            // Nothing is answered as durable before `sync`, so a crash loses only what no
            // waiter was told about, as before.
            .manual_journal_persist(true)
            .open()
            .map_err(db_err)?;
        let items = db
            .keyspace(KEYSPACE, || {
                KeyspaceCreateOptions::default().max_memtable_size(tuning.memtable_bytes)
            })
            .map_err(db_err)?;
        Ok(Self {
            db,
            items,
            memtable_bytes: tuning.memtable_bytes,
        })
    }

    /// The backstop for stores whose keyspace was created with a larger memtable than is
    /// configured now (fjall's own limit, checked on every batch, acts first otherwise).
    fn enforce_memtable_limit(&self) -> Result<(), StorageError> {
        let limit = self.memtable_bytes.saturating_add(self.memtable_bytes / 2);
        // With no sealed memtable waiting, the write buffer is the active memtable.
        if self.items.sealed_memtable_count() == 0 && self.db.write_buffer_size() >= limit {
            self.items.rotate_memtable().map_err(db_err)?;
        }
        Ok(())
    }
}

fn iter(it: fjall::Iter) -> KvIter<'static> {
    Box::new(it.map(|guard| {
        guard
            .into_inner()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .map_err(db_err)
    }))
}

impl KvEngine for FjallEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.items.get(key).map_err(db_err)?.map(|v| v.to_vec()))
    }

    fn range(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> KvIter<'_> {
        iter(self.items.range::<Vec<u8>, _>((start, end)))
    }

    fn prefix(&self, prefix: &[u8]) -> KvIter<'_> {
        iter(self.items.prefix(prefix))
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut b = self.db.batch();
        for (k, v) in batch.into_ops() {
            match v {
                Some(v) => b.insert(&self.items, k, v),
                None => b.remove(&self.items, k),
            }
        }
        b.commit().map_err(db_err)?;
        self.enforce_memtable_limit()
    }

    fn background_work(&self) -> bool {
        // Both are atomic counters. The write buffer holds the active memtable (below the
        // limit) plus the sealed ones until their flush is installed: at or past the limit, a
        // flush is pending or running.
        self.db.write_buffer_size() >= self.memtable_bytes || self.db.active_compactions() > 0
    }

    fn sync(&self) -> Result<(), StorageError> {
        // The journal only grows by appends; fdatasync also persists the new file length.
        self.db.persist(PersistMode::SyncData).map_err(db_err)
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.db.disk_space().map_err(db_err)
    }

    fn compact(&self) -> Result<bool, StorageError> {
        // Every keyspace (the store has one today); each one's memtable first, because the
        // tombstones still there are out of a major compaction's reach.
        for name in self.db.list_keyspace_names() {
            let keyspace = self
                .db
                .keyspace(&name, KeyspaceCreateOptions::default)
                .map_err(db_err)?;
            flush_memtable(&keyspace)?;
            keyspace.major_compact().map_err(db_err)?;
        }
        Ok(true)
    }

    fn close(&self) -> Result<(), StorageError> {
        self.db.persist(PersistMode::SyncAll).map_err(db_err)?;
        // Flush the memtable to a table so that the next open replays no journal.
        flush_memtable(&self.items)
    }
}

/// Seals `keyspace`'s memtable and waits (bounded) until fjall has written it to a table.
/// fjall has no completion event for this (its own `rotate_memtable_and_wait` polls too,
/// without a bound), so poll with a deadline; giving up costs only a slower next open.
fn flush_memtable(keyspace: &Keyspace) -> Result<(), StorageError> {
    keyspace.rotate_memtable().map_err(db_err)?;
    let deadline = Instant::now() + CLOSE_FLUSH_TIMEOUT;
    while keyspace.sealed_memtable_count() > 0 {
        if Instant::now() >= deadline {
            tracing::warn!(
                "fjall memtable flush did not finish in time; next open replays the journal"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
