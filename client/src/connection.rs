//! One connection's lifecycle: transport, login, and an orderly close.

use crate::frame_io::{FrameReader, FrameWriter};
use crate::login::{Login, LoginMode, LoginStep};
use crate::transport::{Transport, TransportCloser, TransportConfig, TransportKind};
use crate::{ClientError, Identity};
use missive_proto::{Bye, Frame, Welcome};
use std::time::Duration;

/// How long the opening exchange (Hello … Welcome) may take once the transport is up.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an orderly close waits for the server's `Bye`.
pub(crate) const BYE_TIMEOUT: Duration = Duration::from_secs(5);

/// A logged-in connection, ready for the session.
pub(crate) struct LiveConnection {
    /// QUIC or TCP.
    pub(crate) kind: TransportKind,
    /// Frames from the server.
    pub(crate) reader: FrameReader,
    /// Frames to the server.
    pub(crate) writer: FrameWriter,
    /// Keeps the QUIC connection alive; closes it.
    pub(crate) closer: TransportCloser,
    /// The server's maximum frame payload.
    pub(crate) max_frame: u32,
    /// The server's `Welcome`.
    pub(crate) welcome: Welcome,
}

/// Connects and logs in (or registers).
pub(crate) async fn establish(
    cfg: &TransportConfig,
    identity: &Identity,
    mode: LoginMode,
    client_name: &str,
) -> Result<LiveConnection, ClientError> {
    let transport = Transport::connect(cfg).await?;
    let kind = transport.kind();
    let exporter = transport.exporter();
    let (reader, writer, closer) = transport.into_parts();
    let mut reader = FrameReader::new(reader);
    let writer = FrameWriter::spawn(writer);
    let (mut login, hello) = Login::start(identity.clone(), mode, exporter, client_name);
    // On QUIC the server only sees the stream once something is written: Hello goes first.
    writer.send(&hello)?;
    let result = tokio::time::timeout(LOGIN_TIMEOUT, async {
        loop {
            let frame = match reader.next().await? {
                Some(f) => f,
                None => {
                    return Err(ClientError::ConnectionClosed(
                        "server closed the connection during login".into(),
                    ))
                }
            };
            match login.handle(frame) {
                LoginStep::Send(frames) => {
                    for f in &frames {
                        writer.send(f)?;
                    }
                }
                LoginStep::Welcome { welcome, max_frame } => return Ok((welcome, max_frame)),
                LoginStep::Fail(e) => return Err(e),
            }
        }
    })
    .await;
    match result {
        Ok(Ok((welcome, max_frame))) => Ok(LiveConnection {
            kind,
            reader,
            writer,
            closer,
            max_frame,
            welcome,
        }),
        Ok(Err(e)) => {
            writer.shutdown().await;
            closer.close().await;
            Err(e)
        }
        Err(_) => {
            writer.shutdown().await;
            closer.close().await;
            Err(ClientError::Timeout("waiting for the server to log us in"))
        }
    }
}

impl LiveConnection {
    /// Sends `Bye`, waits (at most [`BYE_TIMEOUT`]) for the server's `Bye`, then closes.
    ///
    /// Frames other than `Bye` that arrive meanwhile are ignored (this is used where nothing
    /// else runs on the connection, e.g. right after registering).
    pub(crate) async fn bye(mut self) -> Result<(), ClientError> {
        self.writer.send(&Bye {}.into())?;
        let wait = tokio::time::timeout(BYE_TIMEOUT, async {
            loop {
                match self.reader.next().await? {
                    Some(Frame::Bye(_)) => return Ok(()),
                    Some(Frame::Error(e)) => {
                        return Err(ClientError::from_error_frame(e.code, &e.message))
                    }
                    Some(_) => {}
                    None => {
                        return Err(ClientError::ConnectionClosed(
                            "server closed without answering Bye".into(),
                        ))
                    }
                }
            }
        })
        .await;
        self.close().await;
        match wait {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout("waiting for the server's Bye")),
        }
    }

    /// Publishes this new device's keys (identity, one-time keys, fallback) when the server
    /// asks for them (`KeysLow`, right after the `Welcome` of a registration), so that others
    /// can encrypt to it before it ever connects again.
    pub(crate) async fn publish_keys(&mut self, identity: &Identity) -> Result<(), ClientError> {
        let wait = tokio::time::timeout(BYE_TIMEOUT, async {
            loop {
                match self.reader.next().await? {
                    Some(Frame::KeysLow(k)) => {
                        let upload = identity.e2ee.lock().upload(
                            (&identity.user, identity.device, &identity.signing_key),
                            1,
                            k.one_time_keys,
                            k.fallback_used,
                            k.has_identity,
                            self.max_frame,
                        );
                        // Saved first: keys the server holds must be ones we keep.
                        identity.e2ee.save()?;
                        self.writer.send(&upload.into())?;
                    }
                    Some(Frame::KeysStored(_)) => return Ok(()),
                    Some(Frame::RequestRefused(r)) => {
                        return Err(ClientError::Server {
                            code: r.code,
                            message: r.message,
                        })
                    }
                    Some(Frame::Error(e)) => {
                        return Err(ClientError::from_error_frame(e.code, &e.message))
                    }
                    Some(_) => {}
                    None => {
                        return Err(ClientError::ConnectionClosed(
                            "server closed before storing the device's keys".into(),
                        ))
                    }
                }
            }
        })
        .await;
        match wait {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout("publishing the device's keys")),
        }
    }

    /// Shuts the write side down and closes the transport, without a `Bye` exchange.
    pub(crate) async fn close(self) {
        self.writer.shutdown().await;
        drop(self.reader);
        self.closer.close().await;
    }
}
