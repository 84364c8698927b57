//! Helpers shared by the storage integration tests.

#![allow(dead_code)] // each test binary uses its own subset

use missive_proto::ClientMsgId;
use missive_storage::{Engine, StoreConfig};

/// The default store configuration on `engine`.
/// The store's defaults on `engine`, but for the mailbox quotas (the scenarios queue
/// thousands of messages from one sender; the quota scenarios set their own) and the
/// free-space watermark (a machine with little disk must still run the suite).
pub(crate) fn config(engine: Engine) -> StoreConfig {
    StoreConfig {
        engine,
        mailbox_max_items: u64::MAX,
        mailbox_max_items_per_sender: u64::MAX,
        min_free_bytes: 0,
        ..StoreConfig::default()
    }
}

/// A message id made from a number (distinct numbers give distinct ids).
pub(crate) fn id(n: u64) -> ClientMsgId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    ClientMsgId(b)
}

/// The copies of a message for a recipient with the one device 1 (the usual case here).
pub(crate) fn to_device_1(envelope: Vec<u8>) -> Vec<missive_proto::DeviceEnvelope> {
    vec![missive_proto::DeviceEnvelope {
        device: missive_proto::DeviceId(1),
        envelope,
    }]
}
