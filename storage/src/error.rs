//! The storage crate's one error type.

use crate::Engine;
use std::path::PathBuf;

/// Storage failures. Callers map them to `ErrorCode::Internal` on the wire.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database engine reported an I/O or internal error.
    #[error("database error: {0}")]
    Db(String),
    /// A value on disk failed validation (damaged or foreign data).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The store was shut down; no more writes are accepted.
    #[error("store is closed")]
    Closed,
    /// The store refuses this write for now: the disk is below the free-space watermark, or
    /// the engine failed and is being reopened. Nothing was written; retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A [`crate::StoreConfig`] value is out of range.
    #[error("invalid storage configuration: {0}")]
    InvalidConfig(String),
    /// The directory holds a store of another engine: opening it with this one would show an
    /// empty store, so it is refused.
    #[error(
        "{d} holds a {found} store, not {wanted}: set the storage engine to \"{found}\", or \
         migrate the stopped store from {found} to {wanted}",
        d = .dir.display()
    )]
    EngineMismatch {
        /// The store directory.
        dir: PathBuf,
        /// The engine whose data is there.
        found: Engine,
        /// The engine that was asked to open it.
        wanted: Engine,
    },
    /// The directory holds sled files written before engines were selectable (directly in
    /// the store directory instead of its `sled/` subdirectory).
    #[error(
        "{d} holds a sled store in the old layout: stop the edge and move its files into \
         {d}/sled/ (mkdir {d}/sled && mv {d}/conf {d}/db {d}/blobs {d}/snap.* {d}/sled/)",
        d = .dir.display()
    )]
    LegacyLayout {
        /// The store directory.
        dir: PathBuf,
    },
    /// A migration between engines could not start or did not verify.
    #[error("migration failed: {0}")]
    Migration(String),
    /// A backup could not be made or its copy did not verify.
    #[error("backup failed: {0}")]
    Backup(String),
    /// A compaction could not start, or the rewritten copy did not verify.
    #[error("compaction failed: {0}")]
    Compaction(String),
    /// The engine can only compact a stopped store (sled: by rewriting it into a fresh copy).
    #[error("{engine} cannot compact a store while it is open: compact the stopped store")]
    CompactionNeedsStop {
        /// The store's engine.
        engine: Engine,
    },
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        Self::Db(e.to_string())
    }
}
