//! The media HTTP API (its own listener, default port 8082):
//!
//! - `POST /v1/media` — upload ([`upload`]);
//! - `GET /v1/media/{media_id}` — download ([`download`]).
//!
//! Both authenticate the provider with `Authorization: Bearer <token>` and
//! `X-Interop-Provider: <id>`. Errors are JSON `{"code", "detail"}` with the
//! HTTP status of [`ApiError`]; docs/protocol.md ("Media") lists them.

pub mod download;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

use interop_providers::{Provider, Registry};

use crate::formats::AcceptFormats;
use crate::grants::Grants;
use crate::metrics::{MediaMetrics, ResultLabel};
use crate::store::MediaStore;

/// What the handlers share.
pub struct ApiState {
    /// The live registry (updated from the registry stream, so a revoked
    /// token stops working here too).
    pub providers: tokio::sync::watch::Receiver<Arc<Registry>>,
    /// The failed-authentication throttle shared with ingest and delivery.
    pub edge: interop_edge::EdgeGuard,
    pub store: MediaStore,
    pub grants: Grants,
    pub metrics: MediaMetrics,
    pub accept: AcceptFormats,
    /// Uploads in progress at once (more are refused with `UNAVAILABLE`).
    pub uploads: Arc<Semaphore>,
    /// Longest pause while an upload body streams in.
    pub idle_timeout: Duration,
    /// How long uploads are kept (reported to the uploader).
    pub retention: Duration,
}

/// An API error: a stable code, an HTTP status and a detail for the
/// provider's engineers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Seconds for `Retry-After` (rate limiting), when set.
    pub retry_after_secs: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after_secs: None,
        }
    }

    pub fn auth_failed() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "AUTH_FAILED",
            "unknown provider or wrong token (Authorization: Bearer <token>, X-Interop-Provider: <id>)",
        )
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "MALFORMED_REQUEST", detail)
    }

    /// Too many failed authentications; the detail carries the wait in
    /// seconds, also sent as `Retry-After`.
    pub fn rate_limited(detail: &str, retry_after_ms: u32) -> Self {
        let secs = retry_after_ms.div_ceil(1000).max(1);
        Self {
            retry_after_secs: Some(secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!("{detail}; retry after {secs} s"),
            )
        }
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", detail)
    }

    /// The metrics label of this error: its code in lower case.
    pub fn label(&self) -> &'static str {
        match self.code {
            "AUTH_FAILED" => "auth_failed",
            "MALFORMED_REQUEST" => "malformed_request",
            "LENGTH_REQUIRED" => "length_required",
            "EMPTY" => "empty",
            "TOO_LARGE" => "too_large",
            "UNSUPPORTED_TYPE" => "unsupported_type",
            "HASH_MISMATCH" => "hash_mismatch",
            "INCOMPLETE_BODY" => "incomplete_body",
            "UPLOAD_TIMEOUT" => "upload_timeout",
            "NOT_FOUND" => "not_found",
            "FORBIDDEN" => "forbidden",
            "UNAVAILABLE" => "unavailable",
            "RATE_LIMITED" => "rate_limited",
            _ => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.code, "detail": self.detail}).to_string();
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The header's value as text, if present and visible ASCII.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The authenticated provider. Failed attempts count against the peer's
/// address and the provider id, in Redis, together with failed `Hello`s on
/// ingest and delivery (`interop_edge`); past the limits the
/// answer is `429 RATE_LIMITED` with `Retry-After`.
pub(crate) async fn authenticate(
    s: &ApiState,
    peer: &interop_edge::tls::Peer,
    headers: &HeaderMap,
) -> Result<Provider, ApiError> {
    let provider = header_str(headers, "x-interop-provider").ok_or_else(ApiError::auth_failed)?;
    let token = header_str(headers, header::AUTHORIZATION.as_str())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(ApiError::auth_failed)?;
    let registry = s.providers.borrow().clone();
    match s
        .edge
        .check_token(&registry, peer.addr.ip(), provider, token)
        .await
    {
        Ok(()) => registry
            .get(provider)
            .cloned()
            .ok_or_else(ApiError::auth_failed),
        Err(r) if r.code == interop_proto::v1::RejectCode::RateLimited => {
            Err(ApiError::rate_limited(r.detail, r.retry_after_ms))
        }
        Err(_) => Err(ApiError::auth_failed()),
    }
}

pub(crate) fn count(metrics: &MediaMetrics, family: Family, result: &'static str) {
    let f = match family {
        Family::Upload => &metrics.uploads,
        Family::Download => &metrics.downloads,
    };
    f.get_or_create(&ResultLabel { result }).inc();
}

#[derive(Clone, Copy)]
pub(crate) enum Family {
    Upload,
    Download,
}

/// The API's routes.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/media", post(upload::upload))
        .route("/v1/media/{media_id}", get(download::download))
        .with_state(state)
}
