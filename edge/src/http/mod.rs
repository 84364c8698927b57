//! The edge's one HTTP stack (hyper 1 under axum): the operations routes, media downloads,
//! and the push gateway client. Nothing else in the edge parses or writes HTTP.

pub mod client;
pub mod media;
pub mod ops;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Largest request head hyper buffers (hyper's floor is 8 KiB); longer heads get 431.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Time a client gets to send a request head, also while a kept-alive connection idles.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a TLS handshake may take.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP connections served at once per listener; further ones wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown` flips; then
/// stops accepting and lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _peer)) = accepted else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(TokioIo::new(stream), service, shutdown).await,
                Some(tls) => {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(TLS_TIMEOUT, tls.accept(stream)).await
                    {
                        serve_connection(TokioIo::new(stream), service, shutdown).await;
                    }
                }
            }
        });
    }
}

/// One HTTP/1.1 connection, kept alive between requests, closed gracefully at shutdown.
async fn serve_connection<I>(
    io: TokioIo<I>,
    service: TowerToHyperService<Router>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
