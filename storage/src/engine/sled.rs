//! sled under the [`KvEngine`] interface: one tree, batches applied with `apply_batch`, and
//! durability as `flush` (which is only `sync_file_range`) followed by an `fsync` of the
//! database file. `flush_async` is never used: it deadlocks with concurrent callers
//! (sled #1308).

use super::{KvEngine, KvIter, Tuning, Write, WriteBatch};
use crate::StorageError;
use std::ops::Bound;
use std::path::Path;

/// sled's errors as ours (a private function, not a `From` impl, so that no sled type shows in
/// this crate's public API).
fn db_err(e: sled::Error) -> StorageError {
    StorageError::Db(e.to_string())
}

/// A sled database in its own directory.
pub(crate) struct SledEngine {
    db: sled::Db,
    /// The database file, fsync'd after each flush.
    db_file: std::fs::File,
}

impl SledEngine {
    pub(crate) fn open(path: &Path, tuning: Tuning) -> Result<Self, StorageError> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(tuning.cache_bytes)
            // We flush (and fsync) ourselves once per group commit; sled's timer flush would
            // only add contention.
            .flush_every_ms(None);
        // sled's file lock outlives a closed Db by a moment (its I/O threads drop their
        // handles asynchronously), so reopening in the same process right after a shutdown can
        // find it still held. Retry briefly; a lock held by another process stays an error.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                // sled reports the flock failure as ErrorKind::Other with this text.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(db_err(e)),
            }
        };
        let db_file = std::fs::File::open(path.join("db"))?;
        Ok(Self { db, db_file })
    }
}

fn iter(it: sled::Iter) -> KvIter<'static> {
    Box::new(it.map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(db_err)))
}

impl KvEngine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get(key).map_err(db_err)?.map(|v| v.to_vec()))
    }

    fn range(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> KvIter<'_> {
        iter(self.db.range::<Vec<u8>, _>((start, end)))
    }

    fn prefix(&self, prefix: &[u8]) -> KvIter<'_> {
        iter(self.db.scan_prefix(prefix))
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.into_ops() {
            match v {
                Write::Put(v) => b.insert(k, v),
                Write::Remove | Write::RemoveWrittenOnce => b.remove(k),
            }
        }
        self.db.apply_batch(b).map_err(db_err)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.db.flush().map_err(db_err)?;
        // sled's flush is sync_file_range only; fsync makes the batch survive power loss.
        self.db_file.sync_all()?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.db.size_on_disk().map_err(db_err)
    }

    fn compact(&self) -> Result<bool, StorageError> {
        // sled 0.34 has no compaction call: its log-structured pages are only rewritten by its
        // own background segment cleaner.
        Ok(false)
    }

    fn close(&self) -> Result<(), StorageError> {
        self.sync()
    }
}
