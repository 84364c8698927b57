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
            &MediaDownload {
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
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)?;
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
        file.write_all(&data.bytes)?;
        at += data.bytes.len() as u64;
        progress(Progress {
            done: at,
            total: size,
        });
        if at == size {
            // Everything is here; how the stream ends after that no longer matters.
            break;
        }
    }
    file.flush()?;
    if at == size {
        Ok(())
    } else {
        Err(ClientError::ConnectionClosed(format!(
            "download stream ended at {at} of {size} bytes"
        )))
    }
}
