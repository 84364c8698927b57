//! Moving frames over a transport: a decoding reader and a batching writer task.

use crate::transport::{TransportReader, TransportWriter};
use crate::ClientError;
use missive_proto::{encode, Frame, FrameDecoder, HARD_MAX_FRAME};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The send limit assumed until the server announces its own (`ServerHello`).
pub(crate) const MIN_RECV_FRAME: usize = 1024 * 1024;
/// A write batch is flushed once it reaches this size even if more frames are queued.
const MAX_BATCH: usize = 256 * 1024;
/// How long the writer may take to flush and shut down when told to stop.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Reads bytes from the transport and yields validated frames.
///
/// [`FrameReader::next`] is cancel-safe (all state lives in `self`), so it can sit in a
/// `tokio::select!`.
pub(crate) struct FrameReader {
    reader: TransportReader,
    decoder: FrameDecoder,
    buf: Box<[u8]>,
}

impl FrameReader {
    /// A reader accepting frames up to the protocol's hard cap, whatever the server announced:
    /// an item stored while the server allowed larger frames (its limit can be lowered on a
    /// reload) must still be readable, or it would block every later item of the mailbox.
    pub(crate) fn new(reader: TransportReader) -> Self {
        Self {
            reader,
            decoder: FrameDecoder::new(HARD_MAX_FRAME),
            buf: vec![0u8; 64 * 1024].into_boxed_slice(),
        }
    }

    /// The next frame, `Ok(None)` on a clean end of stream.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, ClientError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            let n = self.reader.read(&mut self.buf).await?;
            if n == 0 {
                if self.decoder.buffered() > 0 {
                    return Err(ClientError::ConnectionClosed(
                        "server closed the stream inside a frame".into(),
                    ));
                }
                return Ok(None);
            }
            self.decoder.feed(&self.buf[..n]);
        }
    }

    /// A frame that is already complete in the buffer, without reading more.
    pub(crate) fn next_buffered(&mut self) -> Result<Option<Frame>, ClientError> {
        Ok(self.decoder.next_frame()?)
    }
}

/// Handle to the writer task: queue encoded frames; the task batches them into few writes.
pub(crate) struct FrameWriter {
    tx: Option<mpsc::UnboundedSender<Vec<u8>>>,
    task: JoinHandle<Result<(), ClientError>>,
    finished: bool,
}

impl FrameWriter {
    /// Spawns the writer task over `writer`.
    pub(crate) fn spawn(writer: TransportWriter) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_loop(writer, rx));
        Self {
            tx: Some(tx),
            task,
            finished: false,
        }
    }

    /// Encodes and queues `frame`. Fails only when the writer task has stopped or the frame
    /// cannot be encoded.
    pub(crate) fn send(&self, frame: &Frame) -> Result<(), ClientError> {
        let mut bytes = Vec::new();
        encode(frame, &mut bytes)?;
        match &self.tx {
            Some(tx) => tx
                .send(bytes)
                .map_err(|_| ClientError::ConnectionClosed("writer stopped".into())),
            None => Err(ClientError::ConnectionClosed("writer shut down".into())),
        }
    }

    /// Resolves when the writer task ends on its own (a write failed). Cancel-safe; after it
    /// resolved once it never resolves again.
    pub(crate) async fn failed(&mut self) -> ClientError {
        if self.finished {
            return std::future::pending().await;
        }
        let res = (&mut self.task).await;
        self.finished = true;
        match res {
            Ok(Ok(())) => ClientError::ConnectionClosed("writer finished".into()),
            Ok(Err(e)) => e,
            Err(e) => ClientError::ConnectionClosed(format!("writer task failed: {e}")),
        }
    }

    /// Flushes what is queued, shuts the write side down (QUIC: finish the stream; TLS:
    /// close_notify) and waits for that, bounded.
    pub(crate) async fn shutdown(mut self) {
        self.tx = None;
        if !self.finished {
            match tokio::time::timeout(SHUTDOWN_WAIT, &mut self.task).await {
                Ok(_) => {}
                Err(_) => self.task.abort(),
            }
        }
    }
}

impl Drop for FrameWriter {
    fn drop(&mut self) {
        // Without an orderly shutdown the task ends when the channel closes; nothing else to do.
        self.tx = None;
    }
}

async fn write_loop(
    mut writer: TransportWriter,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) -> Result<(), ClientError> {
    let mut batch: Vec<u8> = Vec::with_capacity(16 * 1024);
    while let Some(first) = rx.recv().await {
        batch.extend_from_slice(&first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        writer.write_all(&batch).await?;
        batch.clear();
        if rx.is_empty() {
            // One flush per batch: TLS emits its records here, not once per frame.
            writer.flush().await?;
        }
    }
    writer.flush().await?;
    writer.shutdown().await?;
    Ok(())
}
