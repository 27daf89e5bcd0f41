//! `POST /v1/media`: a provider uploads a blob.
//!
//! ```text
//! POST /v1/media
//! Authorization: Bearer <token>
//! X-Interop-Provider: signal
//! Content-Type: image/jpeg
//! Content-Length: 123456                 (required: the announced size)
//! X-Interop-Sha256: <64 hex digits>      (required: checked after streaming)
//! X-Interop-Encryption: transport-only   (or e2ee)
//! X-Interop-Sticker: true                (optional, images only)
//!
//! 201 {"media_id": "m-…", "size": 123456, "content_type": "image/jpeg",
//!      "sha256": "…", "encryption": "transport-only", "expires_at_ms": …}
//! ```
//!
//! The announced size is checked against the type's limit before the body
//! is read; the body is stored while it streams in (nothing is buffered
//! whole), and the object becomes visible only after its size and SHA-256
//! matched. For server-visible images, the pixel count is checked from the
//! header as soon as it has arrived.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::StreamExt;
use tracing::{debug, warn};

use interop_edge::tls::Peer;
use interop_proto::v1::Encryption;

use super::{authenticate, count, header_str, ApiError, ApiState, Family};
use crate::error::MediaError;
use crate::formats::{Kind, MediaType};
use crate::store::{new_upload_id, NewMedia, Origin, StoreError, Upload};
use crate::transcode::image::probe_dimensions;

/// Bytes of an image's beginning kept to read its header while it streams.
const HEADER_BYTES: usize = 512 * 1024;

/// The answer to a successful upload.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Uploaded {
    pub media_id: String,
    pub size: u64,
    pub content_type: String,
    /// Hex.
    pub sha256: String,
    /// `e2ee` or `transport-only`.
    pub encryption: String,
    /// When the media will be deleted (Unix ms).
    pub expires_at_ms: i64,
}

/// The handler.
pub async fn upload(
    State(s): State<Arc<ApiState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match receive(&s, &peer, &headers, body).await {
        Ok(up) => {
            count(&s.metrics, Family::Upload, "ok");
            s.metrics.upload_bytes.inc_by(up.size);
            debug!(size = up.size, content_type = %up.content_type, "Media uploaded.");
            let body = serde_json::to_string(&up).unwrap_or_default();
            (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Err(e) => {
            count(&s.metrics, Family::Upload, e.label());
            debug!(code = e.code, "Upload refused.");
            e.into_response()
        }
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Full => ApiError::unavailable("media storage is full; try again later"),
        other => {
            warn!(error = %other, "Media storage failed during an upload.");
            ApiError::unavailable("media storage is unavailable; try again")
        }
    }
}

struct Announced {
    content_type: MediaType,
    encryption: Encryption,
    sticker: bool,
    length: u64,
    sha256: [u8; 32],
}

fn announced(headers: &HeaderMap) -> Result<Announced, ApiError> {
    let encryption = match header_str(headers, "x-interop-encryption") {
        Some("e2ee") => Encryption::E2ee,
        Some("transport-only") => Encryption::TransportOnly,
        _ => {
            return Err(ApiError::malformed(
                "X-Interop-Encryption must be e2ee or transport-only",
            ))
        }
    };
    let content_type = header_str(headers, header::CONTENT_TYPE.as_str())
        .ok_or_else(|| ApiError::malformed("Content-Type is required"))
        .and_then(|t| {
            MediaType::parse(t).map_err(|e| {
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UNSUPPORTED_TYPE",
                    e.to_string(),
                )
            })
        })?;
    let sticker = match header_str(headers, "x-interop-sticker") {
        None | Some("false") => false,
        Some("true") if content_type.top() == "image" => true,
        Some("true") => return Err(ApiError::malformed("only images can be stickers")),
        Some(_) => {
            return Err(ApiError::malformed(
                "X-Interop-Sticker must be true or false",
            ))
        }
    };
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "LENGTH_REQUIRED",
            "announce the size with Content-Length; chunked uploads are not accepted",
        ));
    }
    let length = header_str(headers, header::CONTENT_LENGTH.as_str())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "LENGTH_REQUIRED",
                "Content-Length is required",
            )
        })?
        .parse::<u64>()
        .map_err(|_| ApiError::malformed("Content-Length is not a number"))?;
    let mut sha256 = [0u8; 32];
    header_str(headers, "x-interop-sha256")
        .ok_or_else(|| ApiError::malformed("X-Interop-Sha256 (64 hex digits) is required"))
        .and_then(|h| {
            hex::decode_to_slice(h, &mut sha256)
                .map_err(|_| ApiError::malformed("X-Interop-Sha256 must be 64 hex digits"))
        })?;
    Ok(Announced {
        content_type,
        encryption,
        sticker,
        length,
        sha256,
    })
}

