//! The provider admin API, for the platform team (the `interop provider`
//! commands call it). Served on its own listener, only when an admin token
//! is configured; keep it inside the cluster.
//!
//! Every request carries `Authorization: Bearer <admin token>`. Bodies and
//! answers are JSON; errors are `{"code": "...", "detail": "..."}`.
//!
//! | request | answer |
//! |---|---|
//! | `GET /admin/v1/providers` | 200, the providers with their credential ids |
//! | `POST /admin/v1/providers` `{id, display_name, privacy_policy_url?, encryption, max_per_second?, burst?, capabilities?, client_cert_sha256?, require_client_cert?}` | 201 `{provider, credential_id, token}` |
//! | `PUT /admin/v1/providers/{id}/capabilities` `{content, media_formats}` | 200 `{provider}` |
//! | `PUT /admin/v1/providers/{id}/client-certs` `{client_cert_sha256, require_client_cert}` | 200 `{provider}` |
//! | `POST /admin/v1/providers/{id}/credentials` (rotate: add one) | 201 `{credential_id, token}` |
//! | `DELETE /admin/v1/providers/{id}/credentials/{credential_id}` (revoke) | 200 `{revoked}` |
//! | `DELETE /admin/v1/providers/{id}` (remove) | 200 `{removed}` |
//! | `POST /admin/v1/erasures` `{address}` (erase a user, ADR 13) | 200 `{erased: {inbox_messages, messages_in_other_stores, quarantined, in_pipeline, cursors, media_blobs, media_grants, user_records, redis_keys, groups, contact_entries, blocks_kept, key_watches, key_devices}}` |
//!
//! Tokens are shown once, in the answer that creates them; only their
//! SHA-256 is stored. Revoking a credential closes the connections that use
//! it within moments, on every replica.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use bytes::Bytes;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use interop_providers::store::{RegistryStore, StoreError};
use interop_providers::{credential_id, hash_token, Provider, ProviderEncryption};

/// The admin API's listener and the hash of its token.
pub struct AdminApi {
    pub listener: TcpListener,
    pub token_sha256: [u8; 32],
}

impl AdminApi {
    pub fn new(listener: TcpListener, token: &str) -> Self {
        Self {
            listener,
            token_sha256: Sha256::digest(token.trim().as_bytes()).into(),
        }
    }
}

struct AdminState {
    store: RegistryStore,
    js: async_nats::jetstream::Context,
    redis: redis::aio::ConnectionManager,
    token_sha256: [u8; 32],
}

/// A typed admin error.
enum AdminError {
    Unauthorized,
    NotFound(String),
    Conflict(String),
    Invalid(String),
    Unavailable(String),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code, detail) = match self {
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "a valid admin token is required".to_owned(),
            ),
            Self::NotFound(d) => (StatusCode::NOT_FOUND, "NOT_FOUND", d),
            Self::Conflict(d) => (StatusCode::CONFLICT, "CONFLICT", d),
            Self::Invalid(d) => (StatusCode::BAD_REQUEST, "INVALID", d),
            Self::Unavailable(d) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", d),
        };
        json_response(status, &json!({"code": code, "detail": detail}))
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(e) => Self::Invalid(e.to_string()),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// What the API shows of a provider: never hashes, only credential ids.
#[derive(Serialize)]
struct ProviderView {
    id: String,
    display_name: String,
    privacy_policy_url: String,
    encryption: ProviderEncryption,
    max_per_second: Option<f64>,
    burst: Option<u32>,
    capabilities: interop_providers::Capabilities,
    /// Client-certificate fingerprints (public, not secrets).
    client_cert_sha256: Vec<String>,
    require_client_cert: bool,
    credentials: Vec<String>,
}

