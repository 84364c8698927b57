//! Resumable, parallel uploads of a ciphertext file.

use super::stream::TransferStream;
use super::{Links, Progress};
use crate::ClientError;
use missive_proto::{BlobId, ByteRange, Frame, MediaChunk, MediaUploadOpen};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Smallest and largest chunk; a stream's chunks grow while they go fast and shrink when slow.
const MIN_CHUNK: u64 = 64 * 1024;
const MAX_CHUNK: u64 = 1024 * 1024;
const FIRST_CHUNK: u64 = 256 * 1024;
/// Chunks a stream has sent and not yet had acknowledged.
const IN_FLIGHT: usize = 2;
/// A chunk acknowledged faster than this doubles the next; slower than `SLOW` halves it.
const FAST: Duration = Duration::from_millis(100);
const SLOW: Duration = Duration::from_millis(500);

/// A file to upload: its ciphertext on disk and what the edge must know of it.
#[derive(Debug, Clone)]
pub struct UploadSource {
    /// The ciphertext file.
    pub path: PathBuf,
    /// BLAKE3 of the ciphertext.
    pub blob: BlobId,
    /// Ciphertext size.
    pub size: u64,
    /// Recipient devices expected to download it (the edge deletes it after that many).
    pub downloads: u32,
}

/// What an upload did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadReport {
    /// Bytes this call sent.
    pub sent: u64,
    /// Bytes the edge already held when this call started (resumed, or the same ciphertext
    /// was uploaded before).
    pub already_held: u64,
    /// Connections the upload went through (1 unless it resumed after a loss).
    pub connections: u32,
}

