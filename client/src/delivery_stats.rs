//! What the server delivered, counted before the SDK's duplicate filter: the filter hides the
//! server's mistakes from the app, so tests and the bench look here to see them.
//!
//! A mailbox's seqs only grow, so an item the filter drops is told apart by its seq: at or
//! below the highest seq delivered before, it is a *redelivery* (the server sends again what
//! was not acknowledged when a connection ended: expected); above it, the same message was
//! stored again under a new seq: a *duplicate*, which a correct server never makes (short of
//! a crash undoing a write that a reader had already seen).

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of [`DeliveryCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeliveryStats {
    /// `Deliver` frames of messages received (before any filter).
    pub deliveries: u64,
    /// Messages delivered again at a seq already delivered (dropped by the filter; expected
    /// after a reconnect).
    pub redeliveries: u64,
    /// Messages already seen that arrived at a new seq: the server stored them twice.
    pub duplicates: u64,
}

/// Counters shared by a client's session (which counts) and its handle (which reads).
#[derive(Debug, Default)]
pub(crate) struct DeliveryCounters {
    deliveries: AtomicU64,
    redeliveries: AtomicU64,
    duplicates: AtomicU64,
}

impl DeliveryCounters {
    pub(crate) fn delivered(&self) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn redelivered(&self) {
        self.redeliveries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn duplicated(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> DeliveryStats {
        DeliveryStats {
            deliveries: self.deliveries.load(Ordering::Relaxed),
            redeliveries: self.redeliveries.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
        }
    }
}