impl From<&Provider> for ProviderView {
    fn from(p: &Provider) -> Self {
        Self {
            id: p.id.clone(),
            display_name: p.display_name.clone(),
            privacy_policy_url: p.privacy_policy_url.clone(),
            encryption: p.encryption,
            max_per_second: p.max_per_second,
            burst: p.burst,
            capabilities: p.capabilities.clone(),
            client_cert_sha256: p.client_cert_sha256.clone(),
            require_client_cert: p.require_client_cert,
            credentials: p.credential_ids(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProvider {
    id: String,
    display_name: String,
    #[serde(default)]
    privacy_policy_url: String,
    encryption: ProviderEncryption,
    max_per_second: Option<f64>,
    burst: Option<u32>,
    #[serde(default)]
    capabilities: interop_providers::Capabilities,
    #[serde(default)]
    client_cert_sha256: Vec<String>,
    #[serde(default)]
    require_client_cert: bool,
}

/// The body of `PUT .../client-certs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientCerts {
    client_cert_sha256: Vec<String>,
    #[serde(default)]
    require_client_cert: bool,
}

/// Normalised fingerprints (lowercase, trimmed), refused when another
/// provider already lists one of them.
async fn check_certs(
    state: &AdminState,
    id: &str,
    certs: &[String],
) -> Result<Vec<String>, AdminError> {
    let certs: Vec<String> = certs
        .iter()
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    if certs.is_empty() {
        return Ok(certs);
    }
    for other in state.store.list().await? {
        if other.removed || other.id == id {
            continue;
        }
        if let Some(c) = other
            .client_cert_sha256
            .iter()
            .find(|c| certs.contains(&c.trim().to_ascii_lowercase()))
        {
            return Err(AdminError::Conflict(format!(
                "client certificate {c} belongs to provider {:?}",
                other.id
            )));
        }
    }
    Ok(certs)
}

fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), AdminError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AdminError::Unauthorized)?;
    let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    let mut diff = 0u8;
    for (a, b) in digest.iter().zip(&state.token_sha256) {
        diff |= a ^ b;
    }
    if diff == 0 {
        Ok(())
    } else {
        Err(AdminError::Unauthorized)
    }
}

/// A new random token: 256 bits, hex.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

async fn current(state: &AdminState, id: &str) -> Result<Provider, AdminError> {
    match state.store.get(id).await? {
        Some(p) if !p.removed => Ok(p),
        _ => Err(AdminError::NotFound(format!("no provider {id:?}"))),
    }
}

async fn list(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    authorize(&state, &headers)?;
    let mut providers: Vec<ProviderView> = state
        .store
        .list()
        .await?
        .iter()
        .filter(|p| !p.removed)
        .map(ProviderView::from)
        .collect();
    providers.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(json_response(
        StatusCode::OK,
        &json!({ "providers": providers }),
    ))
}

async fn add(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    authorize(&state, &headers)?;
    let new: NewProvider =
        serde_json::from_slice(&body).map_err(|e| AdminError::Invalid(e.to_string()))?;
    if matches!(state.store.get(&new.id).await?, Some(p) if !p.removed) {
        return Err(AdminError::Conflict(format!(
            "provider {:?} exists; rotate its credentials instead",
            new.id
        )));
    }
    let client_cert_sha256 = check_certs(&state, &new.id, &new.client_cert_sha256).await?;
    let token = new_token();
    let hash = hash_token(&token);
    let provider = Provider {
        id: new.id,
        display_name: new.display_name,
        privacy_policy_url: new.privacy_policy_url,
        encryption: new.encryption,
        token_sha256: vec![hash.clone()],
        max_per_second: new.max_per_second,
        burst: new.burst,
        capabilities: new.capabilities,
        client_cert_sha256,
        require_client_cert: new.require_client_cert,
        removed: false,
    };
    state.store.put(&provider).await?;
    info!(provider = %provider.id, credential = %credential_id(&hash), "Provider added.");
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"provider": ProviderView::from(&provider), "credential_id": credential_id(&hash), "token": token}),
    ))
}

async fn rotate(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    authorize(&state, &headers)?;
    let mut provider = current(&state, &id).await?;
    let token = new_token();
    let hash = hash_token(&token);
    provider.token_sha256.push(hash.clone());
    state.store.put(&provider).await?;
    info!(provider = %id, credential = %credential_id(&hash), "Credential added.");
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"credential_id": credential_id(&hash), "token": token}),
    ))
}

