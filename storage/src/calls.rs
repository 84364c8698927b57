//! Call history: one record per call per participant (`C`), newest last in key order, at
//! most [`MAX_CALLS_KEPT`] per user (the oldest go when a new one is written). The edge's
//! switchboard decides what a call was; these writes only keep it.

use crate::records::{decode, encode};
use crate::write::{Class, Reads, Tx, Write};
use crate::{keys, StorageError};
use missive_proto::CallRecord;

/// Records kept per user; a new one past this drops the oldest.
pub const MAX_CALLS_KEPT: usize = 500;

fn user_prefix(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + user.len() + 24);
    k.push(keys::CALL);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k
}

fn record_key(user: &str, record: &CallRecord) -> Vec<u8> {
    let mut k = user_prefix(user);
    k.extend_from_slice(&record.ended_ms.to_be_bytes());
    k.extend_from_slice(&record.call_id.0);
    k
}

/// `user`'s most recent `limit` calls, newest first.
pub(crate) fn calls_of(
    r: &(impl Reads + ?Sized),
    user: &str,
    limit: usize,
) -> Result<Vec<CallRecord>, StorageError> {
    let mut all = Vec::new();
    for entry in r.scan(&user_prefix(user)) {
        let (_, v) = entry?;
        all.push(v);
    }
    all.iter()
        .rev()
        .take(limit)
        .map(|v| decode(v, "call record"))
        .collect()
}

/// Adds a call to `user`'s history.
#[derive(Debug)]
pub(crate) struct RecordCall {
    pub(crate) user: String,
    pub(crate) record: CallRecord,
}

impl Write for RecordCall {
    type Output = ();

    fn class(&self) -> Class {
        Class::ADDS
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<(), StorageError> {
        let key = record_key(&self.user, &self.record);
        let value = encode(&self.record)?;
        // Oldest first: the scan walks keys in order, and they sort by end time.
        let mut older = Vec::new();
        for entry in tx.scan(&user_prefix(&self.user)) {
            let (k, _) = entry?;
            if k != key {
                older.push(k);
            }
        }
        let excess = (older.len() + 1).saturating_sub(MAX_CALLS_KEPT);
        for old in older.into_iter().take(excess) {
            tx.remove(old);
        }
        tx.put(key, value);
        Ok(())
    }
}
