//! The engine that stands in while the real one is closed after a failure: every call fails
//! with [`StorageError::Unavailable`], so nothing reads or writes state the failed engine may
//! have half-written, and the failed engine's files and lock are released for the reopen.

use super::{KvEngine, KvIter, WriteBatch};
use crate::StorageError;
use std::ops::Bound;

/// See the module docs.
pub(crate) struct UnavailableEngine;

fn refused() -> StorageError {
    StorageError::Unavailable("storage failed and is being reopened".into())
}

impl KvEngine for UnavailableEngine {
    fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Err(refused())
    }

    fn range(&self, _start: Bound<Vec<u8>>, _end: Bound<Vec<u8>>) -> KvIter<'_> {
        Box::new(std::iter::once(Err(refused())))
    }

    fn prefix(&self, _prefix: &[u8]) -> KvIter<'_> {
        Box::new(std::iter::once(Err(refused())))
    }

    fn apply(&self, _batch: WriteBatch) -> Result<(), StorageError> {
        Err(refused())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Err(refused())
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        Err(refused())
    }

    fn compact(&self) -> Result<bool, StorageError> {
        Err(refused())
    }

    fn close(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