async fn revoke(
    State(state): State<Arc<AdminState>>,
    Path((id, credential)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    authorize(&state, &headers)?;
    let mut provider = current(&state, &id).await?;
    let before = provider.token_sha256.len();
    provider
        .token_sha256
        .retain(|h| credential_id(h) != credential);
    if provider.token_sha256.len() == before {
        return Err(AdminError::NotFound(format!(
            "provider {id:?} has no credential {credential:?}"
        )));
    }
    state.store.put(&provider).await?;
    warn!(provider = %id, %credential, "Credential revoked.");
    Ok(json_response(
        StatusCode::OK,
        &json!({ "revoked": credential }),
    ))
}

async fn set_capabilities(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    authorize(&state, &headers)?;
    let capabilities: interop_providers::Capabilities =
        serde_json::from_slice(&body).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let mut provider = current(&state, &id).await?;
    provider.capabilities = capabilities;
    state.store.put(&provider).await?;
    info!(provider = %id, "Capabilities changed.");
    Ok(json_response(
        StatusCode::OK,
        &json!({ "provider": ProviderView::from(&provider) }),
    ))
}

async fn set_client_certs(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    authorize(&state, &headers)?;
    let certs: ClientCerts =
        serde_json::from_slice(&body).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let mut provider = current(&state, &id).await?;
    provider.client_cert_sha256 = check_certs(&state, &id, &certs.client_cert_sha256).await?;
    provider.require_client_cert = certs.require_client_cert;
    state.store.put(&provider).await?;
    // Connections authenticated by a certificate no longer listed close, as
    // on revocation.
    warn!(provider = %id, certs = provider.client_cert_sha256.len(), required = provider.require_client_cert, "Client certificates changed.");
    Ok(json_response(
        StatusCode::OK,
        &json!({ "provider": ProviderView::from(&provider) }),
    ))
}

async fn remove(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    authorize(&state, &headers)?;
    let mut provider = current(&state, &id).await?;
    provider.removed = true;
    provider.token_sha256.clear();
    state.store.put(&provider).await?;
    warn!(provider = %id, "Provider removed.");
    Ok(json_response(StatusCode::OK, &json!({ "removed": id })))
}

/// The body of `POST /admin/v1/erasures`. The address travels in the body,
/// not the path, so it stays out of access logs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseRequest {
    address: String,
}

/// Erases one user (`interop erase-user`): see `interop_erasure` and
/// docs/adr/0013. Idempotent; answers the counts of what was removed.
async fn erase_user(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    authorize(&state, &headers)?;
    let req: EraseRequest =
        serde_json::from_slice(&body).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let address = interop_proto::Address::parse(req.address.trim())
        .map_err(|e| AdminError::Invalid(format!("address: {e}")))?;
    warn!(user = %address.redacted(), "Erasing a user.");
    let erased = interop_erasure::erase_user(&state.js, &state.redis, &address)
        .await
        .map_err(|e| {
            warn!(user = %address.redacted(), error = %e, "Erasure stopped; it can be run again.");
            AdminError::Unavailable(format!("the erasure stopped, run it again: {e}"))
        })?;
    Ok(json_response(StatusCode::OK, &json!({ "erased": erased })))
}

/// Serves the admin API until `shutdown`.
pub async fn serve(
    api: AdminApi,
    store: RegistryStore,
    js: async_nats::jetstream::Context,
    redis: redis::aio::ConnectionManager,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Arc::new(AdminState {
        store,
        js,
        redis,
        token_sha256: api.token_sha256,
    });
    let app = Router::new()
        .route("/admin/v1/providers", get(list).post(add))
        .route("/admin/v1/providers/{id}", delete(remove))
        .route(
            "/admin/v1/providers/{id}/capabilities",
            axum::routing::put(set_capabilities),
        )
        .route(
            "/admin/v1/providers/{id}/client-certs",
            axum::routing::put(set_client_certs),
        )
        .route(
            "/admin/v1/providers/{id}/credentials",
            axum::routing::post(rotate),
        )
        .route(
            "/admin/v1/providers/{id}/credentials/{credential}",
            delete(revoke),
        )
        .route("/admin/v1/erasures", axum::routing::post(erase_user))
        .with_state(state);
    axum::serve(api.listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
