//! Media metadata: one record per blob (`M`), and each user's bytes of live blobs (`Q`). The
//! bytes themselves are files ([`crate::BlobFiles`]), never in the database.
//!
//! A blob is named by the hash of its ciphertext, so identical ciphertext is stored once: a
//! second upload of the same blob finds it complete, adds its expected downloads and extends
//! its lifetime. Its first uploader's quota carries it. A blob goes when the expected number
//! of distinct devices downloaded it, when its lifetime ends, or, unfinished, when its upload
//! stalls (the edge's janitor decides; these writes only keep the records).

use crate::records::{decode, encode};
use crate::write::{Class, Reads, Tx, Write};
use crate::{keys, StorageError};
use missive_proto::BlobId;
use rkyv::{Archive, Deserialize, Serialize};

/// What the store knows of a blob.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    /// Ciphertext size in bytes.
    pub size: u64,
    /// The user whose quota carries it.
    pub owner: String,
    /// When its upload was opened, ms since the Unix epoch.
    pub created_ms: u64,
    /// When it is deleted whatever happens, ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// Every byte arrived and the hash matched.
    pub complete: bool,
    /// Distinct downloading devices after which it is deleted (0: only its lifetime ends it).
    pub downloads: u32,
    /// Opaque tags of the devices that downloaded it in full.
    pub downloaded_by: Vec<u64>,
}

/// The limits an upload is opened under.
#[derive(Debug, Clone, Copy)]
pub struct MediaLimits {
    /// Largest blob, bytes.
    pub max_size: u64,
    /// Most bytes of live blobs per user.
    pub quota: u64,
    /// How long a blob lives, ms.
    pub ttl_ms: u64,
}

/// What opening an upload found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenOutcome {
    /// A new upload: its record is stored and its size counted against the quota.
    New,
    /// An unfinished upload of the same blob: go on with it.
    Resume,
    /// The blob is already complete (identical ciphertext stored once): nothing to send.
    Complete,
    /// Larger than `max_size`.
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// The user's live blobs plus this one would pass the quota.
    OverQuota {
        /// Bytes the user's blobs take now.
        used: u64,
        /// The quota.
        quota: u64,
    },
}

pub(crate) fn blob_key(blob: &BlobId) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.push(keys::BLOB);
    k.extend_from_slice(&blob.0);
    k
}

fn quota_key(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + user.len());
    k.push(keys::MEDIA_USAGE);
    k.extend_from_slice(user.as_bytes());
    k
}

fn usage(r: &(impl Reads + ?Sized), user: &str) -> Result<u64, StorageError> {
    Ok(r.read(&quota_key(user))?
        .and_then(|v| keys::be_u64(&v))
        .unwrap_or(0))
}

/// The record of `blob`, if any.
pub(crate) fn blob(
    r: &(impl Reads + ?Sized),
    blob: &BlobId,
) -> Result<Option<BlobRecord>, StorageError> {
    r.read(&blob_key(blob))?
        .map(|v| decode(&v, "blob record"))
        .transpose()
}

/// Every blob record (for the janitor; one small record per blob).
pub(crate) fn blobs(r: &(impl Reads + ?Sized)) -> Result<Vec<(BlobId, BlobRecord)>, StorageError> {
    let mut out = Vec::new();
    for entry in r.scan(&[keys::BLOB]) {
        let (k, v) = entry?;
        let Ok(id) = <[u8; 32]>::try_from(&k[1..]) else {
            continue;
        };
        out.push((BlobId(id), decode(&v, "blob record")?));
    }
    Ok(out)
}

/// Bytes of live blobs `user` owns.
pub(crate) fn user_usage(r: &(impl Reads + ?Sized), user: &str) -> Result<u64, StorageError> {
    usage(r, user)
}

/// Removes a record and gives its bytes back to its owner's quota.
fn drop_record(tx: &mut Tx<'_>, blob: &BlobId, record: &BlobRecord) -> Result<(), StorageError> {
    let used = usage(tx, &record.owner)?.saturating_sub(record.size);
    if used == 0 {
        tx.remove(quota_key(&record.owner));
    } else {
        tx.put(quota_key(&record.owner), used.to_be_bytes().to_vec());
    }
    tx.remove(blob_key(blob));
    Ok(())
}