fn too_large(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE", detail)
}

async fn receive(
    s: &ApiState,
    peer: &Peer,
    headers: &HeaderMap,
    body: Body,
) -> Result<Uploaded, ApiError> {
    let provider = authenticate(s, peer, headers).await?;
    let a = announced(headers)?;
    let e2ee = a.encryption == Encryption::E2ee;
    if !e2ee && !a.content_type.processable() {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_TYPE",
            format!(
                "the gateway cannot convert server-visible {}; send JPEG, PNG, WebP or GIF images, \
                 Ogg, MP3, M4A, WAV, WebM, FLAC or AMR audio, MP4, QuickTime, WebM or Matroska video, \
                 or a file (not image/, audio/ or video/)",
                a.content_type
            ),
        ));
    }
    let kind = Kind::of(&a.content_type, a.sticker);
    if a.length == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "EMPTY",
            "the media is empty (Content-Length: 0)",
        ));
    }
    if a.length > kind.max_bytes() {
        return Err(too_large(format!(
            "{} bytes announced; the limit for {} is {} MiB",
            a.length,
            a.content_type,
            kind.max_bytes() / (1024 * 1024)
        )));
    }
    let _permit = s
        .uploads
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::unavailable("too many uploads in progress; try again"))?;
    let check_header = !e2ee && a.content_type.top() == "image";
    let mut head: Vec<u8> = Vec::new();
    let mut head_checked = !check_header;
    let mut upload = s.store.begin();
    let mut stream = body.into_data_stream();
    loop {
        let next = match tokio::time::timeout(s.idle_timeout, stream.next()).await {
            Ok(n) => n,
            Err(_) => {
                upload.abort().await;
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "UPLOAD_TIMEOUT",
                    format!("no data for {} s", s.idle_timeout.as_secs()),
                ));
            }
        };
        let chunk = match next {
            None => break,
            Some(Ok(c)) => c,
            Some(Err(_)) => {
                let got = upload.size();
                upload.abort().await;
                return Err(incomplete(got, a.length));
            }
        };
        if upload.size() + chunk.len() as u64 > a.length {
            upload.abort().await;
            return Err(too_large("the body is longer than its Content-Length"));
        }
        if !head_checked {
            let take = (HEADER_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
            if head.len() >= HEADER_BYTES {
                head_checked = true;
                if let Err(e) = check_image_header(&head, &a.content_type) {
                    upload.abort().await;
                    return Err(e);
                }
            }
        }
        if let Err(e) = upload.write(&chunk).await {
            upload.abort().await;
            return Err(store_error(e));
        }
    }
    if upload.size() != a.length {
        let got = upload.size();
        upload.abort().await;
        return Err(incomplete(got, a.length));
    }
    if !head_checked {
        if let Err(e) = check_image_header(&head, &a.content_type) {
            upload.abort().await;
            return Err(e);
        }
    }
    finish(s, provider.id.as_str(), a, upload).await
}

fn incomplete(got: u64, announced: u64) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "INCOMPLETE_BODY",
        format!("the body ended after {got} bytes; {announced} were announced"),
    )
}

/// Refuses an image whose header says it has too many pixels. Other header
/// problems are left to processing (the sender gets a typed receipt).
fn check_image_header(head: &[u8], declared: &MediaType) -> Result<(), ApiError> {
    match probe_dimensions(head, declared) {
        Err(MediaError::TooLarge(detail)) => Err(too_large(detail)),
        _ => Ok(()),
    }
}

async fn finish(
    s: &ApiState,
    provider: &str,
    a: Announced,
    upload: Upload,
) -> Result<Uploaded, ApiError> {
    let digest = upload.digest();
    if digest != a.sha256 {
        upload.abort().await;
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "HASH_MISMATCH",
            format!(
                "the body's SHA-256 is {}, not the announced {}; nothing was stored",
                hex::encode(digest),
                hex::encode(a.sha256)
            ),
        ));
    }
    let id = new_upload_id();
    let meta = NewMedia {
        origin: Origin::Upload {
            provider: provider.to_owned(),
        },
        content_type: a.content_type.as_str().to_owned(),
        encryption: a.encryption,
        sticker: a.sticker,
        width: 0,
        height: 0,
        duration_ms: 0,
    };
    let info = upload.finish(&id, meta).await.map_err(store_error)?;
    let retention = i64::try_from(s.retention.as_millis()).unwrap_or(i64::MAX);
    Ok(Uploaded {
        media_id: info.id,
        size: info.size,
        content_type: info.content_type,
        sha256: hex::encode(info.sha256),
        encryption: match a.encryption {
            Encryption::E2ee => "e2ee".into(),
            _ => "transport-only".into(),
        },
        expires_at_ms: info.stored_at_ms.saturating_add(retention),
    })
}