/// Uploads `src` on `parallel` streams, resuming after connection losses.
pub(crate) async fn upload(
    links: &mut Links,
    src: &UploadSource,
    parallel: usize,
    progress: Arc<dyn Fn(Progress) + Send + Sync>,
) -> Result<UploadReport, ClientError> {
    let mut report = UploadReport::default();
    let mut failed: Option<super::Opener> = None;
    let sent = Arc::new(AtomicU64::new(0));
    loop {
        let conn = links.connection(failed.as_ref()).await?;
        report.connections += 1;
        match attempt(&conn, src, parallel.max(1), &progress, &sent).await {
            Ok(held_at_start) => {
                if report.connections == 1 {
                    report.already_held = held_at_start;
                }
                report.sent = sent.load(Ordering::Relaxed);
                return Ok(report);
            }
            Err(e @ (ClientError::ConnectionClosed(_) | ClientError::MalformedFrame(_))) => {
                tracing::info!(error = %e, "upload interrupted; resuming on the next connection");
                failed = Some(conn);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The bytes of `0..size` not in `have`.
pub(crate) fn missing(size: u64, have: &[ByteRange]) -> VecDeque<ByteRange> {
    let mut out = VecDeque::new();
    let mut at = 0;
    let mut have = have.to_vec();
    have.sort_by_key(|r| r.start);
    for r in have {
        if r.start > at {
            out.push_back(ByteRange {
                start: at,
                end: r.start.min(size),
            });
        }
        at = at.max(r.end);
    }
    if at < size {
        out.push_back(ByteRange {
            start: at,
            end: size,
        });
    }
    out
}

/// Work shared by the streams of one attempt.
struct Shared {
    queue: Mutex<VecDeque<ByteRange>>,
    held: AtomicU64,
    complete: AtomicBool,
}

impl Shared {
    fn take(&self, max: u64) -> Option<ByteRange> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let first = q.front_mut()?;
        let end = first.end.min(first.start + max);
        let chunk = ByteRange {
            start: first.start,
            end,
        };
        first.start = end;
        if first.start >= first.end {
            q.pop_front();
        }
        Some(chunk)
    }
}

/// One try on one connection; returns the bytes the edge held when it started.
async fn attempt(
    conn: &super::Opener,
    src: &UploadSource,
    parallel: usize,
    progress: &Arc<dyn Fn(Progress) + Send + Sync>,
    sent: &Arc<AtomicU64>,
) -> Result<u64, ClientError> {
    let open: Frame = MediaUploadOpen {
        blob: src.blob,
        size: src.size,
        downloads: src.downloads,
        attempt: rand::random(),
    }
    .into();
    let mut first = conn.open().await?;
    first.send(open.clone()).await?;
    let state = match first.next().await? {
        Some(Frame::MediaUploadState(s)) => s,
        Some(other) => return Err(unexpected(&other)),
        None => return Err(ClientError::ConnectionClosed("upload stream ended".into())),
    };
    let held: u64 = state.have.iter().map(|r| r.end - r.start).sum();
    progress(Progress {
        done: held,
        total: src.size,
    });
    if state.complete {
        return Ok(src.size);
    }
    let file = Arc::new(std::fs::File::open(&src.path)?);
    let shared = Arc::new(Shared {
        queue: Mutex::new(missing(src.size, &state.have)),
        held: AtomicU64::new(held),
        complete: AtomicBool::new(false),
    });
    let mut workers = tokio::task::JoinSet::new();
    let mut first = Some(first);
    for _ in 0..parallel {
        let stream = first.take();
        let (conn, open, shared, file, progress, sent) = (
            conn.clone(),
            open.clone(),
            shared.clone(),
            file.clone(),
            progress.clone(),
            sent.clone(),
        );
        let total = src.size;
        workers.spawn(async move {
            let mut stream = match stream {
                Some(s) => s,
                None => {
                    if shared
                        .queue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_empty()
                    {
                        return Ok(());
                    }
                    let mut s = conn.open().await?;
                    s.send(open.clone()).await?;
                    match s.next().await? {
                        Some(Frame::MediaUploadState(st)) if st.complete => {
                            shared.complete.store(true, Ordering::Release);
                            return Ok(());
                        }
                        Some(Frame::MediaUploadState(_)) => s,
                        Some(other) => return Err(unexpected(&other)),
                        None => {
                            return Err(ClientError::ConnectionClosed("upload stream ended".into()))
                        }
                    }
                }
            };
            worker(&mut stream, &shared, &file, total, &progress, &sent).await
        });
    }
    let mut first_error = None;
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
                workers.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                first_error.get_or_insert(ClientError::InvalidInput(format!("upload task: {e}")));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if shared.complete.load(Ordering::Acquire) {
        Ok(held)
    } else {
        Err(ClientError::ConnectionClosed(
            "the edge did not confirm the upload".into(),
        ))
    }
}

/// Sends chunks from the shared queue on `stream`, [`IN_FLIGHT`] at a time (the next goes
/// out while the edge writes the last), until none is left.
async fn worker(
    stream: &mut TransferStream,
    shared: &Shared,
    file: &Arc<std::fs::File>,
    total: u64,
    progress: &Arc<dyn Fn(Progress) + Send + Sync>,
    sent: &AtomicU64,
) -> Result<(), ClientError> {
    let mut chunk_size = FIRST_CHUNK;
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(IN_FLIGHT);
    let mut drained = false;
    loop {
        while !drained && in_flight.len() < IN_FLIGHT {
            let Some(range) = shared.take(chunk_size) else {
                drained = true;
                break;
            };
            let len = (range.end - range.start) as usize;
            let f = file.clone();
            let bytes = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; len];
                f.read_exact_at(&mut buf, range.start).map(|_| buf)
            })
            .await
            .map_err(|e| ClientError::InvalidInput(format!("reading the file: {e}")))??;
            in_flight.push_back(Instant::now());
            stream
                .send(
                    MediaChunk {
                        offset: range.start,
                        bytes,
                    }
                    .into(),
                )
                .await?;
            sent.fetch_add(len as u64, Ordering::Relaxed);
        }
        let Some(started) = in_flight.pop_front() else {
            break;
        };
        match stream.next().await? {
            Some(Frame::MediaChunkAck(ack)) => {
                let done = shared
                    .held
                    .fetch_max(ack.held, Ordering::AcqRel)
                    .max(ack.held);
                progress(Progress { done, total });
                if ack.held >= total {
                    // The last byte: the edge verifies the hash and confirms.
                    match stream.next().await? {
                        Some(Frame::MediaUploadState(s)) if s.complete => {
                            shared.complete.store(true, Ordering::Release);
                        }
                        Some(other) => return Err(unexpected(&other)),
                        None => {}
                    }
                    break;
                }
            }
            Some(Frame::MediaUploadState(s)) if s.complete => {
                shared.complete.store(true, Ordering::Release);
                break;
            }
            Some(other) => return Err(unexpected(&other)),
            None => return Err(ClientError::ConnectionClosed("upload stream ended".into())),
        }
        // A chunk's time from its send to its ack, with one before it in flight: twice what
        // it takes alone.
        let took = started.elapsed() / IN_FLIGHT as u32;
        if took < FAST {
            chunk_size = (chunk_size * 2).min(MAX_CHUNK);
        } else if took > SLOW {
            chunk_size = (chunk_size / 2).max(MIN_CHUNK);
        }
    }
    stream.finish();
    Ok(())
}

fn unexpected(frame: &Frame) -> ClientError {
    ClientError::UnexpectedFrame {
        frame: frame.name(),
        state: "a media transfer answer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_the_complement_of_what_is_held() {
        let r = |start, end| ByteRange { start, end };
        assert_eq!(missing(10, &[]), vec![r(0, 10)]);
        assert_eq!(missing(10, &[r(0, 10)]), Vec::<ByteRange>::new());
        assert_eq!(
            missing(10, &[r(6, 8), r(2, 4)]),
            vec![r(0, 2), r(4, 6), r(8, 10)]
        );
        assert_eq!(missing(0, &[]), Vec::<ByteRange>::new());
    }
}
