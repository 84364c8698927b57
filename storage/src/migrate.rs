//! Offline migration of a stopped store from one engine to the other.
//!
//! Both engines hold the same keys (`keys.rs`), so a migration is a copy of every entry in key
//! order — users, device keys, invites, mailbox items with their seqs, seq counters, dedup
//! keys — into a fresh database of the other engine in `<dir>/<to>.partial/`, followed by a
//! second pass that compares the two databases entry by entry. Only then is the copy renamed
//! to `<dir>/<to>/` and the engine marker switched (`layout.rs`). A crash at any point leaves
//! the source store active and untouched; the source stays behind as a backup.

use crate::engine::{self, Engine, KvEngine, WriteBatch};
use crate::{keys, layout, StorageError, StoreConfig};
use std::ops::Bound;
use std::path::{Path, PathBuf};

/// Entries per copy batch: big enough to amortise each batch, small enough to bound memory.
const COPY_BATCH_ENTRIES: usize = 10_000;

/// What a migration copied, counted by kind of entry, and where things are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The engine copied from.
    pub from: Engine,
    /// The engine copied to; now the active one.
    pub to: Engine,
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
    /// Entries of no known kind (copied all the same).
    pub other: u64,
    /// Key and value bytes copied.
    pub bytes: u64,
    /// The source engine's directory, left in place as a backup; no open will use it.
    pub backup: PathBuf,
    /// Where an older copy that sat in the destination's place was moved, if there was one.
    pub replaced: Option<PathBuf>,
}

impl MigrationReport {
    fn empty(from: Engine, to: Engine, backup: PathBuf) -> Self {
        Self {
            from,
            to,
            users: 0,
            device_keys: 0,
            invites: 0,
            mailbox_items: 0,
            seq_counters: 0,
            dedup_keys: 0,
            other: 0,
            bytes: 0,
            backup,
            replaced: None,
        }
    }

    /// Every entry copied.
    pub fn entries(&self) -> u64 {
        self.users
            + self.device_keys
            + self.invites
            + self.mailbox_items
            + self.seq_counters
            + self.dedup_keys
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
            _ => &mut self.other,
        };
        *slot += 1;
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

    let mut report = MigrationReport::empty(from, to, layout::engine_dir(dir, from));
    copy(source.as_ref(), dest.as_ref(), &mut report)?;
    verify(source.as_ref(), dest.as_ref(), &report)?;
    dest.close()?;
    // Release both databases (and their file locks) before moving directories.
    drop(dest);
    drop(source);

    let target = layout::engine_dir(dir, to);
    if target.exists() {
        // An older copy (e.g. the backup of an earlier migration the other way): keep it,
        // out of the way.
        let aside = dir.join(format!("{}.replaced-{}", to.name(), unix_secs()));
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

fn everything(db: &dyn KvEngine) -> engine::KvIter<'_> {
    db.range(Bound::Unbounded, Bound::Unbounded)
}

fn copy(
    source: &dyn KvEngine,
    dest: &dyn KvEngine,
    report: &mut MigrationReport,
) -> Result<(), StorageError> {
    let mut batch = WriteBatch::default();
    for kv in everything(source) {
        let (k, v) = kv?;
        report.count(&k, &v);
        batch.insert(k, v);
        if batch.len() >= COPY_BATCH_ENTRIES {
            dest.apply(std::mem::take(&mut batch))?;
        }
    }
    dest.apply(batch)?;
    dest.sync()
}

/// Walks both databases in key order and requires identical entries and identical counts.
fn verify(
    source: &dyn KvEngine,
    dest: &dyn KvEngine,
    copied: &MigrationReport,
) -> Result<(), StorageError> {
    let mut seen = MigrationReport::empty(copied.from, copied.to, PathBuf::new());
    let mut a = everything(source);
    let mut b = everything(dest);
    loop {
        match (a.next().transpose()?, b.next().transpose()?) {
            (None, None) => break,
            (Some((k, v)), Some((k2, v2))) => {
                if k != k2 || v != v2 {
                    return Err(StorageError::Migration(format!(
                        "copy differs at key {}",
                        printable(if k != k2 { &k2 } else { &k })
                    )));
                }
                seen.count(&k2, &v2);
            }
            (Some((k, _)), None) => {
                return Err(StorageError::Migration(format!(
                    "copy is missing key {}",
                    printable(&k)
                )))
            }
            (None, Some((k, _))) => {
                return Err(StorageError::Migration(format!(
                    "copy has an extra key {}",
                    printable(&k)
                )))
            }
        }
    }
    if seen.entries() != copied.entries() || seen.bytes != copied.bytes {
        return Err(StorageError::Migration(format!(
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

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
