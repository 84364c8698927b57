//! Helpers shared by the storage integration tests.

#![allow(dead_code)] // each test binary uses its own subset

use missive_proto::ClientMsgId;
use missive_storage::{Engine, StoreConfig};

/// The default store configuration on `engine`.
pub(crate) fn config(engine: Engine) -> StoreConfig {
    StoreConfig {
        engine,
        ..StoreConfig::default()
    }
}

/// A message id made from a number (distinct numbers give distinct ids).
pub(crate) fn id(n: u64) -> ClientMsgId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    ClientMsgId(b)
}
