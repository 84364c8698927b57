//! The operations HTTP endpoint: `GET /metrics` (Prometheus text), `/healthz`, `/readyz`.
//!
//! Deliberately tiny: one request per connection, bounded request size and time, no bodies.
//! It binds to loopback by default; put it behind your scraper's network policy otherwise.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Longest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoint answers with; implemented by the server wiring.
pub trait OpsState: Send + Sync + 'static {
    /// The `/metrics` body.
    fn metrics(&self) -> String;
    /// Liveness: the process can still serve and persist.
    fn healthy(&self) -> bool;
    /// Readiness: accepting and delivering (false while starting or draining).
    fn ready(&self) -> bool;
}

/// Serves until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    state: Arc<dyn OpsState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, _)) = r else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, state)).await;
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

async fn handle(mut stream: tokio::net::TcpStream, state: Arc<dyn OpsState>) {
    {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > MAX_REQUEST {
                let _ = stream
                    .write_all(&response(431, "text/plain", "request too large\n"))
                    .await;
                return;
            }
        }
        let head = String::from_utf8_lossy(&buf);
        let mut parts = head.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let reply = match (method, path) {
            ("GET", "/metrics") => response(200, "text/plain; version=0.0.4", &state.metrics()),
            ("GET", "/healthz") if state.healthy() => response(200, "text/plain", "ok\n"),
            ("GET", "/healthz") => response(503, "text/plain", "unhealthy\n"),
            ("GET", "/readyz") if state.ready() => response(200, "text/plain", "ready\n"),
            ("GET", "/readyz") => response(503, "text/plain", "not ready\n"),
            ("GET", _) => response(404, "text/plain", "not found\n"),
            _ => response(405, "text/plain", "method not allowed\n"),
        };
        let _ = stream.write_all(&reply).await;
        let _ = stream.shutdown().await;
    }
}

fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
