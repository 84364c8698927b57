//! Frames on one transfer stream.

use crate::ClientError;
use missive_proto::{encode_owned_to_chunks, Frame, FrameDecoder};

/// Largest frame read from a transfer stream (a 1 MiB chunk and its header).
const MAX_FRAME: usize = 1024 * 1024 + 1024;

/// One transfer: a QUIC stream of the logged-in connection, or (over the TCP+TLS fallback)
/// a TLS connection of its own that logged in for this transfer only.
pub(crate) enum TransferStream {
    Quic {
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        decoder: FrameDecoder,
    },
    Tcp {
        reader: crate::frame_io::FrameReader,
        writer: Option<crate::frame_io::FrameWriter>,
        /// Keeps the connection open; dropped with the stream.
        _closer: crate::transport::TransportCloser,
        /// See [`super::TcpTransfers::lost`].
        lost: tokio::sync::watch::Receiver<bool>,
    },
}

impl TransferStream {
    /// Opens a stream on `conn`.
    pub(crate) async fn open(conn: &quinn::Connection) -> Result<Self, ClientError> {
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::ConnectionClosed(e.to_string()))?;
        Ok(Self::Quic {
            send,
            recv,
            decoder: FrameDecoder::new(MAX_FRAME),
        })
    }

    /// Connects over TCP+TLS and logs in for one transfer.
    pub(crate) async fn open_tcp(via: &super::TcpTransfers) -> Result<Self, ClientError> {
        let live = crate::connection::establish(
            &via.transport,
            &via.identity,
            crate::login::LoginMode::Transfer,
            &via.client_name,
        )
        .await
        .map_err(|e| match e {
            e if e.is_fatal() => e,
            e => ClientError::ConnectionClosed(e.to_string()),
        })?;
        Ok(Self::Tcp {
            reader: live.reader,
            writer: Some(live.writer),
            _closer: live.closer,
            lost: via.lost.clone(),
        })
    }

    /// Sends `frame`. Over QUIC it goes to quinn as owned chunks, a `MediaChunk`'s bytes as
    /// they are (the archive is written around them): a 1 MiB chunk is not copied.
    pub(crate) async fn send(&mut self, frame: Frame) -> Result<(), ClientError> {
        match self {
            Self::Quic { send, .. } => {
                let mut chunks = encode_owned_to_chunks(frame)?;
                send.write_all_chunks(&mut chunks)
                    .await
                    .map_err(|e| ClientError::ConnectionClosed(e.to_string()))
            }
            Self::Tcp { writer, .. } => writer
                .as_ref()
                .ok_or_else(|| ClientError::ConnectionClosed("transfer finished".into()))?
                .send(&frame)
                .map_err(|e| ClientError::ConnectionClosed(e.to_string())),
        }
    }

    /// The next frame; `None` when the edge finished the stream. A `RequestRefused` comes
    /// back as [`ClientError::MediaRefused`].
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, ClientError> {
        let frame = match self {
            Self::Quic { recv, decoder, .. } => loop {
                if let Some(f) = decoder.next_frame()? {
                    break Some(f);
                }
                match recv.read_chunk(256 * 1024, true).await {
                    Ok(Some(chunk)) => decoder.feed(&chunk.bytes),
                    Ok(None) => break None,
                    Err(e) => return Err(ClientError::ConnectionClosed(e.to_string())),
                }
            },
            Self::Tcp { reader, lost, .. } => tokio::select! {
                r = reader.next() => r.map_err(|e| ClientError::ConnectionClosed(e.to_string()))?,
                _ = lost.wait_for(|l| *l) => {
                    return Err(ClientError::ConnectionClosed(
                        "the connection it came with was lost".into(),
                    ))
                }
            },
        };
        match frame {
            Some(Frame::RequestRefused(r)) => Err(ClientError::MediaRefused {
                code: r.code,
                message: r.message,
            }),
            other => Ok(other),
        }
    }

    /// Finishes the sending side.
    pub(crate) fn finish(&mut self) {
        match self {
            Self::Quic { send, .. } => {
                let _ = send.finish();
            }
            Self::Tcp { writer, .. } => {
                // Frames already queued still go out; the edge ends the connection.
                if let Some(w) = writer.take() {
                    tokio::spawn(w.shutdown());
                }
            }
        }
    }
}