/// Opens (or resumes) `owner`'s upload of `blob`.
#[derive(Debug)]
pub(crate) struct OpenUpload {
    pub(crate) blob: BlobId,
    pub(crate) owner: String,
    pub(crate) size: u64,
    pub(crate) downloads: u32,
    pub(crate) limits: MediaLimits,
    pub(crate) now_ms: u64,
}

impl Write for OpenUpload {
    type Output = OpenOutcome;

    fn class(&self) -> Class {
        Class::ADDS
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<OpenOutcome, StorageError> {
        let key = blob_key(&self.blob);
        let expires_at_ms = self.now_ms.saturating_add(self.limits.ttl_ms);
        if let Some(mut record) = blob(tx, &self.blob)? {
            if record.size != self.size {
                // Same hash, another size: not the same ciphertext; the hash check refuses
                // whichever is wrong. Treat it as resuming the stored one.
                return Ok(OpenOutcome::Resume);
            }
            if !record.complete {
                return Ok(OpenOutcome::Resume);
            }
            record.downloads = record.downloads.saturating_add(self.downloads);
            record.expires_at_ms = record.expires_at_ms.max(expires_at_ms);
            tx.put(key, encode(&record)?);
            return Ok(OpenOutcome::Complete);
        }
        if self.size > self.limits.max_size {
            return Ok(OpenOutcome::TooLarge {
                max: self.limits.max_size,
            });
        }
        let used = usage(tx, &self.owner)?;
        if used.saturating_add(self.size) > self.limits.quota {
            return Ok(OpenOutcome::OverQuota {
                used,
                quota: self.limits.quota,
            });
        }
        let record = BlobRecord {
            size: self.size,
            owner: self.owner.clone(),
            created_ms: self.now_ms,
            expires_at_ms,
            complete: false,
            downloads: self.downloads,
            downloaded_by: Vec::new(),
        };
        tx.put(key, encode(&record)?);
        tx.put(
            quota_key(&self.owner),
            (used + self.size).to_be_bytes().to_vec(),
        );
        Ok(OpenOutcome::New)
    }
}

/// Every byte of `blob` arrived and its hash matched: it can be downloaded.
#[derive(Debug)]
pub(crate) struct CompleteUpload {
    pub(crate) blob: BlobId,
}

impl Write for CompleteUpload {
    type Output = bool;

    fn class(&self) -> Class {
        Class::UPDATE
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<bool, StorageError> {
        let Some(mut record) = blob(tx, &self.blob)? else {
            return Ok(false);
        };
        record.complete = true;
        tx.put(blob_key(&self.blob), encode(&record)?);
        Ok(true)
    }
}

/// Forgets `blob` (expired, stalled, failed its hash check, or deleted by hand); true when a
/// record was there. The caller removes the file.
#[derive(Debug)]
pub(crate) struct DeleteBlob {
    pub(crate) blob: BlobId,
}

impl Write for DeleteBlob {
    type Output = bool;

    fn class(&self) -> Class {
        Class::UPDATE
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<bool, StorageError> {
        let Some(record) = blob(tx, &self.blob)? else {
            return Ok(false);
        };
        drop_record(tx, &self.blob, &record)?;
        Ok(true)
    }
}

/// A device (named by an opaque `tag`) downloaded all of `blob`. True when that was the last
/// expected download: the record is gone and the caller removes the file.
#[derive(Debug)]
pub(crate) struct RecordDownload {
    pub(crate) blob: BlobId,
    pub(crate) tag: u64,
}

impl Write for RecordDownload {
    type Output = bool;

    fn class(&self) -> Class {
        Class::UPDATE
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<bool, StorageError> {
        let Some(mut record) = blob(tx, &self.blob)? else {
            return Ok(false);
        };
        if !record.complete || record.downloaded_by.contains(&self.tag) {
            return Ok(false);
        }
        record.downloaded_by.push(self.tag);
        if record.downloads > 0 && record.downloaded_by.len() >= record.downloads as usize {
            drop_record(tx, &self.blob, &record)?;
            return Ok(true);
        }
        tx.put(blob_key(&self.blob), encode(&record)?);
        Ok(false)
    }
}
