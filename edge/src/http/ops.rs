//! The operations routes: `GET /metrics` (Prometheus text), `/healthz`, `/readyz`.
//!
//! Served on the operations listener (`metrics_listen`, loopback by default); put it behind
//! your scraper's network policy otherwise.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// What the operations routes answer with; implemented by the server wiring.
pub trait OpsState: Send + Sync + 'static {
    /// The `/metrics` body.
    fn metrics(&self) -> String;
    /// Liveness: the process can still serve and persist.
    fn healthy(&self) -> bool;
    /// Readiness: accepting and delivering (false while starting or draining).
    fn ready(&self) -> bool;
}

type Ops = Arc<dyn OpsState>;

/// `/metrics`, `/healthz` and `/readyz`; other methods get 405.
pub fn routes(state: Ops) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(ops): State<Ops>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ops.metrics(),
    )
        .into_response()
}

async fn healthz(State(ops): State<Ops>) -> Response {
    if ops.healthy() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n").into_response()
    }
}

async fn readyz(State(ops): State<Ops>) -> Response {
    if ops.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// The answer for paths no route knows.
pub async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}
