//! Accept loops for QUIC and TCP+TLS. Each accepted connection has a handshake task, which
//! then spawns its serving task; the serving task holds a connection-limit permit and a drop
//! guard the server waits on at shutdown. Two tasks, so that an idle connection's memory is
//! the serving state only, not the handshake's futures as well.
//!
//! Admission comes before any handshake work: the peer's address must be within its budgets
//! (`address_limits`) and a connection permit must be free. A connection over the global limit
//! is still told `TooManyConnections` in a frame when a small budget of such refusals allows
//! (that costs a handshake); past it, it is refused without one. Under a handshake load, new
//! QUIC clients must first prove their address with a Retry round trip.

use crate::address_limits::AddressPermit;
use crate::connection::{serve, Inbound, Transport};
use crate::shared::Shared;
use missive_proto::{encode_to_vec, Error, ErrorCode, EXPORTER_LABEL, EXPORTER_LEN};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// Everything an accept loop needs.
#[derive(Clone)]
pub struct ListenerCtx {
    /// Shared state for connection tasks.
    pub shared: Arc<Shared>,
    /// Caps concurrent connections across both transports.
    pub limit: Arc<Semaphore>,
    /// Flips to true when the server starts draining.
    pub shutdown: watch::Receiver<bool>,
    /// Dropped by each connection task when it ends; the server waits for all of them.
    pub done_guard: mpsc::Sender<()>,
    /// Time allowed for the TLS handshake and the first stream.
    pub handshake_timeout: Duration,
    /// Handshakes that may run only to tell a client the server is full.
    pub refusals: Arc<Semaphore>,
    /// Handshakes in progress (both transports).
    pub handshaking: Arc<AtomicUsize>,
    /// QUIC handshakes in progress above which new clients must pass a Retry first.
    pub retry_above: usize,
}

/// Handshakes at once that only tell a client `TooManyConnections`; past this, connections
/// over the limit are refused without a handshake.
pub const REFUSAL_HANDSHAKES: usize = 32;

/// What an admitted connection holds until it ends.
struct Permits {
    /// Counts it against its address.
    _address: AddressPermit,
    /// Its place under the connection limit; `None` when it is admitted only to be told the
    /// server is full.
    conn: Option<OwnedSemaphorePermit>,
    /// Its place among the refusal handshakes, when it has no connection permit.
    _refusal: Option<OwnedSemaphorePermit>,
}

/// Takes the permits a new connection from `peer` needs, before any handshake work; `Err`
/// names why it is refused outright.
fn admit(ctx: &ListenerCtx, peer: SocketAddr) -> Result<Permits, &'static str> {
    let address = ctx
        .shared
        .addresses
        .admit(peer.ip(), Instant::now())
        .map_err(|why| match why {
            crate::address_limits::AddressRefusal::TooManyConnections => "address_connections",
            crate::address_limits::AddressRefusal::HandshakeRate => "address_handshake_rate",
        })?;
    if let Ok(conn) = ctx.limit.clone().try_acquire_owned() {
        return Ok(Permits {
            _address: address,
            conn: Some(conn),
            _refusal: None,
        });
    }
    let refusal = ctx
        .refusals
        .clone()
        .try_acquire_owned()
        .map_err(|_| "connection_limit")?;
    Ok(Permits {
        _address: address,
        conn: None,
        _refusal: Some(refusal),
    })
}

/// Counts a handshake in progress while it lives.
struct Handshaking(Arc<AtomicUsize>);

impl Handshaking {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a refused or finished QUIC connection waits for the peer to read our last bytes.
const QUIC_LINGER: Duration = Duration::from_secs(3);

/// What a serving task holds besides its connection.
struct ServeCtx {
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    /// Dropped when the serving task ends; the server waits for all of them.
    _guard: mpsc::Sender<()>,
    /// The peer's address.
    peer: SocketAddr,
}

/// Runs a connection's handshake in a task, then serves it in a task of its own: what the
/// handshake needed is freed by then, and an idle connection keeps only the serving state.
fn spawn_connection<A, H, S>(
    ctx: &ListenerCtx,
    transport: Transport,
    peer: SocketAddr,
    permits: Permits,
    handshake: impl FnOnce(Permits, Duration) -> H + Send + 'static,
    serve: impl FnOnce(A, ServeCtx) -> S + Send + 'static,
) where
    A: Send + 'static,
    H: Future<Output = Result<Option<A>, BoxError>> + Send + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    let ctx = ctx.clone();
    let handshaking = Handshaking::new(&ctx.handshaking);
    tokio::spawn(async move {
        let guard = ctx.done_guard.clone();
        let result = handshake(permits, ctx.handshake_timeout).await;
        drop(handshaking);
        match result {
            Ok(Some(accepted)) => {
                let serve_ctx = ServeCtx {
                    shared: ctx.shared,
                    shutdown: ctx.shutdown,
                    _guard: guard,
                    peer,
                };
                tokio::spawn(serve(accepted, serve_ctx));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, transport = transport.name(), "handshake failed");
            }
        }
    });
}

