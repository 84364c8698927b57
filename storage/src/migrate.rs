//! Offline migration of a stopped store from one engine to the other.
//!
//! Both engines hold the same keys (`keys.rs`), so a migration is a copy of every entry in key
//! order — users, device keys, invites, mailbox items with their seqs, seq counters, dedup
//! keys — into a fresh database of the other engine in `<dir>/<to>.partial/`, followed by a
//! second pass that compares the two databases entry by entry. Only then is the copy renamed
//! to `<dir>/<to>/` and the engine marker switched (`layout.rs`). A crash at any point leaves
//! the source store active and untouched; the source stays behind as a backup.

use crate::copy::{self, EntryCounts};
use crate::engine::{self, Engine};
use crate::{layout, StorageError, StoreConfig};
use std::path::{Path, PathBuf};

/// What a migration copied, counted by kind of entry, and where things are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The engine copied from.
    pub from: Engine,
    /// The engine copied to; now the active one.
    pub to: Engine,
    /// What was copied (and verified), by kind of entry.
    pub counts: EntryCounts,
    /// The source engine's directory, left in place as a backup; no open will use it.
    pub backup: PathBuf,
    /// Where an older copy that sat in the destination's place was moved, if there was one.
    pub replaced: Option<PathBuf>,
}

impl MigrationReport {
    fn new(from: Engine, to: Engine, backup: PathBuf, counts: EntryCounts) -> Self {
        Self {
            from,
            to,
            counts,
            backup,
            replaced: None,
        }
    }
}

/// Copies the stopped store in `dir` from engine `from` to engine `to`, verifies the copy
/// entry by entry, and makes `to` the active engine. Afterwards the store opens only with
/// `to`. `config` supplies the engines' cache and memtable sizes.
///
/// Fails (leaving `from` active and untouched) when `from` is not the active engine, when the
/// store is in use (the engines lock their files), or when the copy does not verify.
pub fn migrate(
    dir: &Path,
    from: Engine,
    to: Engine,
    config: &StoreConfig,
) -> Result<MigrationReport, StorageError> {
    if from == to {
        return Err(StorageError::Migration(format!(
            "source and destination are both {from}"
        )));
    }
    check_source(dir, from)?;
    let source = engine::open(from, &layout::engine_dir(dir, from), config.tuning())?;

    let partial = dir.join(format!("{}.partial", to.name()));
    if partial.exists() {
        // Left by an interrupted migration: never active, safe to discard.
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(&partial)?;
    let dest = engine::open(to, &partial, config.tuning())?;

    let counts = copy::copy(source.as_ref(), dest.as_ref())?;
    copy::verify(
        source.as_ref(),
        dest.as_ref(),
        &counts,
        StorageError::Migration,
    )?;
    let mut report = MigrationReport::new(from, to, layout::engine_dir(dir, from), counts);
    dest.close()?;
    // Release both databases (and their file locks) before moving directories.
    drop(dest);
    drop(source);

    let target = layout::engine_dir(dir, to);
    if target.exists() {
        // An older copy (e.g. the backup of an earlier migration the other way): keep it,
        // out of the way.
        let aside = dir.join(format!("{}.replaced-{}", to.name(), copy::unix_secs()));
        std::fs::rename(&target, &aside)?;
        report.replaced = Some(aside);
    }
    std::fs::rename(&partial, &target)?;
    layout::sync_dir(dir)?;
    layout::set_active_engine(dir, to)?;
    Ok(report)
}

/// The source must be the store's active engine (or, without a marker, hold data).
fn check_source(dir: &Path, from: Engine) -> Result<(), StorageError> {
    layout::recover_compaction(dir, from)?;
    if dir.join("conf").is_file() && dir.join("db").is_file() {
        return Err(StorageError::LegacyLayout {
            dir: dir.to_path_buf(),
        });
    }
    match layout::active_engine(dir)? {
        Some(active) if active == from => Ok(()),
        Some(active) => Err(StorageError::Migration(format!(
            "the store in {} is on {active}, not {from}",
            dir.display()
        ))),
        None if layout::has_entries(&layout::engine_dir(dir, from))? => Ok(()),
        None => Err(StorageError::Migration(format!(
            "no {from} store in {}",
            dir.display()
        ))),
    }
}
