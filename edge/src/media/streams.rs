//! The I/O around [`Transfer`]: accepts a logged-in QUIC connection's transfer streams, and
//! runs each (or a TCP+TLS connection that logged in for one transfer) through its machine,
//! with the media service doing the work.

use super::service::MediaService;
use super::transfer::{Effect, Transfer, MAX_TRANSFER_FRAME};
use crate::budget::{Rate, TokenBucket};
use missive_proto::{
    encode_owned_to_chunks, encode_to_vec, ErrorCode, Frame, FrameDecoder, MediaData,
    RequestRefused,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes per `MediaData` frame of a download.
const DOWNLOAD_FRAME: usize = 256 * 1024;
/// Time a stream may take to name its transfer.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a stream may go without a frame while an upload is open.
const STREAM_IDLE: Duration = Duration::from_secs(120);
/// Connection-level flow-control window of a connection once it transfers media.
const TRANSFER_WINDOW: u32 = 8 * 1024 * 1024;
/// Burst of transfers a connection may open at once.
const TRANSFER_BURST: u32 = 32;

/// Who a connection's transfers belong to, known once its control stream logged in.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The user.
    pub user: String,
    /// The device.
    pub device: u32,
}

/// Serves `conn`'s transfer streams once `login` names its owner, until it closes.
pub async fn accept(
    conn: quinn::Connection,
    login: tokio::sync::oneshot::Receiver<Owner>,
    media: Arc<MediaService>,
    transfers_per_min: u32,
) {
    let Ok(owner) = login.await else {
        return;
    };
    let owner = Arc::new(owner);
    let mut widened = false;
    let mut budget = TokenBucket::new(
        Rate::per_minute(transfers_per_min, TRANSFER_BURST),
        Instant::now(),
    );
    while let Ok((mut send, recv)) = conn.accept_bi().await {
        if !widened {
            // Chat needs small windows (they bound what a peer can make the edge buffer);
            // a connection that transfers media gets room for several chunks in flight.
            conn.set_receive_window(TRANSFER_WINDOW.into());
            conn.set_send_window(u64::from(TRANSFER_WINDOW));
            widened = true;
        }
        if !budget.try_take(Instant::now(), 1.0) {
            let refusal: Frame =
                RequestRefused::new(0, ErrorCode::RateLimited, "too many transfers; slow down")
                    .into();
            tokio::spawn(async move {
                if let Ok(bytes) = encode_to_vec(&refusal) {
                    let _ = send.write_all(&bytes).await;
                }
                let _ = send.finish();
            });
            continue;
        }
        tokio::spawn(serve_transfer(
            TransferReader::Quic(recv),
            TransferWriter::Quic(send),
            FrameDecoder::new(MAX_TRANSFER_FRAME),
            media.clone(),
            owner.clone(),
        ));
    }
}

/// The reading side of a transfer.
pub enum TransferReader {
    /// A QUIC stream: its received chunks are taken as they are, not copied out first.
    Quic(quinn::RecvStream),
    /// A TLS stream's read half.
    Stream(Box<dyn AsyncRead + Send + Unpin>),
}

impl TransferReader {
    /// Reads what has arrived into `decoder`; how many bytes, 0 at the end of the stream.
    async fn read_into(&mut self, decoder: &mut FrameDecoder) -> std::io::Result<usize> {
        match self {
            Self::Quic(recv) => match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => {
                    decoder.feed(&chunk.bytes);
                    Ok(chunk.bytes.len())
                }
                Ok(None) => Ok(0),
                Err(e) => Err(e.into()),
            },
            Self::Stream(recv) => {
                let mut buf = [0u8; 16 * 1024];
                let n = recv.read(&mut buf).await?;
                decoder.feed(&buf[..n]);
                Ok(n)
            }
        }
    }

    /// Reads what has arrived and drops it; how many bytes, 0 at the end of the stream.
    async fn skip_some(&mut self) -> std::io::Result<usize> {
        match self {
            Self::Quic(recv) => match recv.read_chunk(usize::MAX, true).await {
                Ok(chunk) => Ok(chunk.map_or(0, |c| c.bytes.len())),
                Err(e) => Err(e.into()),
            },
            Self::Stream(recv) => {
                let mut buf = [0u8; 16 * 1024];
                recv.read(&mut buf).await
            }
        }
    }
}

/// The writing side of a transfer.
pub enum TransferWriter {
    /// A QUIC stream: frames are handed to quinn as owned chunks, not copied into it.
    Quic(quinn::SendStream),
    /// A TLS stream's write half.
    Stream(Box<dyn AsyncWrite + Send + Unpin>),
}

impl TransferWriter {
    /// Writes one frame. Over QUIC it goes to quinn as owned chunks, a `MediaData`'s bytes
    /// as they are (the archive is written around them, not with a copy of them).
    async fn send(&mut self, frame: Frame) -> Result<(), ()> {
        match self {
            Self::Quic(send) => {
                let mut chunks = encode_owned_to_chunks(frame).map_err(|_| ())?;
                send.write_all_chunks(&mut chunks).await.map_err(|_| ())
            }
            Self::Stream(send) => {
                let bytes = encode_to_vec(&frame).map_err(|_| ())?;
                send.write_all(&bytes).await.map_err(|_| ())
            }
        }
    }

