//! Everything durable in Missive, behind a narrow API.
//!
//! The rest of the code sees [`Store`]: append a message to every device mailbox of a user,
//! read a mailbox range, acknowledge (delete) up to a sequence, and small keyed records
//! (users, device keys, invites). No engine type crosses this crate's boundary.
//!
//! ## Engines
//!
//! Two embedded engines sit under the same API, chosen by [`StoreConfig::engine`]: sled (the
//! default) and fjall. The committer and the read paths see them only through the small
//! internal `engine::KvEngine` interface (point get, ordered range and prefix scans, an atomic
//! batch, "make it durable"), and both store the same keys (`keys.rs`), so a third engine, or
//! a replicated one, is a backend and not a rewrite. Each engine keeps its files in its own
//! subdirectory of the store directory, and a marker file names the active one, so a store
//! never opens under the wrong engine as an empty store (`layout.rs`). [`migrate`] copies a
//! stopped store from one engine to the other and verifies the copy entry by entry.
//!
//! ## Backup and compaction
//!
//! [`Store::backup_to`] copies a store that is in use into a fresh store of the same engine,
//! entry by entry through the engine interface, as a job of the committer thread: writes wait
//! for the copy and its verification, so it holds exactly the writes committed before it
//! (`backup.rs`). [`Store::compact`] runs fjall's major compaction on an open store;
//! [`compact`] compacts a stopped store, rewriting a sled one into a verified fresh copy,
//! since sled has no compaction call (`compact.rs`). The copy and the entry-by-entry
//! verification are the same as a migration's (`copy.rs`).
//!
//! ## Durability: one committer, group commit
//!
//! Every write goes through one committer thread (see `group_commit.rs`). What a write puts
//! and removes is decided by the module that owns its records (`mailbox.rs`, `accounts.rs`,
//! `key_directory.rs`, `device_registry.rs`), as a `write::Write` applied over a `write::Tx`
//! that reads through the batch being built; the committer only batches, applies and fsyncs. It takes whatever
//! operations are waiting, applies them as one engine batch, makes it durable, and only then
//! completes each waiter. So a caller's future resolving `Ok` means the write is on disk.
//!
//! - sled: `apply_batch`, `flush`, then `fsync` of the database file (sled's flush is only
//!   `sync_file_range`, which is not durable on power loss). sled's `flush_async` is never
//!   used: it deadlocks with concurrent callers (sled #1308).
//! - fjall: one write batch into the journal, then `fdatasync` of the journal. On shutdown
//!   the memtable is flushed to a table, so a clean reopen replays no journal.
//!
//! Because only the committer writes, per-mailbox sequence numbers, dedup checks and
//! "user exists" checks need no locks and no transactions.
//!
//! After each durable batch the committer calls the [`CommitListener`] for every appended
//! item, in sequence order per mailbox, so live delivery never runs ahead of durability.

#![forbid(unsafe_code)]

mod accounts;
mod backup;
mod blobs;
mod calls;
mod compact;
mod copy;
mod device_registry;
mod engine;
mod error;
mod group_commit;
mod group_log;
mod groups;
mod health;
mod key_directory;
mod keys;
mod layout;
mod mailbox;
mod media;
mod migrate;
mod records;
mod store;
mod stories;
mod unacked;
mod write;

pub use backup::BackupReport;
pub use blobs::{
    hash_file, BlobError, BlobFiles, PartWriter, PartialBlob, RangeSet, CHECKPOINT_BYTES,
};
pub use calls::MAX_CALLS_KEPT;
pub use compact::{compact, CompactReport};
pub use copy::EntryCounts;
pub use device_registry::LinkOutcome;
pub use engine::Engine;
pub use error::StorageError;
pub use group_log::LogPosition;
pub use groups::{GroupRefusal, GroupSendOutcome};
pub use health::StorageHealth;
pub use key_directory::{ClaimFrom, ClaimedBundle, KeyStatus, KeyUpload, UploadOutcome};
pub use mailbox::SEQ_RESERVATION;
pub use media::{BlobRecord, MediaLimits, OpenOutcome};
pub use migrate::{migrate, MigrationReport};
pub use records::{FallbackRecord, StoredItem, UserRecord};
pub use store::{
    AckOutcome, AppendOutcome, Appended, CommitListener, GroupChangeRequest, RegisterOutcome,
    Store, StoreConfig, StoreStats, SweepOutcome, FLUSH_BUCKETS_US, MAX_COMMIT_DELAY,
};
pub use stories::StoryOutcome;

use missive_proto::DeviceId;

/// One device's mailbox: the queue of items waiting for that device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxId {
    /// Owner of the mailbox.
    pub user: String,
    /// The owner's device.
    pub device: DeviceId,
}

impl MailboxId {
    /// The mailbox of `user`'s `device`.
    pub fn new(user: impl Into<String>, device: DeviceId) -> Self {
        Self {
            user: user.into(),
            device,
        }
    }
}

impl std::fmt::Display for MailboxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.user, self.device.0)
    }
}
