//! Downloads of a blob's ciphertext into a file, resumed from what the file holds.

use super::{Links, Progress};
use crate::ClientError;
use missive_proto::{BlobId, ByteRange, Frame, MediaDownload};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Downloads `size` bytes of `blob` into `out`, appending to what it holds already (a
/// resumed download); resumes after connection losses.
pub(crate) async fn download(
    links: &mut Links,
    blob: BlobId,
    size: u64,
    out: &Path,
    progress: Arc<dyn Fn(Progress) + Send + Sync>,
) -> Result<(), ClientError> {
    let mut failed: Option<super::Opener> = None;
    loop {
        let have = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        if have > size {
            return Err(ClientError::MediaInvalid(format!(
                "{} holds {have} bytes, more than the blob's {size}",
                out.display()
            )));
        }
        if have == size {
            return Ok(());
        }
        let conn = links.connection(failed.as_ref()).await?;
        match attempt(&conn, blob, have, size, out, &progress).await {
            Ok(()) => {}
            Err(e @ ClientError::ConnectionClosed(_)) => {
                tracing::info!(error = %e, "download interrupted; resuming on the next connection");
                failed = Some(conn);
            }
            Err(e) => return Err(e),
        }
    }
}

async fn attempt(
    conn: &super::Opener,
    blob: BlobId,
    from: u64,
    size: u64,
    out: &Path,
    progress: &Arc<dyn Fn(Progress) + Send + Sync>,
) -> Result<(), ClientError> {
    let mut stream = conn.open().await?;
    stream
        .send(
            MediaDownload {
                blob,
                range: ByteRange {
                    start: from,
                    end: size,
                },
            }
            .into(),
        )
        .await?;
    stream.finish();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)?;
    // The file is written on a blocking thread while the next frames arrive; a few frames
    // may wait for it, no more.
    let (pieces, written) = tokio::sync::mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let writer = tokio::task::spawn_blocking(move || write_pieces(file, written));
    let received = receive(&mut stream, from, size, &pieces, progress).await;
    drop(pieces);
    // Whatever happened, the file holds exactly what was written before this returns: a
    // resumed download starts from its length.
    let wrote = writer
        .await
        .map_err(|e| ClientError::from(std::io::Error::other(e.to_string())))?;
    let at = received?;
    wrote?;
    if at == size {
        Ok(())
    } else {
        Err(ClientError::ConnectionClosed(format!(
            "download stream ended at {at} of {size} bytes"
        )))
    }
}

/// Frames received but not yet written to the file.
const WRITE_QUEUE: usize = 4;

/// Appends every piece to `file` until the channel closes.
fn write_pieces(
    mut file: std::fs::File,
    mut pieces: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    while let Some(piece) = pieces.blocking_recv() {
        file.write_all(&piece)?;
    }
    file.flush()
}

/// Checks each `MediaData` frame of the stream and queues its bytes for the file; the offset
/// reached.
async fn receive(
    stream: &mut super::stream::TransferStream,
    from: u64,
    size: u64,
    pieces: &tokio::sync::mpsc::Sender<Vec<u8>>,
    progress: &Arc<dyn Fn(Progress) + Send + Sync>,
) -> Result<u64, ClientError> {
    let mut at = from;
    while let Some(frame) = stream.next().await? {
        let Frame::MediaData(data) = frame else {
            return Err(ClientError::UnexpectedFrame {
                frame: frame.name(),
                state: "media data",
            });
        };
        if data.size != size {
            return Err(ClientError::MediaInvalid(format!(
                "the edge holds {} bytes of this blob; the message says {size}",
                data.size
            )));
        }
        if data.offset != at || at + data.bytes.len() as u64 > size {
            return Err(ClientError::MediaInvalid(format!(
                "the edge sent bytes at {} of a {}-byte blob; expected {at} of {size}",
                data.offset, data.size
            )));
        }
        at += data.bytes.len() as u64;
        if pieces.send(data.bytes).await.is_err() {
            // The writer stopped: its error is what the caller reports.
            break;
        }
        progress(Progress {
            done: at,
            total: size,
        });
        if at == size {
            // Everything is here; how the stream ends after that no longer matters.
            break;
        }
    }
    Ok(at)
}
