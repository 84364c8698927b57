//! What the store can do right now, and the free-space watermark that decides part of it.
//!
//! Like RabbitMQ's disk alarm and etcd's NOSPACE alarm: below the watermark the committer
//! refuses the writes that only add data (new messages, accounts, invites, devices) with a
//! retryable error, while acks and expiry, which free space, go on. An engine that fails a
//! write or an fsync is closed and reopened (see `group_commit.rs`); until then every
//! operation is refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The store's state, as `/readyz`, the metrics and the logs report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageHealth {
    /// Taking every write.
    Ok,
    /// Free disk space is below the watermark: new messages and accounts are refused, acks
    /// and deletes go on.
    LowSpace,
    /// The engine failed a write or an fsync; it is closed and being reopened. Every
    /// operation is refused until it is back.
    Failed,
}

impl StorageHealth {
    /// A stable lower-case name for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::LowSpace => "low_space",
            Self::Failed => "failed",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Ok,
            1 => Self::LowSpace,
            _ => Self::Failed,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::LowSpace => 1,
            Self::Failed => 2,
        }
    }
}

/// The committer's health, readable from any thread.
#[derive(Debug, Default)]
pub(crate) struct HealthCell {
    state: AtomicU8,
    /// Why the state is not `Ok` (the last failure or the space figures).
    reason: Mutex<String>,
}

impl HealthCell {
    pub(crate) fn get(&self) -> StorageHealth {
        StorageHealth::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Sets the state; true when it changed.
    pub(crate) fn set(&self, health: StorageHealth, reason: impl Into<String>) -> bool {
        *self
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = reason.into();
        self.state.swap(health.as_u8(), Ordering::AcqRel) != health.as_u8()
    }
}

/// How often the free space is looked up: a `statvfs` is cheap, but not worth doing per batch.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Watches the free space of the filesystem holding the store.
#[derive(Debug)]
pub(crate) struct FreeSpaceWatch {
    dir: PathBuf,
    min_free_bytes: u64,
    checked: Option<Instant>,
    low: bool,
    available: u64,
}

impl FreeSpaceWatch {
    /// Watches `dir`'s filesystem; `min_free_bytes` 0 turns the watermark off.
    pub(crate) fn new(dir: &Path, min_free_bytes: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            min_free_bytes,
            checked: None,
            low: false,
            available: u64::MAX,
        }
    }

    /// Whether free space is below the watermark, looked up again when the last look is
    /// older than [`CHECK_EVERY`]. A failed look-up keeps the last answer.
    pub(crate) fn is_low(&mut self, now: Instant) -> bool {
        if self.min_free_bytes == 0 {
            return false;
        }
        if self
            .checked
            .is_none_or(|at| now.duration_since(at) >= CHECK_EVERY)
        {
            self.checked = Some(now);
            if let Some(free) = available_bytes(&self.dir) {
                self.available = free;
                self.low = free < self.min_free_bytes;
            }
        }
        self.low
    }

    /// Whether there is a watermark at all.
    pub(crate) fn is_on(&self) -> bool {
        self.min_free_bytes > 0
    }

    /// The watermark and the last free-space figure, for logs.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} bytes free in {}, watermark {} bytes",
            self.available,
            self.dir.display(),
            self.min_free_bytes
        )
    }
}

/// Bytes an unprivileged writer may still use on `dir`'s filesystem.
pub(crate) fn available_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_compares_against_the_real_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let free = available_bytes(dir.path()).expect("statvfs");
        assert!(free > 0);
        let t0 = Instant::now();
        assert!(!FreeSpaceWatch::new(dir.path(), 0).is_low(t0), "off");
        assert!(!FreeSpaceWatch::new(dir.path(), 1).is_low(t0));
        assert!(FreeSpaceWatch::new(dir.path(), u64::MAX).is_low(t0));
    }

    #[test]
    fn health_changes_are_reported_once() {
        let h = HealthCell::default();
        assert_eq!(h.get(), StorageHealth::Ok);
        assert!(h.set(StorageHealth::Failed, "disk"));
        assert!(!h.set(StorageHealth::Failed, "disk again"));
        assert_eq!(h.reason(), "disk again");
        assert!(h.set(StorageHealth::Ok, ""));
    }
}
