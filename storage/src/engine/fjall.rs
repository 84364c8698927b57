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

use super::{KvEngine, KvIter, Tuning, Write, WriteBatch};
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
            // One background worker for flushes and compactions. With more, fjall 3.1's
            // worker 0 hands every compaction request back to the queue (to stay free for
            // flushes) and picks it up again at once while another worker compacts: a busy
            // loop that was 6.8 % of the edge's CPU at saturation (perf: `worker_tick` and
            // flume `send`); one worker costs no spinning, and writes during its flushes and
            // compactions go to the committer thread (`background_work`).
            .worker_threads(1)
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
                Write::Put(v) => b.insert(&self.items, k, v),
                Write::Remove => b.remove(&self.items, k),
                // A weak tombstone: it and the put it removes vanish together when a flush
                // or compaction meets both (both in one memtable: neither reaches a table).
                Write::RemoveWrittenOnce => b.remove_weak(&self.items, k),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> FjallEngine {
        let tuning = Tuning {
            cache_bytes: 1 << 20,
            memtable_bytes: 1 << 20,
        };
        FjallEngine::open(dir, tuning).unwrap()
    }

    fn key(i: u32) -> Vec<u8> {
        format!("m item {i:08}").into_bytes()
    }

    /// Puts 500 items, then removes them all (`weak`: as written once), and flushes.
    fn put_remove_flush(dir: &Path, weak: bool) -> FjallEngine {
        let engine = open(dir);
        let mut batch = WriteBatch::default();
        for i in 0..500 {
            batch.insert(key(i), vec![7u8; 100]);
        }
        engine.apply(batch).unwrap();
        let mut batch = WriteBatch::default();
        for i in 0..500 {
            if weak {
                batch.remove_written_once(key(i));
            } else {
                batch.remove(key(i));
            }
        }
        engine.apply(batch).unwrap();
        advance_gc_watermark(&engine);
        engine.close().unwrap();
        engine
    }

    /// fjall drops a put and its weak tombstone only below its MVCC watermark, which it moves
    /// up when a memtable is sealed, but only after queueing that memtable's flush: a flush
    /// that starts first still uses the old one (and the pair then vanishes at the next
    /// compaction instead). It also moves it every 10,000 closed snapshots; closing that many
    /// makes it current now, so the flush below sees it.
    fn advance_gc_watermark(engine: &FjallEngine) {
        for _ in 0..10_000 {
            drop(engine.items.prefix(b"none"));
        }
    }

    #[test]
    fn items_removed_before_their_flush_never_reach_a_table() {
        let (weak_dir, strong_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let weak = put_remove_flush(weak_dir.path(), true);
        let strong = put_remove_flush(strong_dir.path(), false);
        // Plain removes leave 500 tombstones in the flushed table; weak ones vanish with the
        // items they remove.
        assert_eq!(strong.items.approximate_len(), 500);
        assert_eq!(weak.items.approximate_len(), 0);
        assert_eq!(weak.get(&key(3)).unwrap(), None);
        assert_eq!(weak.prefix(b"m").count(), 0);
    }

    #[test]
    fn a_weak_remove_hides_an_item_already_in_a_table_across_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path());
        let mut batch = WriteBatch::default();
        batch.insert(key(1), b"one".to_vec());
        batch.insert(key(2), b"two".to_vec());
        engine.apply(batch).unwrap();
        engine.close().unwrap(); // both items now in a table
        let mut batch = WriteBatch::default();
        batch.remove_written_once(key(1));
        engine.apply(batch).unwrap();
        engine.sync().unwrap();
        assert_eq!(engine.get(&key(1)).unwrap(), None);
        drop(engine);

        let engine = open(dir.path()); // the weak tombstone comes back from the journal
        assert_eq!(engine.get(&key(1)).unwrap(), None);
        assert!(engine.compact().unwrap());
        assert_eq!(engine.get(&key(1)).unwrap(), None);
        assert_eq!(engine.get(&key(2)).unwrap(), Some(b"two".to_vec()));
        let left: Vec<_> = engine.prefix(b"m").map(|kv| kv.unwrap().0).collect();
        assert_eq!(left, vec![key(2)]);
        // The item and its weak tombstone met in the compaction: only item 2 is left.
        assert_eq!(engine.items.approximate_len(), 1);
    }
}
