//! Everything durable in Missive, behind a narrow API.
//!
//! The rest of the code sees [`Store`]: append a message to every device mailbox of a user,
//! read a mailbox range, acknowledge (delete) up to a sequence, and small keyed records
//! (users, device keys, invites). No sled type crosses this crate's boundary, so another
//! embedded engine, or a replicated one, is a backend and not a rewrite.
//!
//! ## Durability: one committer, group commit
//!
//! Every write goes through one committer thread (see `group_commit.rs`). It takes whatever
//! operations are waiting, applies them as one sled batch, calls sled's `flush` and then
//! `fsync`s the database file (sled's flush is only `sync_file_range`, which is not durable on
//! power loss), and only then completes each waiter. So a caller's future resolving `Ok`
//! means the write is on disk. sled's `flush_async` is never used: it deadlocks with
//! concurrent callers (sled #1308).
//!
//! Because only the committer writes, per-mailbox sequence numbers, dedup checks and
//! "user exists" checks need no locks and no transactions.
//!
//! After each durable batch the committer calls the [`CommitListener`] for every appended
//! item, in sequence order per mailbox, so live delivery never runs ahead of durability.

mod group_commit;
mod keys;
mod records;
mod store;

pub use records::{StoredItem, UserRecord};
pub use store::{
    AckOutcome, AppendOutcome, CommitListener, RegisterOutcome, StorageError, Store, StoreConfig,
    StoreStats, SweepOutcome,
};

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
