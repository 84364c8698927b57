//! Accept loops for QUIC and TCP+TLS. Each accepted connection has a handshake task, which
//! then spawns its serving task; the serving task holds a connection-limit permit and a drop
//! guard the server waits on at shutdown. Two tasks, so that an idle connection's memory is
//! the serving state only, not the handshake's futures as well.

use crate::connection::{serve, Inbound, Transport};
use crate::shared::Shared;
use missive_proto::{encode_to_vec, Error, ErrorCode, EXPORTER_LABEL, EXPORTER_LEN};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
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
}

/// How long a refused or finished QUIC connection waits for the peer to read our last bytes.
const QUIC_LINGER: Duration = Duration::from_secs(3);

/// What a serving task holds besides its connection.
struct ServeCtx {
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    /// Dropped when the serving task ends; the server waits for all of them.
    _guard: mpsc::Sender<()>,
}

/// Runs a connection's handshake in a task, then serves it in a task of its own: what the
/// handshake needed is freed by then, and an idle connection keeps only the serving state.
fn spawn_connection<A, H, S>(
    ctx: &ListenerCtx,
    transport: Transport,
    handshake: impl FnOnce(Option<OwnedSemaphorePermit>, Duration) -> H + Send + 'static,
    serve: impl FnOnce(A, ServeCtx) -> S + Send + 'static,
) where
    A: Send + 'static,
    H: Future<Output = Result<Option<A>, BoxError>> + Send + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let guard = ctx.done_guard.clone();
        let permit = ctx.limit.clone().try_acquire_owned().ok();
        match handshake(permit, ctx.handshake_timeout).await {
            Ok(Some(accepted)) => {
                let serve_ctx = ServeCtx {
                    shared: ctx.shared,
                    shutdown: ctx.shutdown,
                    _guard: guard,
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
                spawn_connection(
                    &ctx,
                    Transport::Quic,
                    move |permit, timeout| quic_handshake(incoming, permit, timeout),
                    serve_quic,
                );
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
    _permit: OwnedSemaphorePermit,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Completes the handshake and accepts the first stream. `None` when the connection was
/// refused (over the connection limit) and answered already.
async fn quic_handshake(
    incoming: quinn::Incoming,
    permit: Option<OwnedSemaphorePermit>,
    timeout: Duration,
) -> Result<Option<AcceptedQuic>, BoxError> {
    let conn = tokio::time::timeout(timeout, incoming).await??;
    let (mut send, recv) = tokio::time::timeout(timeout, conn.accept_bi()).await??;
    let Some(permit) = permit else {
        let frame = Error::new(ErrorCode::TooManyConnections, "server at connection limit");
        send.write_all(&encode_to_vec(&frame.into())?).await?;
        let _ = send.finish();
        let _ = tokio::time::timeout(QUIC_LINGER, conn.closed()).await;
        return Ok(None);
    };
    let mut exporter = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| "TLS exporter unavailable")?;
    Ok(Some(AcceptedQuic {
        conn,
        send,
        recv,
        exporter,
        _permit: permit,
    }))
}

/// Serves an accepted QUIC connection until it closes.
async fn serve_quic(accepted: AcceptedQuic, ctx: ServeCtx) {
    let AcceptedQuic {
        conn,
        send,
        recv,
        exporter,
        _permit,
    } = accepted;
    serve(
        ctx.shared,
        Inbound::Quic(recv),
        Box::new(send),
        exporter,
        ctx.shutdown,
    )
    .await;
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
                Ok((stream, _peer)) => {
                    backoff = Duration::from_millis(10);
                    let tls = tls.clone();
                    spawn_connection(
                        &ctx,
                        Transport::Tcp,
                        move |permit, timeout| tcp_handshake(stream, tls, permit, timeout),
                        serve_tcp,
                    );
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
    _permit: OwnedSemaphorePermit,
}

/// Completes the TLS handshake. `None` when the connection was refused (over the connection
/// limit) and answered already.
async fn tcp_handshake(
    stream: tokio::net::TcpStream,
    tls: tokio_rustls::TlsAcceptor,
    permit: Option<OwnedSemaphorePermit>,
    timeout: Duration,
) -> Result<Option<AcceptedTcp>, BoxError> {
    stream.set_nodelay(true)?;
    let mut tls_stream = tokio::time::timeout(timeout, tls.accept(stream)).await??;
    let Some(permit) = permit else {
        let frame = Error::new(ErrorCode::TooManyConnections, "server at connection limit");
        tls_stream.write_all(&encode_to_vec(&frame.into())?).await?;
        let _ = tls_stream.shutdown().await;
        return Ok(None);
    };
    let mut exporter = [0u8; EXPORTER_LEN];
    tls_stream
        .get_ref()
        .1
        .export_keying_material(&mut exporter, EXPORTER_LABEL, Some(b""))
        .map_err(|e| format!("TLS exporter unavailable: {e}"))?;
    Ok(Some(AcceptedTcp {
        stream: tls_stream,
        exporter,
        _permit: permit,
    }))
}

/// Serves an accepted TCP+TLS connection until it closes.
async fn serve_tcp(accepted: AcceptedTcp, ctx: ServeCtx) {
    let AcceptedTcp {
        stream,
        exporter,
        _permit,
    } = accepted;
    let (r, w) = tokio::io::split(stream);
    serve(
        ctx.shared,
        Inbound::Stream(Box::new(r)),
        Box::new(w),
        exporter,
        ctx.shutdown,
    )
    .await;
}
