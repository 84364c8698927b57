//! Copying a database entry by entry into another one, and proving the copy equal.
//!
//! Both engines hold the same keys (`keys.rs`), so one copy loop serves a migration between
//! engines (`migrate.rs`), a backup of a running store (`backup.rs`) and the rewrite that
//! compacts a sled store (`compact.rs`). The verification pass walks both databases in key
//! order and requires identical entries and identical counts.

use crate::engine::{self, KvEngine, WriteBatch};
use crate::{keys, StorageError};
use std::ops::Bound;

/// Entries per copy batch: big enough to amortise each batch, small enough to bound memory.
const COPY_BATCH_ENTRIES: usize = 10_000;

/// Entries of a store counted by kind, as a copy saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryCounts {
    /// User records.
    pub users: u64,
    /// Device public keys.
    pub device_keys: u64,
    /// Unused invite tokens.
    pub invites: u64,
    /// Queued mailbox items (envelopes and receipts).
    pub mailbox_items: u64,
    /// Per-mailbox next-seq counters.
    pub seq_counters: u64,
    /// Send dedup keys.
    pub dedup_keys: u64,
    /// Contact marks (who has messaged whom; presence and typing follow them).
    pub contacts: u64,
    /// Entries of no known kind (copied all the same).
    pub other: u64,
    /// Key and value bytes.
    pub bytes: u64,
}

impl EntryCounts {
    /// Every entry counted.
    pub fn entries(&self) -> u64 {
        self.users
            + self.device_keys
            + self.invites
            + self.mailbox_items
            + self.seq_counters
            + self.dedup_keys
            + self.contacts
            + self.other
    }

    fn count(&mut self, key: &[u8], value: &[u8]) {
        self.bytes += (key.len() + value.len()) as u64;
        let slot = match key.first() {
            Some(&keys::USER) => &mut self.users,
            Some(&keys::DEVICE) => &mut self.device_keys,
            Some(&keys::INVITE) => &mut self.invites,
            Some(&keys::MAILBOX) => &mut self.mailbox_items,
            Some(&keys::SEQ) => &mut self.seq_counters,
            Some(&keys::DEDUP) => &mut self.dedup_keys,
            Some(&keys::CONTACT) => &mut self.contacts,
            _ => &mut self.other,
        };
        *slot += 1;
    }
}

fn everything(db: &dyn KvEngine) -> engine::KvIter<'_> {
    db.range(Bound::Unbounded, Bound::Unbounded)
}

/// Copies every entry of `source` into `dest` in key order and makes `dest` durable.
///
/// The caller keeps writers away from `source` for the whole copy and verification (a stopped
/// store, or the committer thread running the copy), or the two passes may disagree.
pub(crate) fn copy(
    source: &dyn KvEngine,
    dest: &dyn KvEngine,
) -> Result<EntryCounts, StorageError> {
    let mut counts = EntryCounts::default();
    let mut batch = WriteBatch::default();
    for kv in everything(source) {
        let (k, v) = kv?;
        counts.count(&k, &v);
        batch.insert(k, v);
        if batch.len() >= COPY_BATCH_ENTRIES {
            dest.apply(std::mem::take(&mut batch))?;
        }
    }
    dest.apply(batch)?;
    dest.sync()?;
    Ok(counts)
}

/// Walks both databases in key order and requires identical entries, and as many entries and
/// bytes as `copied`. A difference is reported through `mismatch` (so each caller names its own
/// operation); read errors as they are.
pub(crate) fn verify(
    source: &dyn KvEngine,
    dest: &dyn KvEngine,
    copied: &EntryCounts,
    mismatch: fn(String) -> StorageError,
) -> Result<(), StorageError> {
    let mut seen = EntryCounts::default();
    let mut a = everything(source);
    let mut b = everything(dest);
    loop {
        match (a.next().transpose()?, b.next().transpose()?) {
            (None, None) => break,
            (Some((k, v)), Some((k2, v2))) => {
                if k != k2 || v != v2 {
                    return Err(mismatch(format!(
                        "copy differs at key {}",
                        printable(if k != k2 { &k2 } else { &k })
                    )));
                }
                seen.count(&k2, &v2);
            }
            (Some((k, _)), None) => {
                return Err(mismatch(format!("copy is missing key {}", printable(&k))))
            }
            (None, Some((k, _))) => {
                return Err(mismatch(format!("copy has an extra key {}", printable(&k))))
            }
        }
    }
    if seen.entries() != copied.entries() || seen.bytes != copied.bytes {
        return Err(mismatch(format!(
            "copied {} entries ({} bytes) but found {} ({} bytes) on verification",
            copied.entries(),
            copied.bytes,
            seen.entries(),
            seen.bytes
        )));
    }
    Ok(())
}

/// A key for an error message: printable ASCII as is, other bytes as `\xNN`.
fn printable(key: &[u8]) -> String {
    key.iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// Seconds since the Unix epoch (0 before 1970), for names of directories set aside.
pub(crate) fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
