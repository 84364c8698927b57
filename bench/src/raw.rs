//! Frame-level connections for scenarios that measure the edge without the SDK in the way
//! (the `group` scenario counts group deliveries without decrypting them): connect, log in
//! with a registered [`Identity`], send and receive frames.

use crate::fleet::User;
use missive_client::transport::{Transport, TransportConfig, TransportReader, TransportWriter};
use missive_client::Identity;
use missive_proto::{encode, Frame, FrameDecoder, Hello, Login};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the login exchange may take before it counts as a failure.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Bytes read from the transport at once.
const READ_CHUNK: usize = 64 * 1024;

/// The receiving half of a raw connection: bytes in, frames out.
pub struct RawReader {
    reader: TransportReader,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

/// The sending half of a raw connection.
pub struct RawWriter {
    writer: TransportWriter,
    bytes: Vec<u8>,
}

/// What [`RawReader::recv_within`] found.
#[derive(Debug)]
pub enum Received {
    /// A frame.
    Frame(Frame),
    /// Nothing arrived in time.
    Silence,
    /// The edge closed the connection.
    Closed,
}

/// Connects to the edge as `user` and logs in with its identity (the user must be
/// registered, e.g. by [`crate::fleet::register_users`]). Frames the edge sends after
/// `Welcome` stay in the returned reader.
pub async fn login(user: &User) -> Result<(RawReader, RawWriter), String> {
    let c = &user.config;
    let cfg = TransportConfig {
        server: c.server,
        server_name: c.server_name.clone(),
        ca_pem: c.ca_pem.clone(),
        quic_timeout: c.quic_timeout,
        force_tcp: c.force_tcp,
        quic_endpoint: c.quic_endpoint.clone(),
    };
    let t = Transport::connect(&cfg)
        .await
        .map_err(|e| format!("connect {}: {e}", user.name))?;
    let exporter = t.exporter();
    // The closer is dropped: a raw connection ends with `Bye` or by dropping its halves.
    let (reader, writer, _closer) = t.into_parts();
    let mut r = RawReader {
        reader,
        decoder: FrameDecoder::new(missive_proto::HARD_MAX_FRAME),
        buf: vec![0; READ_CHUNK],
    };
    let mut w = RawWriter {
        writer,
        bytes: Vec::new(),
    };
    tokio::time::timeout(
        LOGIN_TIMEOUT,
        handshake(&mut r, &mut w, &c.identity, exporter),
    )
    .await
    .map_err(|_| format!("login {}: no Welcome within {LOGIN_TIMEOUT:?}", user.name))?
    .map_err(|e| format!("login {}: {e}", user.name))?;
    Ok((r, w))
}

/// Logs every user in (at most [`SETUP_CONCURRENCY`] at once); connections in the same
/// order as `users`.
pub async fn login_all(users: &[User]) -> Result<Vec<(RawReader, RawWriter)>, String> {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(SETUP_CONCURRENCY));
    let tasks: Vec<_> = users
        .iter()
        .cloned()
        .map(|u| {
            let slots = slots.clone();
            tokio::spawn(async move {
                let _permit = slots.acquire().await.map_err(|e| e.to_string())?;
                login(&u).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(users.len());
    for t in tasks {
        out.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(out)
}

/// Logins in flight at once.
const SETUP_CONCURRENCY: usize = 64;

/// `Hello` → `ServerHello` → `Login` → `Welcome`.
async fn handshake(
    r: &mut RawReader,
    w: &mut RawWriter,
    identity: &Identity,
    exporter: [u8; missive_proto::EXPORTER_LEN],
) -> Result<(), String> {
    let hello = Hello {
        min_version: missive_proto::MIN_PROTOCOL_VERSION,
        max_version: missive_proto::PROTOCOL_VERSION,
        client: "missive-bench raw".into(),
    };
    w.send(&[hello.into()]).await?;
    let challenge = match r.recv().await? {
        Some(Frame::ServerHello(sh)) => sh.challenge,
        other => return Err(format!("expected ServerHello, got {}", describe(&other))),
    };
    let login = Login {
        user: identity.user.clone(),
        device: identity.device,
        signature: identity.sign_login(&challenge, &exporter),
    };
    w.send(&[login.into()]).await?;
    match r.recv().await? {
        Some(Frame::Welcome(_)) => Ok(()),
        other => Err(format!("expected Welcome, got {}", describe(&other))),
    }
}

/// A frame's name for error messages (never its content).
pub fn describe(frame: &Option<Frame>) -> String {
    match frame {
        Some(Frame::Error(e)) => format!("Error {{ code: {}, {:?} }}", e.code, e.message),
        Some(f) => f.name().to_owned(),
        None => "the end of the connection".to_owned(),
    }
}

impl RawReader {
    /// The next frame; `None` when the edge closed the connection. Waits as long as it takes.
    pub async fn recv(&mut self) -> Result<Option<Frame>, String> {
        loop {
            if let Some(f) = self.decoded()? {
                return Ok(Some(f));
            }
            if !self.read().await? {
                return Ok(None);
            }
        }
    }

    /// The next frame if one arrives within `within`.
    pub async fn recv_within(&mut self, within: Duration) -> Result<Received, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(f) = self.decoded()? {
                return Ok(Received::Frame(f));
            }
            match tokio::time::timeout_at(deadline, self.read()).await {
                Err(_) => return Ok(Received::Silence),
                Ok(Ok(false)) => return Ok(Received::Closed),
                Ok(Ok(true)) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// A frame already decoded from bytes read earlier, without waiting.
    pub fn decoded(&mut self) -> Result<Option<Frame>, String> {
        self.decoder
            .next_frame()
            .map_err(|e| format!("the edge sent a bad frame: {e}"))
    }

    /// Reads one chunk into the decoder; false at the end of the stream. A read error (the
    /// connection was reset) counts as the end too.
    async fn read(&mut self) -> Result<bool, String> {
        match self.reader.read(&mut self.buf).await {
            Ok(0) | Err(_) => Ok(false),
            Ok(n) => {
                self.decoder.feed(&self.buf[..n]);
                Ok(true)
            }
        }
    }
}

impl RawWriter {
    /// Encodes `frames` and writes them in one go.
    pub async fn send(&mut self, frames: &[Frame]) -> Result<(), String> {
        self.bytes.clear();
        for f in frames {
            encode(f, &mut self.bytes).map_err(|e| format!("encoding {}: {e}", f.name()))?;
        }
        self.writer
            .write_all(&self.bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.writer.flush().await.map_err(|e| format!("flush: {e}"))
    }
}

/// Cumulative acknowledgement of a device's deliveries: remembers the highest seq seen and
/// says when an `AckDelivery` is due (every `every` deliveries, or when the caller finds the
/// connection idle), so the edge frees what was delivered and keeps its window open.
#[derive(Debug, Clone)]
pub struct Acker {
    every: u64,
    highest: Option<u64>,
    acked: Option<u64>,
    since_ack: u64,
    /// The group whose log this acknowledges (`AckGroup`), or `None` for the mailbox.
    group: Option<missive_proto::GroupId>,
}

impl Acker {
    /// Acks after every `every` deliveries (at least 1).
    pub fn new(every: u64) -> Self {
        Self {
            every: every.max(1),
            highest: None,
            acked: None,
            since_ack: 0,
            group: None,
        }
    }

    /// An item of `group`'s log with seq `seq` (one acker follows one stream: the mailbox or
    /// one group's log); returns the ack to send now, if one is due.
    pub fn delivered_in(&mut self, group: missive_proto::GroupId, seq: u64) -> Option<Frame> {
        self.group = Some(group);
        self.delivered(seq)
    }

    /// A delivery with seq `seq`; returns the ack to send now, if one is due.
    pub fn delivered(&mut self, seq: u64) -> Option<Frame> {
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        self.since_ack += 1;
        (self.since_ack >= self.every).then(|| self.ack()).flatten()
    }

    /// Whether deliveries are waiting for an ack.
    pub fn pending(&self) -> bool {
        self.highest.is_some() && self.highest != self.acked
    }

    /// The ack covering everything delivered so far, unless it was already sent (call when
    /// the connection went quiet, and before closing).
    pub fn idle(&mut self) -> Option<Frame> {
        self.ack()
    }

    fn ack(&mut self) -> Option<Frame> {
        let up_to = self.highest?;
        if self.acked == Some(up_to) {
            return None;
        }
        self.acked = Some(up_to);
        self.since_ack = 0;
        let up_to = missive_proto::ServerSeq(up_to);
        Some(match self.group {
            None => missive_proto::AckDelivery { up_to }.into(),
            Some(group) => missive_proto::AckGroup { group, up_to }.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mailbox seq an `AckDelivery` acknowledges.
    fn up_to(f: Frame) -> u64 {
        match f {
            Frame::AckDelivery(a) => a.up_to.0,
            other => panic!("not an AckDelivery: {other:?}"),
        }
    }

    #[test]
    fn a_group_acker_acknowledges_the_log() {
        let mut a = Acker::new(1);
        let g = missive_proto::GroupId(3);
        assert_eq!(
            a.delivered_in(g, 4),
            Some(
                missive_proto::AckGroup {
                    group: g,
                    up_to: missive_proto::ServerSeq(4)
                }
                .into()
            )
        );
    }

    #[test]
    fn acks_are_cumulative_every_n_and_when_idle_never_twice() {
        let mut a = Acker::new(3);
        assert_eq!(a.idle(), None, "nothing delivered, nothing to ack");
        assert!(!a.pending());
        assert_eq!(a.delivered(5), None);
        assert_eq!(a.delivered(6), None);
        assert_eq!(a.delivered(7).map(up_to), Some(7));
        assert_eq!(a.idle(), None, "7 was acked already");
        assert!(!a.pending());
        assert_eq!(a.delivered(8), None);
        assert!(a.pending());
        assert_eq!(a.idle().map(up_to), Some(8));
        assert_eq!(
            a.delivered(9),
            None,
            "the count starts again after an idle ack"
        );
        assert_eq!(a.delivered(10), None);
        assert_eq!(a.delivered(11).map(up_to), Some(11));
    }
}
