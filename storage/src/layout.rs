//! Where each engine keeps its files inside a store directory, and which engine is active.
//!
//! ```text
//! <dir>/engine      "sled" or "fjall": the engine that holds the live data
//! <dir>/sled/       sled's files
//! <dir>/fjall/      fjall's files
//! ```
//!
//! Opening a directory with the engine that is not the active one is refused with
//! [`StorageError::EngineMismatch`] instead of silently starting an empty store. A migration
//! (see `migrate.rs`) copies into the other engine's directory and then switches the marker;
//! the old engine's directory stays behind as a backup that no open will use.
//!
//! Compacting a stopped sled store (see `compact.rs`) builds a fresh copy in
//! `<dir>/sled.compacting/`, then swaps directories: `sled/` → `sled.precompact/`,
//! `sled.compacting/` → `sled/`, then deletes `sled.precompact/`. An open first finishes or
//! undoes a swap that a crash interrupted ([`recover_compaction`]).

use crate::{Engine, StorageError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the file naming the active engine.
const MARKER: &str = "engine";

/// The directory of `engine`'s files inside the store directory `dir`.
pub(crate) fn engine_dir(dir: &Path, engine: Engine) -> PathBuf {
    dir.join(engine.name())
}

/// The active engine recorded in `dir`, if any.
pub(crate) fn active_engine(dir: &Path) -> Result<Option<Engine>, StorageError> {
    match std::fs::read_to_string(dir.join(MARKER)) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| StorageError::Corrupt(format!("{}: {e}", dir.join(MARKER).display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Where a compaction by rewrite builds the new copy of `engine`'s files.
pub(crate) fn compacting_dir(dir: &Path, engine: Engine) -> PathBuf {
    dir.join(format!("{}.compacting", engine.name()))
}

/// Where the old files of `engine` wait while the verified compacted copy takes their place.
pub(crate) fn precompact_dir(dir: &Path, engine: Engine) -> PathBuf {
    dir.join(format!("{}.precompact", engine.name()))
}

/// Finishes or undoes a compaction swap that a crash interrupted: with the engine's directory
/// missing, the old files go back in place; with both there, the swap was complete (the new
/// copy was verified before it started) and the old files are deleted.
pub(crate) fn recover_compaction(dir: &Path, engine: Engine) -> Result<(), StorageError> {
    let old = precompact_dir(dir, engine);
    if !old.exists() {
        return Ok(());
    }
    let live = engine_dir(dir, engine);
    if live.exists() {
        std::fs::remove_dir_all(&old)?;
    } else {
        std::fs::rename(&old, &live)?;
    }
    sync_dir(dir)
}

/// Checks that `engine` may open the store in `dir` (creating a fresh store's marker) and
/// returns the engine's own directory.
pub(crate) fn prepare_open(dir: &Path, engine: Engine) -> Result<PathBuf, StorageError> {
    std::fs::create_dir_all(dir)?;
    recover_compaction(dir, engine)?;
    // sled files straight in `dir`: a store made before engines were selectable.
    if dir.join("conf").is_file() && dir.join("db").is_file() {
        return Err(StorageError::LegacyLayout {
            dir: dir.to_path_buf(),
        });
    }
    match active_engine(dir)? {
        Some(found) if found != engine => Err(StorageError::EngineMismatch {
            dir: dir.to_path_buf(),
            found,
            wanted: engine,
        }),
        Some(_) => Ok(engine_dir(dir, engine)),
        None => {
            // No marker: a new store, unless another engine's files are there anyway.
            for other in Engine::ALL.into_iter().filter(|e| *e != engine) {
                if has_entries(&engine_dir(dir, other))? {
                    return Err(StorageError::EngineMismatch {
                        dir: dir.to_path_buf(),
                        found: other,
                        wanted: engine,
                    });
                }
            }
            set_active_engine(dir, engine)?;
            Ok(engine_dir(dir, engine))
        }
    }
}

/// Records `engine` as the active one, atomically (write, fsync, rename, fsync the directory).
pub(crate) fn set_active_engine(dir: &Path, engine: Engine) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{MARKER}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{}", engine.name())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(MARKER))?;
    sync_dir(dir)
}

/// fsyncs a directory so that renames and new entries in it survive power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// True when `path` is a directory with something in it.
pub(crate) fn has_entries(path: &Path) -> Result<bool, StorageError> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_opens_only_with_its_own_engine() {
        let dir = tempfile::tempdir().unwrap();
        let sled_dir = prepare_open(dir.path(), Engine::Sled).unwrap();
        assert_eq!(sled_dir, dir.path().join("sled"));
        assert_eq!(active_engine(dir.path()).unwrap(), Some(Engine::Sled));
        let e = prepare_open(dir.path(), Engine::Fjall).unwrap_err();
        assert!(matches!(
            e,
            StorageError::EngineMismatch {
                found: Engine::Sled,
                wanted: Engine::Fjall,
                ..
            }
        ));
        // Idempotent for the right engine.
        assert_eq!(prepare_open(dir.path(), Engine::Sled).unwrap(), sled_dir);
    }

    #[test]
    fn files_of_another_engine_without_marker_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("fjall")).unwrap();
        std::fs::write(dir.path().join("fjall/version"), b"x").unwrap();
        assert!(matches!(
            prepare_open(dir.path(), Engine::Sled),
            Err(StorageError::EngineMismatch { .. })
        ));
    }

    #[test]
    fn legacy_sled_layout_is_refused_not_shadowed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("conf"), b"x").unwrap();
        std::fs::write(dir.path().join("db"), b"x").unwrap();
        let e = prepare_open(dir.path(), Engine::Sled).unwrap_err();
        assert!(matches!(e, StorageError::LegacyLayout { .. }), "{e}");
        assert!(e.to_string().contains("sled"), "{e}");
    }

    #[test]
    fn an_interrupted_compaction_swap_is_undone_or_finished() {
        let dir = tempfile::tempdir().unwrap();
        prepare_open(dir.path(), Engine::Sled).unwrap();
        let live = engine_dir(dir.path(), Engine::Sled);
        std::fs::create_dir_all(&live).unwrap();
        std::fs::write(live.join("old"), b"x").unwrap();
        // Crash after moving the old files aside: they come back.
        std::fs::rename(&live, precompact_dir(dir.path(), Engine::Sled)).unwrap();
        assert_eq!(prepare_open(dir.path(), Engine::Sled).unwrap(), live);
        assert!(live.join("old").is_file());
        assert!(!precompact_dir(dir.path(), Engine::Sled).exists());
        // Crash after the new copy took their place: the old files go.
        std::fs::create_dir_all(precompact_dir(dir.path(), Engine::Sled)).unwrap();
        prepare_open(dir.path(), Engine::Sled).unwrap();
        assert!(live.join("old").is_file());
        assert!(!precompact_dir(dir.path(), Engine::Sled).exists());
    }

    #[test]
    fn a_damaged_marker_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MARKER), b"leveldb\n").unwrap();
        assert!(matches!(
            prepare_open(dir.path(), Engine::Sled),
            Err(StorageError::Corrupt(_))
        ));
    }
}
