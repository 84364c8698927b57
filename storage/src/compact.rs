//! Giving back the disk space of deleted entries (acknowledged envelopes, expired dedup keys).
//!
//! - fjall: a major compaction of every keyspace (after flushing its memtable), in place. It
//!   works on an open store too ([`crate::Store::compact`]); writes go on meanwhile.
//! - sled: sled 0.34 has no compaction call, so a **stopped** store is rewritten into a fresh
//!   copy of itself: every entry is copied into `<dir>/sled.compacting/` and verified entry by
//!   entry (`copy.rs`), then the directories are swapped (`sled/` → `sled.precompact/`, the
//!   copy → `sled/`) and the old files are deleted. A crash during the swap is finished or
//!   undone by the next open (`layout::recover_compaction`); a crash before it leaves the store
//!   untouched. The old files are not kept: compaction is for getting the space back, and
//!   `admin backup` makes a copy first when one is wanted. An open sled store refuses with
//!   [`StorageError::CompactionNeedsStop`].

use crate::copy::{self, EntryCounts};
use crate::engine::{self, Engine, KvEngine};
use crate::{layout, StorageError, StoreConfig};
use std::path::Path;

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactReport {
    /// The store's engine.
    pub engine: Engine,
    /// Bytes the engine's files occupied before.
    pub bytes_before: u64,
    /// Bytes they occupy after.
    pub bytes_after: u64,
    /// When the store was rewritten into a fresh copy (sled): the entries of the copy, each
    /// verified against the original.
    pub rewritten: Option<EntryCounts>,
}

/// Compacts the stopped store in `dir`, which must be a `config.engine` store (the same
/// refusals as [`crate::Store::open`]). `config` supplies the engine's cache and memtable
/// sizes. Fails while the store is open elsewhere (the engines lock their files).
pub fn compact(dir: &Path, config: &StoreConfig) -> Result<CompactReport, StorageError> {
    let engine = config.engine;
    if layout::active_engine(dir)?.is_none()
        && !layout::has_entries(&layout::engine_dir(dir, engine))?
    {
        return Err(StorageError::Compaction(format!(
            "no {engine} store in {}",
            dir.display()
        )));
    }
    let live = layout::prepare_open(dir, engine)?;
    let db = engine::open(engine, &live, config.tuning())?;
    let bytes_before = db.size_on_disk()?;
    if db.compact()? {
        db.close()?;
        return Ok(CompactReport {
            engine,
            bytes_before,
            bytes_after: db.size_on_disk()?,
            rewritten: None,
        });
    }
    let fresh_dir = layout::compacting_dir(dir, engine);
    if fresh_dir.exists() {
        // Left by an interrupted compaction: never active, safe to discard.
        std::fs::remove_dir_all(&fresh_dir)?;
    }
    std::fs::create_dir_all(&fresh_dir)?;
    let (counts, bytes_after) = match rewrite(db.as_ref(), engine, config, &fresh_dir) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&fresh_dir);
            return Err(e);
        }
    };
    // Release the old database (and its file lock) before moving directories.
    drop(db);
    let old = layout::precompact_dir(dir, engine);
    std::fs::rename(&live, &old)?;
    std::fs::rename(&fresh_dir, &live)?;
    layout::sync_dir(dir)?;
    std::fs::remove_dir_all(&old)?;
    layout::sync_dir(dir)?;
    Ok(CompactReport {
        engine,
        bytes_before,
        bytes_after,
        rewritten: Some(counts),
    })
}

/// Copies `source` into a fresh database in `path`, verifies it, closes it; returns what it
/// holds and its size.
fn rewrite(
    source: &dyn KvEngine,
    engine: Engine,
    config: &StoreConfig,
    path: &Path,
) -> Result<(EntryCounts, u64), StorageError> {
    let fresh = engine::open(engine, path, config.tuning())?;
    let counts = copy::copy(source, fresh.as_ref())?;
    copy::verify(source, fresh.as_ref(), &counts, StorageError::Compaction)?;
    fresh.close()?;
    let bytes = fresh.size_on_disk()?;
    Ok((counts, bytes))
}
