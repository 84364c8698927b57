//! A consistent copy of a store that is in use, made by its committer.
//!
//! [`crate::Store::backup_to`] queues a backup job to the committer thread (`group_commit.rs`).
//! The committer first commits every write queued before the job, then copies every entry
//! through the engine interface into a fresh store of the same engine and verifies the copy
//! entry by entry (`copy.rs`), and only then goes on with the writes queued after it. So the
//! copy is the store exactly as of one point between two group commits, and **writes wait
//! for the whole copy and verification** (reads do not), a time that grows with the number of
//! entries in the store.
//!
//! The copy is built in `<dest>/<engine>.partial/`, renamed to `<dest>/<engine>/` once
//! verified, and the engine marker is written last (`layout.rs`), so a failed or interrupted
//! backup never looks like a complete store.

use crate::copy::{self, EntryCounts};
use crate::engine::{self, Engine, KvEngine, Tuning};
use crate::{layout, StorageError};
use std::path::{Path, PathBuf};

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The engine of the source and of the copy.
    pub engine: Engine,
    /// The entries copied and verified.
    pub counts: EntryCounts,
    /// The store directory of the copy (open it with [`crate::Store::open`]).
    pub dir: PathBuf,
}

/// Copies every entry of `source` into a fresh `engine` store in the store directory `dest`
/// (which must not exist or be empty), verifies it, and makes it openable. The caller keeps
/// writers away from `source` meanwhile (the committer runs it between two commits).
pub(crate) fn backup(
    source: &dyn KvEngine,
    engine: Engine,
    tuning: Tuning,
    dest: &Path,
) -> Result<BackupReport, StorageError> {
    if layout::has_entries(dest)? {
        return Err(StorageError::Backup(format!(
            "{} exists and is not empty",
            dest.display()
        )));
    }
    let partial = dest.join(format!("{}.partial", engine.name()));
    std::fs::create_dir_all(&partial)?;
    let result = copy_into(source, engine, tuning, &partial);
    let counts = match result {
        Ok(counts) => counts,
        Err(e) => {
            // Best effort: leave no half-made copy behind.
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, layout::engine_dir(dest, engine))?;
    layout::sync_dir(dest)?;
    layout::set_active_engine(dest, engine)?;
    Ok(BackupReport {
        engine,
        counts,
        dir: dest.to_path_buf(),
    })
}

fn copy_into(
    source: &dyn KvEngine,
    engine: Engine,
    tuning: Tuning,
    path: &Path,
) -> Result<EntryCounts, StorageError> {
    let dest = engine::open(engine, path, tuning)?;
    let counts = copy::copy(source, dest.as_ref())?;
    copy::verify(source, dest.as_ref(), &counts, StorageError::Backup)?;
    dest.close()?;
    Ok(counts)
}