    /// Ends the writing side (a QUIC stream's FIN, a TLS close).
    async fn shutdown(&mut self) {
        match self {
            Self::Quic(send) => {
                let _ = send.finish();
            }
            Self::Stream(send) => {
                let _ = send.shutdown().await;
            }
        }
    }
}

/// Runs one transfer to its end; `decoder` may hold bytes read already. Errors only end
/// this transfer. Finishing shuts the writing side down (a QUIC stream's FIN), then reads
/// what the client still sends (its own close) for a moment: a TCP socket dropped with
/// unread input is reset, and a reset can destroy answers the client has not read yet.
pub async fn serve_transfer(
    mut recv: TransferReader,
    send: TransferWriter,
    decoder: FrameDecoder,
    media: Arc<MediaService>,
    owner: Arc<Owner>,
) {
    run_transfer(&mut recv, send, decoder, media, owner).await;
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = recv.skip_some().await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// How long a finished transfer waits for the client's side to close.
const LINGER: Duration = Duration::from_secs(2);

async fn run_transfer(
    recv: &mut TransferReader,
    mut send: TransferWriter,
    mut decoder: FrameDecoder,
    media: Arc<MediaService>,
    owner: Arc<Owner>,
) {
    let mut machine = Transfer::new();
    let mut effects = Vec::new();
    loop {
        for effect in std::mem::take(&mut effects) {
            let more = match effect {
                Effect::Reply(frame) => {
                    if write(&mut send, frame).await.is_err() {
                        return;
                    }
                    Vec::new()
                }
                Effect::Open(open) => {
                    let outcome = media.open(&owner.user, &open).await;
                    machine.opened(outcome)
                }
                Effect::Write {
                    blob,
                    attempt,
                    offset,
                    bytes,
                } => {
                    let outcome = media.write(blob, attempt, offset, bytes).await;
                    machine.written(outcome)
                }
                Effect::Send { blob, range } => {
                    send_range(&mut send, &media, &owner, blob, range).await;
                    send.shutdown().await;
                    return;
                }
                Effect::Sign(blob) => {
                    let frame: Frame = match media.sign(&blob, &owner.user, owner.device) {
                        Ok(url) => url.into(),
                        Err(code) => RequestRefused::new(0, code, "no signed URL for that").into(),
                    };
                    let _ = write(&mut send, frame).await;
                    send.shutdown().await;
                    return;
                }
                Effect::Finish => {
                    send.shutdown().await;
                    return;
                }
            };
            effects.extend(more);
        }
        if !effects.is_empty() {
            continue;
        }
        if machine.is_done() {
            send.shutdown().await;
            return;
        }
        match decoder.next_frame() {
            Ok(Some(frame)) => {
                effects = machine.on_frame(frame);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                let refusal: Frame = RequestRefused::new(0, e.code(), e.to_string()).into();
                let _ = write(&mut send, refusal).await;
                send.shutdown().await;
                return;
            }
        }
        let wait = if machine.is_waiting_for_first() {
            FIRST_FRAME_TIMEOUT
        } else {
            STREAM_IDLE
        };
        match tokio::time::timeout(wait, recv.read_into(&mut decoder)).await {
            Ok(Ok(n)) if n > 0 => {}
            // Closed, reset, or silent for too long: the transfer is left to resume later.
            _ => return,
        }
    }
}

async fn write(send: &mut TransferWriter, frame: Frame) -> Result<(), ()> {
    send.send(frame).await
}

/// Sends `range` of `blob` as `MediaData` frames (or a refusal); a download that reaches the
/// blob's last byte counts as this device's.
/// Reads up to [`DOWNLOAD_FRAME`] bytes of `file` from `offset` (below `end`) on a blocking
/// thread.
fn read_piece(
    file: &Arc<std::fs::File>,
    offset: u64,
    end: u64,
) -> tokio::task::JoinHandle<std::io::Result<(u64, Vec<u8>)>> {
    let file = file.clone();
    let len = ((end - offset) as usize).min(DOWNLOAD_FRAME);
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map(|_| (offset, buf))
    })
}

async fn send_range(
    send: &mut TransferWriter,
    media: &Arc<MediaService>,
    owner: &Owner,
    blob: missive_proto::BlobId,
    range: missive_proto::ByteRange,
) {
    let (file, size) = match media.source(&blob) {
        Ok(s) => s,
        Err(code) => {
            let refusal: Frame = RequestRefused::new(0, code, "no such media").into();
            let _ = write(send, refusal).await;
            return;
        }
    };
    let range = MediaService::clamp(range, size);
    let file = Arc::new(file);
    // The next piece is read while the last one is sent.
    let mut next = (range.start < range.end).then(|| read_piece(&file, range.start, range.end));
    while let Some(reading) = next.take() {
        let Ok(Ok((offset, bytes))) = reading.await else {
            return;
        };
        let len = bytes.len() as u64;
        if offset + len < range.end {
            next = Some(read_piece(&file, offset + len, range.end));
        }
        let frame: Frame = MediaData {
            offset,
            size,
            bytes,
        }
        .into();
        if send.send(frame).await.is_err() {
            return;
        }
        media
            .stats
            .bytes_sent
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    }
    if range.end == size {
        let tag = media.signer().device_tag(&owner.user, owner.device);
        media.downloaded(blob, tag).await;
    }
}
