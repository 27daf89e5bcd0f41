//! `GET /v1/media/{media_id}`: a recipient's provider downloads media its
//! user was sent.
//!
//! ```text
//! GET /v1/media/x-0123…
//! Authorization: Bearer <token>
//! X-Interop-Provider: home
//! X-Interop-As: home:+4915112345678     (the provider's own user)
//!
//! 200, Content-Type: image/jpeg, Content-Length: …, X-Interop-Sha256: <hex>
//! ```
//!
//! Only a user the media was delivered to may read it (the grant written
//! when the message went through media-transcoding). Unknown, expired and
//! not-granted media all answer `NOT_FOUND`, so nobody can probe for ids.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use tokio_util::io::ReaderStream;
use tracing::{debug, warn};

use interop_edge::tls::Peer;
use interop_proto::Address;

use super::{authenticate, count, header_str, ApiError, ApiState, Family};
use crate::store::is_media_id;

/// The handler.
pub async fn download(
    State(s): State<Arc<ApiState>>,
    Path(media_id): Path<String>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    match serve(&s, &peer, &media_id, &headers).await {
        Ok((size, response)) => {
            count(&s.metrics, Family::Download, "ok");
            s.metrics.download_bytes.inc_by(size);
            response
        }
        Err(e) => {
            count(&s.metrics, Family::Download, e.label());
            debug!(code = e.code, "Download refused.");
            e.into_response()
        }
    }
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such media for this user (unknown, expired, or not sent to them)",
    )
}

async fn serve(
    s: &ApiState,
    peer: &Peer,
    media_id: &str,
    headers: &HeaderMap,
) -> Result<(u64, Response), ApiError> {
    let provider = authenticate(s, peer, headers).await?;
    let user = header_str(headers, "x-interop-as")
        .ok_or_else(|| ApiError::malformed("X-Interop-As: <provider>:<user> is required"))?;
    let user =
        Address::parse(user).map_err(|e| ApiError::malformed(format!("X-Interop-As: {e}")))?;
    if user.provider() != provider.id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "X-Interop-As must be a user of the authenticated provider",
        ));
    }
    if !is_media_id(media_id) {
        return Err(not_found());
    }
    let allowed = s
        .grants
        .allowed(media_id, user.as_str())
        .await
        .map_err(|e| {
            warn!(error = %e, "Cannot read media grants from Redis.");
            ApiError::unavailable("cannot check access right now; try again")
        })?;
    if !allowed {
        return Err(not_found());
    }
    let info = s
        .store
        .info(media_id)
        .await
        .map_err(|_| ApiError::unavailable("media storage is unavailable; try again"))?
        .ok_or_else(not_found)?;
    let object = s
        .store
        .reader(media_id)
        .await
        .map_err(|_| ApiError::unavailable("media storage is unavailable; try again"))?
        .ok_or_else(not_found)?;
    let body = Body::from_stream(ReaderStream::with_capacity(object, 64 * 1024));
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    let value = |s: &str| {
        HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("application/octet-stream"))
    };
    h.insert(header::CONTENT_TYPE, value(&info.content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    h.insert("x-interop-sha256", value(&hex::encode(info.sha256)));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment"),
    );
    Ok((info.size, response))
}
