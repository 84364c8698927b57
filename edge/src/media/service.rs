//! The media service: opens uploads against the store's limits, writes their bytes into
//! blob files with bounded memory, verifies and installs complete blobs, serves ranges, signs
//! URLs, counts downloads, and collects expired, stalled and fully downloaded blobs.

use super::transfer::{Opened, Written};
use super::url::{Signed, UrlSigner};
use crate::shared::now_ms;
use missive_proto::{BlobId, ByteRange, ErrorCode, MediaUploadOpen, MediaUrl};
use missive_storage::{
    BlobError, BlobFiles, MediaLimits, OpenOutcome, PartialBlob, StorageError, Store,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct MediaStats {
    /// Upload bytes written into blob files.
    pub bytes_received: AtomicU64,
    /// Download bytes sent (transfer streams and HTTP).
    pub bytes_sent: AtomicU64,
    /// Blobs verified and stored.
    pub uploads_completed: AtomicU64,
    /// Uploads whose bytes did not hash to their name.
    pub hash_mismatches: AtomicU64,
    /// Blobs deleted (downloaded by every recipient, expired, or stalled).
    pub blobs_deleted: AtomicU64,
}

/// An upload in progress, shared by every stream writing to it.
type Upload = Arc<Mutex<UploadSlot>>;

/// The part being written (`None` once installed) and the client's current try.
#[derive(Debug)]
struct UploadSlot {
    part: Option<PartialBlob>,
    attempt: u64,
}

/// Everything media, shared by the transfer streams and the HTTP routes.
#[derive(Debug)]
pub struct MediaService {
    store: Store,
    files: BlobFiles,
    uploads: Mutex<HashMap<BlobId, Upload>>,
    limits: MediaLimits,
    signer: UrlSigner,
    /// Start of signed URLs; `None` when no HTTPS listener serves them.
    public_url: Option<String>,
    url_ttl: Duration,
    stall: Duration,
    /// Counters.
    pub stats: MediaStats,
}

/// What one collection pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Blobs past their lifetime.
    pub expired: usize,
    /// Uploads that got no bytes for the stall timeout.
    pub stalled: usize,
}

fn refused(e: StorageError) -> (ErrorCode, String) {
    match e {
        StorageError::Unavailable(_) => (
            ErrorCode::StorageUnavailable,
            "storage unavailable; retry".into(),
        ),
        e => {
            tracing::error!(error = %e, "media storage failed");
            (ErrorCode::Internal, "storage failed; retry".into())
        }
    }
}

