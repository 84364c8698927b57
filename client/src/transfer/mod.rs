//! Media transfers on QUIC streams of their own beside the control stream: resumable,
//! parallel uploads ([`upload`]) and ranged downloads ([`download`]). A transfer that loses
//! its connection waits for the client to reconnect and asks the edge what it holds, so no
//! byte the edge stored is sent twice; a connection that migrates to a new address (QUIC)
//! carries its streams on without any of that.

pub(crate) mod download;
mod stream;
pub mod upload;

use crate::ClientError;
use std::time::Duration;
use tokio::sync::watch;

/// How long a transfer waits for a (re)connection before it gives up.
const RECONNECT_WAIT: Duration = Duration::from_secs(120);

/// How far a transfer got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the blob done (held by the edge, or downloaded).
    pub done: u64,
    /// The blob's size.
    pub total: u64,
}

/// What the client's connection offers media transfers, as the driver publishes it.
#[derive(Debug, Clone, Default)]
pub(crate) enum Link {
    /// Not connected (or not logged in yet).
    #[default]
    Down,
    /// Logged in over TCP+TLS: each transfer gets a TLS connection of its own.
    Tcp(std::sync::Arc<TcpTransfers>),
    /// Logged in over QUIC: transfer streams open on this connection.
    Quic(quinn::Connection),
}

/// How to open a transfer connection over TCP+TLS.
pub(crate) struct TcpTransfers {
    pub(crate) transport: crate::transport::TransportConfig,
    pub(crate) identity: crate::Identity,
    pub(crate) client_name: String,
    /// Set when the control connection these came with is lost (or the app asked to
    /// reconnect): the network changed, so their transfer connections are given up too and
    /// the transfers resume on fresh ones.
    pub(crate) lost: watch::Receiver<bool>,
}

impl std::fmt::Debug for TcpTransfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TcpTransfers")
    }
}

/// Where a transfer opens its streams.
#[derive(Debug, Clone)]
pub(crate) enum Opener {
    /// A stream of this QUIC connection.
    Quic(quinn::Connection),
    /// A TCP+TLS connection of its own.
    Tcp(std::sync::Arc<TcpTransfers>),
}

impl Opener {
    /// Opens one transfer stream.
    pub(crate) async fn open(&self) -> Result<stream::TransferStream, ClientError> {
        match self {
            Self::Quic(c) => stream::TransferStream::open(c).await,
            Self::Tcp(t) => stream::TransferStream::open_tcp(t).await,
        }
    }

    /// The QUIC connection, if that is what this is.
    pub(crate) fn quic(&self) -> Option<&quinn::Connection> {
        match self {
            Self::Quic(c) => Some(c),
            Self::Tcp(_) => None,
        }
    }
}

/// The client's logged-in connection, as the driver publishes it.
#[derive(Debug, Clone)]
pub(crate) struct Links(pub(crate) watch::Receiver<Link>);

impl Links {
    /// The current connection, waiting for one (after a loss) up to [`RECONNECT_WAIT`].
    /// `previous` is a connection that just failed: it is not handed out again.
    pub(crate) async fn connection(
        &mut self,
        previous: Option<&Opener>,
    ) -> Result<Opener, ClientError> {
        let previous_quic = previous.and_then(Opener::quic);
        if matches!(previous, Some(Opener::Tcp(_))) {
            // A TCP transfer connection failed: give the network a moment before the next.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let usable = |link: &Link| match link {
            Link::Quic(c) => {
                c.close_reason().is_none()
                    && previous_quic.is_none_or(|p| p.stable_id() != c.stable_id())
            }
            Link::Tcp(_) => true,
            Link::Down => false,
        };
        let wait = self.0.wait_for(usable);
        match tokio::time::timeout(RECONNECT_WAIT, wait).await {
            Ok(Ok(link)) => match &*link {
                Link::Quic(c) => Ok(Opener::Quic(c.clone())),
                Link::Tcp(t) => Ok(Opener::Tcp(t.clone())),
                Link::Down => Err(ClientError::ClientClosed),
            },
            Ok(Err(_)) => Err(ClientError::ClientClosed),
            Err(_) => Err(ClientError::Timeout(
                "waiting for a QUIC connection for media",
            )),
        }
    }
}

/// Asks the edge for a signed download URL of `blob`.
pub(crate) async fn sign_url(
    via: &Opener,
    blob: missive_proto::BlobId,
) -> Result<missive_proto::MediaUrl, ClientError> {
    let mut stream = via.open().await?;
    stream
        .send(missive_proto::MediaSignUrl { blob }.into())
        .await?;
    stream.finish();
    match stream.next().await? {
        Some(missive_proto::Frame::MediaUrl(url)) if url.blob == blob => Ok(url),
        Some(other) => Err(ClientError::UnexpectedFrame {
            frame: other.name(),
            state: "a signed media URL",
        }),
        None => Err(ClientError::ConnectionClosed(
            "no answer to a URL request".into(),
        )),
    }
}
