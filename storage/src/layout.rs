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

/// Checks that `engine` may open the store in `dir` (creating a fresh store's marker) and
/// returns the engine's own directory.
pub(crate) fn prepare_open(dir: &Path, engine: Engine) -> Result<PathBuf, StorageError> {
    std::fs::create_dir_all(dir)?;
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
    fn a_damaged_marker_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MARKER), b"leveldb\n").unwrap();
        assert!(matches!(
            prepare_open(dir.path(), Engine::Sled),
            Err(StorageError::Corrupt(_))
        ));
    }
}
