//! The admin HTTP port: `GET /healthz` (the process is alive) and
//! `GET /readyz` (NATS and Redis connected, consumers bound, not draining;
//! 503 with the reason otherwise).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Health;

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    match health.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Serves the admin port until `shutdown`.
pub async fn serve(listener: TcpListener, health: Arc<Health>, shutdown: CancellationToken) {
    let server = axum::serve(listener, router(health))
        .with_graceful_shutdown(async move { shutdown.cancelled().await });
    if let Err(e) = server.await {
        tracing::warn!(error = %e, "The admin port stopped.");
    }
}