/// Accepts QUIC connections until shutdown.
pub async fn run_quic(endpoint: quinn::Endpoint, ctx: ListenerCtx) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let peer = incoming.remote_address();
                // Under a handshake load, a client proves its address (one round trip, no
                // state kept here) before it costs a handshake or a permit.
                if incoming.may_retry()
                    && ctx.handshaking.load(Ordering::Relaxed) >= ctx.retry_above
                {
                    ctx.shared.metrics.connection_refused("quic_retry");
                    let _ = incoming.retry();
                    continue;
                }
                match admit(&ctx, peer) {
                    Ok(permits) => spawn_connection(
                        &ctx,
                        Transport::Quic,
                        peer,
                        permits,
                        move |permits, timeout| quic_handshake(incoming, permits, timeout),
                        serve_quic,
                    ),
                    Err(why) => {
                        ctx.shared.metrics.connection_refused(why);
                        incoming.refuse();
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    // New connections are refused from here on; live ones drain on their own.
    endpoint.set_server_config(None);
}

/// A QUIC connection through its handshake and first stream, ready to serve.
struct AcceptedQuic {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    exporter: [u8; EXPORTER_LEN],
    _permits: Permits,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Completes the handshake and accepts the first stream. `None` when the connection was
/// refused (over the connection limit) and answered already.
async fn quic_handshake(
    incoming: quinn::Incoming,
    permits: Permits,
    timeout: Duration,
) -> Result<Option<AcceptedQuic>, BoxError> {
    let conn = tokio::time::timeout(timeout, incoming).await??;
    let (mut send, recv) = tokio::time::timeout(timeout, conn.accept_bi()).await??;
    if permits.conn.is_none() {
        let frame = Error::new(ErrorCode::TooManyConnections, "server at connection limit");
        // Bounded: a peer that gives no stream credit must not hold its refusal permit.
        let bytes = encode_to_vec(&frame.into())?;
        tokio::time::timeout(timeout, send.write_all(&bytes)).await??;
        let _ = send.finish();
        let _ = tokio::time::timeout(QUIC_LINGER, conn.closed()).await;
        return Ok(None);
    }
    let mut exporter = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| "TLS exporter unavailable")?;
    Ok(Some(AcceptedQuic {
        conn,
        send,
        recv,
        exporter,
        _permits: permits,
    }))
}

/// Serves an accepted QUIC connection until it closes.
async fn serve_quic(accepted: AcceptedQuic, ctx: ServeCtx) {
    let AcceptedQuic {
        conn,
        send,
        recv,
        exporter,
        _permits,
    } = accepted;
    let (on_login, login) = tokio::sync::oneshot::channel();
    let transfers = ctx.shared.media.clone().map(|media| {
        tokio::spawn(crate::media::streams::accept(
            conn.clone(),
            login,
            media,
            ctx.shared.transfers_per_min,
        ))
    });
    serve(
        ctx.shared,
        ctx.peer,
        Inbound::Quic(recv),
        Box::new(send),
        exporter,
        ctx.shutdown,
        Some(on_login),
    )
    .await;
    if let Some(t) = transfers {
        t.abort();
    }
    // Give the peer a moment to read the final frames and close first.
    let _ = tokio::time::timeout(QUIC_LINGER, conn.closed()).await;
    conn.close(0u32.into(), b"bye");
}

/// Accepts TCP+TLS connections until shutdown. Accept errors (e.g. out of file descriptors)
/// back off instead of spinning.
pub async fn run_tcp(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    ctx: ListenerCtx,
) {
    let mut shutdown = ctx.shutdown.clone();
    let mut backoff = Duration::from_millis(10);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    match admit(&ctx, peer) {
                        Ok(permits) => {
                            let tls = tls.clone();
                            spawn_connection(
                                &ctx,
                                Transport::Tcp,
                                peer,
                                permits,
                                move |permits, timeout| tcp_handshake(stream, tls, permits, timeout),
                                serve_tcp,
                            );
                        }
                        // Closed before TLS: the refusal costs no handshake.
                        Err(why) => ctx.shared.metrics.connection_refused(why),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// A TCP+TLS connection through its handshake, ready to serve.
struct AcceptedTcp {
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    exporter: [u8; EXPORTER_LEN],
    _permits: Permits,
}

/// Completes the TLS handshake. `None` when the connection was refused (over the connection
/// limit) and answered already.
async fn tcp_handshake(
    stream: tokio::net::TcpStream,
    tls: tokio_rustls::TlsAcceptor,
    permits: Permits,
    timeout: Duration,
) -> Result<Option<AcceptedTcp>, BoxError> {
    stream.set_nodelay(true)?;
    let mut tls_stream = tokio::time::timeout(timeout, tls.accept(stream)).await??;
    if permits.conn.is_none() {
        let frame = Error::new(ErrorCode::TooManyConnections, "server at connection limit");
        let bytes = encode_to_vec(&frame.into())?;
        tokio::time::timeout(timeout, tls_stream.write_all(&bytes)).await??;
        let _ = tokio::time::timeout(timeout, tls_stream.shutdown()).await;
        return Ok(None);
    }
    let mut exporter = [0u8; EXPORTER_LEN];
    tls_stream
        .get_ref()
        .1
        .export_keying_material(&mut exporter, EXPORTER_LABEL, Some(b""))
        .map_err(|e| format!("TLS exporter unavailable: {e}"))?;
    Ok(Some(AcceptedTcp {
        stream: tls_stream,
        exporter,
        _permits: permits,
    }))
}

/// Serves an accepted TCP+TLS connection until it closes.
async fn serve_tcp(accepted: AcceptedTcp, ctx: ServeCtx) {
    let AcceptedTcp {
        stream,
        exporter,
        _permits,
    } = accepted;
    let (r, w) = tokio::io::split(stream);
    serve(
        ctx.shared,
        ctx.peer,
        Inbound::Stream(Box::new(r)),
        Box::new(w),
        exporter,
        ctx.shutdown,
        None,
    )
    .await;
}
