//! Frames on one transfer stream.

use crate::ClientError;
use missive_proto::{encode_to_vec, Frame, FrameDecoder};

/// Largest frame read from a transfer stream (a 1 MiB chunk and its header).
const MAX_FRAME: usize = 1024 * 1024 + 1024;

/// One bidirectional transfer stream.
pub(crate) struct TransferStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl TransferStream {
    /// Opens a stream on `conn`.
    pub(crate) async fn open(conn: &quinn::Connection) -> Result<Self, ClientError> {
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::ConnectionClosed(e.to_string()))?;
        Ok(Self {
            send,
            recv,
            decoder: FrameDecoder::new(MAX_FRAME),
        })
    }

    /// Sends `frame`.
    pub(crate) async fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        let bytes = encode_to_vec(frame)?;
        self.send
            .write_all(&bytes)
            .await
            .map_err(|e| ClientError::ConnectionClosed(e.to_string()))
    }

    /// The next frame; `None` when the edge finished the stream. A `RequestRefused` comes
    /// back as [`ClientError::MediaRefused`].
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, ClientError> {
        loop {
            match self.decoder.next_frame()? {
                Some(Frame::RequestRefused(r)) => {
                    return Err(ClientError::MediaRefused {
                        code: r.code,
                        message: r.message,
                    })
                }
                Some(f) => return Ok(Some(f)),
                None => {}
            }
            match self.recv.read_chunk(256 * 1024, true).await {
                Ok(Some(chunk)) => self.decoder.feed(&chunk.bytes),
                Ok(None) => return Ok(None),
                Err(e) => return Err(ClientError::ConnectionClosed(e.to_string())),
            }
        }
    }

    /// Finishes the sending side.
    pub(crate) fn finish(&mut self) {
        let _ = self.send.finish();
    }
}