impl MediaService {
    /// A service over `files` and `store`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        files: BlobFiles,
        limits: MediaLimits,
        signer: UrlSigner,
        public_url: Option<String>,
        url_ttl: Duration,
        stall: Duration,
    ) -> Self {
        Self {
            store,
            files,
            uploads: Mutex::default(),
            limits,
            signer,
            public_url,
            url_ttl,
            stall,
            stats: MediaStats::default(),
        }
    }

    /// The blob files.
    pub fn files(&self) -> &BlobFiles {
        &self.files
    }

    /// The URL signer.
    pub fn signer(&self) -> &UrlSigner {
        &self.signer
    }

    fn upload(&self, blob: &BlobId) -> Option<Upload> {
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(blob)
            .cloned()
    }

    /// Opens (or resumes) `user`'s upload.
    pub async fn open(self: &Arc<Self>, user: &str, open: &MediaUploadOpen) -> Opened {
        let outcome = self
            .store
            .open_upload(
                user,
                open.blob,
                open.size,
                open.downloads,
                self.limits,
                now_ms(),
            )
            .await;
        match outcome {
            Err(e) => {
                let (code, why) = refused(e);
                Opened::Refused(code, why)
            }
            Ok(OpenOutcome::TooLarge { max }) => Opened::Refused(
                ErrorCode::MediaTooLarge,
                format!("{} bytes is more than the {max} a file may have", open.size),
            ),
            Ok(OpenOutcome::OverQuota { used, quota }) => Opened::Refused(
                ErrorCode::MediaQuotaExceeded,
                format!(
                    "{used} of {quota} bytes in use; {} more do not fit",
                    open.size
                ),
            ),
            Ok(OpenOutcome::Complete) => Opened::Complete,
            Ok(outcome @ (OpenOutcome::New | OpenOutcome::Resume)) => {
                let me = self.clone();
                let (blob, size, attempt) = (open.blob, open.size, open.attempt);
                let fresh = outcome == OpenOutcome::New;
                tokio::task::spawn_blocking(move || me.attach(blob, size, fresh, attempt))
                    .await
                    .unwrap_or_else(|_| Opened::Refused(ErrorCode::Internal, "panicked".into()))
            }
        }
    }

    /// The shared upload of `blob`, opened from its files when no stream has it open.
    /// `attempt` becomes the upload's current try: writes of other tries are refused from
    /// now on. A write of an older try already under way still lands and counts; the new try
    /// may send those bytes again, and they are left out (a part's bytes are written once).
    fn attach(&self, blob: BlobId, size: u64, fresh: bool, attempt: u64) -> Opened {
        if self.files.has(&blob) {
            return Opened::Complete;
        }
        let mut uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(upload) = uploads.get(&blob) {
            // Waits for a write that is finishing the part.
            let mut slot = upload.lock().unwrap_or_else(|p| p.into_inner());
            slot.attempt = attempt;
            match slot.part.as_ref() {
                Some(p) => return Opened::Ready(p.ranges().ranges().to_vec()),
                None if self.files.has(&blob) => return Opened::Complete,
                // Finished without a blob (its bytes did not hash to its name): anew.
                None => {}
            }
        }
        if fresh {
            // Leftovers of an upload whose record is gone must not count as held bytes.
            let _ = self.files.remove_partial(&blob);
        }
        match self.files.partial(&blob, size) {
            Ok(part) => {
                let have = part.ranges().ranges().to_vec();
                uploads.insert(
                    blob,
                    Arc::new(Mutex::new(UploadSlot {
                        part: Some(part),
                        attempt,
                    })),
                );
                Opened::Ready(have)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot open an upload's file");
                Opened::Refused(
                    ErrorCode::StorageUnavailable,
                    "cannot store media now".into(),
                )
            }
        }
    }

    /// Writes `bytes` at `offset` of `blob`'s upload; the last byte verifies and installs it.
    /// Bytes of a try other than the upload's current one are refused unwritten.
    pub async fn write(
        self: &Arc<Self>,
        blob: BlobId,
        attempt: u64,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Written {
        let Some(upload) = self.upload(&blob) else {
            if self.files.has(&blob) {
                return Written::Complete;
            }
            tracing::debug!(%blob, offset, "write to an upload no stream has open");
            return Written::Refused(ErrorCode::UnknownMedia, "no such upload".into());
        };
        let me = self.clone();
        let len = bytes.len() as u64;
        let step = tokio::task::spawn_blocking(move || {
            me.write_blocking(&upload, blob, attempt, offset, &bytes)
        })
        .await
        .unwrap_or(Err(BlobError::Incomplete));
        match step {
            Ok(Some(held)) => {
                self.stats.bytes_received.fetch_add(len, Ordering::Relaxed);
                Written::Held(held)
            }
            Ok(None) => {
                self.stats.bytes_received.fetch_add(len, Ordering::Relaxed);
                match self.store.complete_upload(blob).await {
                    Ok(_) => {
                        self.stats.uploads_completed.fetch_add(1, Ordering::Relaxed);
                        Written::Complete
                    }
                    Err(e) => {
                        let (code, why) = refused(e);
                        Written::Refused(code, why)
                    }
                }
            }
            Err(BlobError::HashMismatch { actual }) => {
                self.stats.hash_mismatches.fetch_add(1, Ordering::Relaxed);
                let _ = self.store.delete_blob(blob).await;
                Written::Refused(
                    ErrorCode::MediaHashMismatch,
                    format!("the bytes hash to {actual}; what was held is dropped"),
                )
            }
            Err(BlobError::Incomplete) => Written::Complete,
            Err(BlobError::Superseded) => Written::Refused(
                ErrorCode::ProtocolViolation,
                "a newer try of this upload took over".into(),
            ),
            Err(e) => {
                tracing::error!(error = %e, "writing an upload failed");
                Written::Refused(
                    ErrorCode::StorageUnavailable,
                    "cannot store media now".into(),
                )
            }
        }
    }

    /// `Some(held)` after a write that left bytes missing; `None` once the blob is installed.
    /// The bytes are written without the upload's lock held, so the streams of one upload
    /// write side by side; only the bookkeeping before and after takes it.
    fn write_blocking(
        &self,
        upload: &Upload,
        blob: BlobId,
        attempt: u64,
        offset: u64,
        bytes: &[u8],
    ) -> Result<Option<u64>, BlobError> {
        let (writer, claim) = {
            let mut slot = upload.lock().unwrap_or_else(|p| p.into_inner());
            if slot.attempt != attempt {
                return Err(BlobError::Superseded);
            }
            let Some(part) = slot.part.as_mut() else {
                // Another stream completed it meanwhile.
                return Ok(None);
            };
            (part.writer(), part.claim(offset, bytes.len() as u64)?)
        };
        let wrote = writer.write(&claim, bytes);
        let mut slot = upload.lock().unwrap_or_else(|p| p.into_inner());
        let superseded = slot.attempt != attempt;
        let Some(part) = slot.part.as_mut() else {
            return Ok(None);
        };
        // Settled whatever happened: bytes written by a try that was superseded meanwhile
        // are in the file all the same, and counted once.
        let (held, checkpoint) = part.settle(&claim, wrote.is_ok());
        if part.is_full() {
            // Whichever write completes the part finishes it (the hash decides), even one
            // of a superseded try: the new try may have nothing left to send. The slot stays
            // locked and listed until the blob is in place, so no stream opens the part
            // file anew meanwhile (`attach` waits for the lock).
            let part = slot.part.take().ok_or(BlobError::Incomplete)?;
            let finished = part.finish(&self.files);
            drop(slot);
            let mut uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
            if uploads.get(&blob).is_some_and(|u| Arc::ptr_eq(u, upload)) {
                uploads.remove(&blob);
            }
            drop(uploads);
            finished?;
            return if superseded {
                Err(BlobError::Superseded)
            } else {
                Ok(None)
            };
        }
        let prefix_end = part.prefix_end();
        let end = offset + bytes.len() as u64;
        let others_writing = part.is_being_written(offset, end);
        drop(slot);
        // Outside the lock: other streams write while this one syncs and hashes.
        if let Some(checkpoint) = checkpoint {
            checkpoint.run()?;
        }
        wrote?;
        if superseded {
            return Err(BlobError::Superseded);
        }
        writer.hash_prefix(prefix_end, &claim, bytes)?;
        if others_writing {
            return Ok(wait_for_other_writes(upload, offset, end));
        }
        Ok(Some(held))
    }

    /// The file and size of a complete blob, for a download.
    pub fn source(&self, blob: &BlobId) -> Result<(std::fs::File, u64), ErrorCode> {
        match self.store.blob(blob) {
            Ok(Some(r)) if r.complete => {}
            Ok(r) => {
                tracing::debug!(%blob, record = ?r, "download of a blob that is not complete");
                return Err(ErrorCode::UnknownMedia);
            }
            Err(_) => return Err(ErrorCode::StorageUnavailable),
        }
        self.files
            .open_blob(blob)
            .map_err(|_| ErrorCode::UnknownMedia)
    }

    /// A device (by tag) downloaded all of `blob`; the last expected download removes it.
    pub async fn downloaded(&self, blob: BlobId, tag: u64) {
        if let Ok(true) = self.store.record_download(blob, tag).await {
            let _ = self.files.remove(&blob);
            self.stats.blobs_deleted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A signed URL of `blob` for `user`'s `device`.
    pub fn sign(&self, blob: &BlobId, user: &str, device: u32) -> Result<MediaUrl, ErrorCode> {
        let Some(base) = &self.public_url else {
            return Err(ErrorCode::UnknownMedia);
        };
        match self.store.blob(blob) {
            Ok(Some(r)) if r.complete => {}
            Ok(_) => return Err(ErrorCode::UnknownMedia),
            Err(_) => return Err(ErrorCode::StorageUnavailable),
        }
        let expires_at_secs = now_ms() / 1000 + self.url_ttl.as_secs();
        let signed = Signed {
            expires: expires_at_secs,
            tag: self.signer.device_tag(user, device),
        };
        Ok(MediaUrl {
            blob: *blob,
            url: format!("{base}{}", self.signer.sign(blob, signed)),
            expires_at_secs,
        })
    }

    /// Removes blobs past their lifetime and uploads stalled for the stall timeout.
    pub async fn collect(&self) -> Collected {
        let mut done = Collected::default();
        let now = now_ms();
        for (blob, record) in self.store.blobs().unwrap_or_default() {
            if record.expires_at_ms <= now {
                self.forget(blob).await;
                done.expired += 1;
            }
        }
        for blob in self.files.stalled(self.stall).unwrap_or_default() {
            if self
                .upload(&blob)
                .is_some_and(|u| Arc::strong_count(&u) > 2)
            {
                continue; // a stream is writing to it right now
            }
            self.forget(blob).await;
            done.stalled += 1;
        }
        done
    }

    async fn forget(&self, blob: BlobId) {
        let _ = self.store.delete_blob(blob).await;
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&blob);
        let _ = self.files.remove(&blob);
        let _ = self.files.remove_partial(&blob);
        self.stats.blobs_deleted.fetch_add(1, Ordering::Relaxed);
    }

    /// Clamps `range` to `size`.
    pub fn clamp(range: ByteRange, size: u64) -> ByteRange {
        ByteRange {
            start: range.start.min(size),
            end: range.end.min(size),
        }
    }
}

/// Longest a write waits for other writes of its bytes (see [`wait_for_other_writes`]).
const OTHER_WRITES_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until no other write holds a claim on bytes `start..end` of `upload`: a write
/// whose bytes a write of an older try is still putting in the file answers only once they
/// are there, so a try whose last bytes another try wrote hears that the upload completed.
/// Returns the bytes held then, or `None` once the part is no longer open (another write
/// completed it), as `write_blocking` answers; after [`OTHER_WRITES_WAIT`] it answers with
/// what is held.
fn wait_for_other_writes(upload: &Upload, start: u64, end: u64) -> Option<u64> {
    let deadline = std::time::Instant::now() + OTHER_WRITES_WAIT;
    loop {
        {
            let slot = upload.lock().unwrap_or_else(|p| p.into_inner());
            let part = slot.part.as_ref()?;
            if !part.is_being_written(start, end) || std::time::Instant::now() >= deadline {
                return Some(part.ranges().len());
            }
        }
        // Rare (a resumed try racing a write of the try it replaced) and short-lived.
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
