//! What the adapter serves to its users' browsers: the web app's files,
//! sign-in as a demo user (a session cookie; the provider token never
//! leaves the adapter), the registry's providers, the media API on the
//! user's behalf, and a WebSocket that carries the gateway's frames.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use interop_client::media::{MediaClient, MediaError, Upload};
use interop_proto::v1::{
    client_frame::Frame, server_frame, ClientFrame, RejectCode, ServerFrame, Welcome,
};
use interop_proto::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::hub::Hub;
use crate::relay::{authorize, for_device, masked, refusal, valid_device_id};

/// A user one can sign in as (the demo has no passwords: a real backend
/// signs its users in its own way and knows their addresses).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DemoUser {
    /// `home:+4915112345678`
    pub address: String,
    pub name: String,
}

impl std::str::FromStr for DemoUser {
    type Err = String;
    /// `home:+4915112345678=Bob`
    fn from_str(s: &str) -> Result<Self, String> {
        let (address, name) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: want ADDRESS=NAME"))?;
        interop_proto::Address::parse(address).map_err(|e| format!("{address:?}: {e}"))?;
        if name.trim().is_empty() {
            return Err(format!("{s:?}: the name is empty"));
        }
        Ok(Self {
            address: address.to_owned(),
            name: name.trim().to_owned(),
        })
    }
}

/// The cookie that names a browser's session.
pub const COOKIE: &str = "hm_session";
/// How long a sign-in lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Largest upload the adapter takes from a browser.
pub const MAX_UPLOAD: usize = 32 * 1024 * 1024;

/// Everything the handlers share.
pub struct App {
    pub hub: Arc<Hub>,
    pub users: Vec<DemoUser>,
    pub web_dir: PathBuf,
    /// Session id (the cookie) to the user and when they signed in.
    sessions: Mutex<HashMap<String, (String, Instant)>>,
    /// `Secure` on the session cookie (behind HTTPS).
    pub secure_cookie: bool,
    media: MediaClient,
    providers: Mutex<Option<(Instant, Value)>>,
}

impl App {
    pub fn new(hub: Arc<Hub>, users: Vec<DemoUser>, web_dir: PathBuf) -> anyhow::Result<Self> {
        let media = MediaClient::new(&hub.config.media_url, None)?;
        Ok(Self {
            hub,
            users,
            web_dir,
            sessions: Mutex::new(HashMap::new()),
            secure_cookie: false,
            media,
            providers: Mutex::new(None),
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The signed-in user of a request, from its session cookie.
    fn user(&self, headers: &HeaderMap) -> Option<String> {
        let id = session_cookie(headers)?;
        self.user_of(id)
    }

    /// The user of session `id`, while it lasts ([`SESSION_TTL`]).
    fn user_of(&self, id: &str) -> Option<String> {
        self.sessions()
            .get(id)
            .filter(|(_, at)| at.elapsed() < SESSION_TTL)
            .map(|(user, _)| user.clone())
    }
}

/// The value of the session cookie in a request's `Cookie` headers.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// Whether a request comes from a page of this server (or from no page at
/// all, as a test client): a browser sends `Origin` on WebSocket upgrades
/// and POSTs, and another site's page must not use the user's cookie.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    origin == format!("http://{host}") || origin == format!("https://{host}")
}

/// A JSON answer (axum's `json` feature is left off: it would change the
/// axum every service of the workspace builds).
fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn ok_json(value: &impl Serialize) -> Response {
    json_response(StatusCode::OK, value)
}

fn error(status: StatusCode, code: &str, detail: &str) -> Response {
    json_response(status, &json!({"code": code, "detail": detail}))
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "NOT_SIGNED_IN", "sign in first")
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
        .route("/api/demo-users", get(demo_users))
        .route("/api/session", get(me).post(sign_in).delete(sign_out))
        .route("/api/providers", get(providers))
        .route("/api/media", post(upload))
        .route("/api/media/{id}", get(download))
        .route("/api/ws", get(ws))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .with_state(app)
}

/// What every page is allowed to load: its own scripts (and WebAssembly,
/// for Olm), media as blob URLs made from downloads, nothing else.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; \
    connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

async fn serve_file(app: &App, name: &str) -> Response {
    let content_type = match name.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("map") => "application/json",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    match tokio::fs::read(app.web_dir.join(name)).await {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CONTENT_SECURITY_POLICY, CSP),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CACHE_CONTROL, "no-cache"),
                (header::REFERRER_POLICY, "no-referrer"),
            ],
            body,
        )
            .into_response(),
        Err(_) => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "not built: run `npm ci && npm run build` in apps/home-messenger/web",
        ),
    }
}

async fn index(State(app): State<Arc<App>>) -> Response {
    serve_file(&app, "index.html").await
}

async fn asset(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    // Plain file names only: nothing outside the web directory.
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    serve_file(&app, &name).await
}

async fn demo_users(State(app): State<Arc<App>>) -> Response {
    ok_json(&json!({ "users": app.users }))
}

#[derive(Deserialize)]
struct SignIn {
    user: String,
}

async fn sign_in(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<SignIn>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "MALFORMED_REQUEST",
            "want {\"user\": ADDRESS}",
        );
    };
    if !same_origin(&headers) {
        return error(StatusCode::FORBIDDEN, "FORBIDDEN", "another site's page");
    }
    let Some(user) = app.users.iter().find(|u| u.address == body.user) else {
        return error(StatusCode::FORBIDDEN, "UNKNOWN_USER", "not a demo user");
    };
    let id = hex::encode(rand::random::<[u8; 32]>());
    {
        let mut sessions = app.sessions();
        sessions.retain(|_, (_, at)| at.elapsed() < SESSION_TTL);
        sessions.insert(id.clone(), (user.address.clone(), Instant::now()));
    }
    tracing::info!(user = %masked(&user.address), "signed in");
    let secure = if app.secure_cookie { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    let mut res = ok_json(&json!({"user": user.address, "name": user.name}));
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

async fn sign_out(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        app.sessions().remove(id);
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("hm_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    res
}

async fn me(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(user) = app.user(&headers) else {
        return unauthorized();
    };
    let name = app
        .users
        .iter()
        .find(|u| u.address == user)
        .map(|u| u.name.clone())
        .unwrap_or_default();
    ok_json(&json!({"user": user, "name": name, "provider": app.hub.config.provider}))
}

/// The other providers in the gateway's registry, with their names and
/// privacy policies (cached for 30 s).
async fn providers(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if app.user(&headers).is_none() {
        return unauthorized();
    }
    if let Some((at, v)) = app
        .providers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    {
        if at.elapsed() < Duration::from_secs(30) {
            return ok_json(&v);
        }
    }
    let config = &app.hub.config;
    let (Some(url), Some(token)) = (&config.admin_url, &config.admin_token) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "NO_REGISTRY",
            "the adapter has no admin API configured",
        );
    };
    let answer = match interop_client::admin::AdminClient::new(url, token) {
        Ok(admin) => admin.call("GET", "/admin/v1/providers", None).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(v) => {
            let list: Vec<Value> = v["providers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["id"] != config.provider.as_str())
                .map(|p| {
                    json!({
                        "id": p["id"],
                        "display_name": p["display_name"],
                        "privacy_policy_url": p["privacy_policy_url"],
                        "encryption": p["encryption"],
                    })
                })
                .collect();
            let v = json!({ "providers": list });
            *app.providers.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), v.clone()));
            ok_json(&v)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the provider registry");
            error(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                "the provider registry did not answer",
            )
        }
    }
}

fn media_error(e: MediaError) -> Response {
    match e {
        MediaError::Refused {
            status,
            code,
            detail,
            ..
        } => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            &code,
            &detail,
        ),
        other => {
            tracing::warn!(error = %other, "the media API failed");
            error(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                "the media API did not answer",
            )
        }
    }
}

/// Uploads a browser's file to the gateway's media API as the provider.
/// `Content-Type` is the media type; `X-Interop-Encryption: e2ee` for
/// encrypted media (the adapter cannot tell and does not look).
async fn upload(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if !same_origin(&headers) {
        return error(StatusCode::FORBIDDEN, "FORBIDDEN", "another site's page");
    }
    if app.user(&headers).is_none() {
        return unauthorized();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    let e2ee = headers
        .get("x-interop-encryption")
        .and_then(|v| v.to_str().ok())
        == Some("e2ee");
    let mut spec = Upload::new(content_type);
    spec.e2ee = e2ee;
    let sha: [u8; 32] =
        sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), &body)).into();
    let config = &app.hub.config;
    match app
        .media
        .upload(
            &config.provider,
            &config.token,
            &spec,
            &body[..],
            body.len() as u64,
            sha,
        )
        .await
    {
        Ok(u) => json_response(StatusCode::CREATED, &u),
        Err(e) => media_error(e),
    }
}

/// Downloads media delivered to the signed-in user.
async fn download(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(user) = app.user(&headers) else {
        return unauthorized();
    };
    let config = &app.hub.config;
    let mut body = Vec::new();
    match app
        .media
        .download(&config.provider, &config.token, &user, &id, &mut body)
        .await
    {
        Ok(d) => {
            let total = body.len();
            let range = headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(|r| byte_range(r, total));
            let (status, part, content_range) = match range {
                None => (StatusCode::OK, body, None),
                Some(Some((start, end))) => (
                    StatusCode::PARTIAL_CONTENT,
                    body[start..=end].to_vec(),
                    Some(format!("bytes {start}-{end}/{total}")),
                ),
                Some(None) => (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    Vec::new(),
                    Some(format!("bytes */{total}")),
                ),
            };
            let mut res = (
                status,
                [
                    (header::CONTENT_TYPE, d.content_type),
                    (header::CACHE_CONTROL, "private, no-store".to_owned()),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
                    (header::ACCEPT_RANGES, "bytes".to_owned()),
                ],
                part,
            )
                .into_response();
            if let Some(v) = content_range.and_then(|v| HeaderValue::from_str(&v).ok()) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            res
        }
        Err(e) => media_error(e),
    }
}

/// The one byte range a `Range` header asks of `total` bytes (players ask
/// for parts of voice notes and videos to find their length), as inclusive
/// offsets; `None` when it cannot be served (then the answer is 416).
pub fn byte_range(header: &str, total: usize) -> Option<(usize, usize)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || total == 0 {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: usize = suffix.parse().ok()?;
            if n == 0 {
                return None;
            }
            (total.saturating_sub(n), total - 1)
        }
        (s, "") => (s.parse().ok()?, total - 1),
        (s, e) => (s.parse().ok()?, e.parse::<usize>().ok()?.min(total - 1)),
    };
    (start <= end && end < total).then_some((start, end))
}

async fn ws(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !same_origin(&headers) {
        return error(StatusCode::FORBIDDEN, "FORBIDDEN", "another site's page");
    }
    let Some(session) = session_cookie(&headers).map(str::to_owned) else {
        return unauthorized();
    };
    let Some(user) = app.user_of(&session) else {
        return unauthorized();
    };
    upgrade
        .max_message_size(1024 * 1024)
        .on_upgrade(move |socket| browser_session(app, session, user, socket))
}

fn frame_bytes(f: &ServerFrame) -> Message {
    Message::Binary(f.encode_to_vec().into())
}

fn answer(request_id: u64, frame: server_frame::Frame) -> ServerFrame {
    ServerFrame {
        request_id,
        frame: Some(frame),
    }
}

/// One browser tab's connection: first a `Hello` naming its device, then
/// the gateway's frames both ways.
async fn browser_session(app: Arc<App>, session: String, user: String, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    // The first frame names the browser's device (its Olm keys are its
    // own); everything else waits for it.
    let device = loop {
        let Some(Ok(msg)) = stream.next().await else {
            return;
        };
        let Message::Binary(bytes) = msg else {
            continue;
        };
        match ClientFrame::decode(bytes) {
            Ok(ClientFrame {
                request_id,
                frame: Some(Frame::Hello(h)),
            }) if valid_device_id(&h.device_id) => {
                let welcome = answer(
                    request_id,
                    server_frame::Frame::Welcome(Welcome {
                        session_id: format!("{}/{}", user, h.device_id),
                        ..Default::default()
                    }),
                );
                if sink.send(frame_bytes(&welcome)).await.is_err() {
                    return;
                }
                break h.device_id;
            }
            Ok(f) => {
                let r = answer(
                    f.request_id,
                    server_frame::Frame::Rejected(refusal(
                        RejectCode::NotAuthenticated,
                        "send Hello with your device id first",
                    )),
                );
                if sink.send(frame_bytes(&r)).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    };
    // Deliveries come on one channel (the mailbox lets go of a browser that
    // does not keep up by dropping its sender: the connection then ends),
    // answers to the browser's own frames on another.
    let (live_tx, mut live_rx) = mpsc::channel::<ServerFrame>(1024);
    let (out_tx, mut out_rx) = mpsc::channel::<ServerFrame>(1024);
    let (conn, waiting) = app.hub.mailboxes.attach(&user, live_tx);
    tracing::info!(user = %masked(&user), waiting = waiting.len(), "browser connected");
    let writer = {
        let user = user.clone();
        let device = device.clone();
        tokio::spawn(async move {
            let send = |f: ServerFrame| {
                let mut f = f;
                if let Some(server_frame::Frame::Deliver(d)) = f.frame.as_mut() {
                    if let Some(e) = d.envelope.take() {
                        d.envelope = Some(for_device(e, &user, &device));
                    }
                }
                frame_bytes(&f)
            };
            for d in waiting {
                if sink
                    .send(send(answer(0, server_frame::Frame::Deliver(d))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            loop {
                let f = tokio::select! {
                    f = live_rx.recv() => f,
                    f = out_rx.recv() => f,
                };
                let Some(f) = f else { break };
                if sink.send(send(f)).await.is_err() {
                    return;
                }
            }
            sink.close().await.ok();
        })
    };
    while let Some(Ok(msg)) = stream.next().await {
        // Signed out (or expired): the connection ends with the session.
        if app.user_of(&session).is_none() {
            break;
        }
        let bytes = match msg {
            Message::Binary(b) => b,
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(frame) = ClientFrame::decode(bytes) else {
            let r = answer(
                0,
                server_frame::Frame::Rejected(refusal(
                    RejectCode::MalformedFrame,
                    "not a ClientFrame",
                )),
            );
            if out_tx.send(r).await.is_err() {
                break;
            }
            continue;
        };
        let request_id = frame.request_id;
        match frame.frame {
            Some(Frame::Ack(a)) => app.hub.mailboxes.ack(&user, &a.delivery_tags),
            Some(Frame::MarkRead(m))
                if !m.delivery_tags.is_empty() && m.delivery_tags.len() <= 256 =>
            {
                app.hub.mark_read(&user, m.delivery_tags).await;
            }
            Some(Frame::MarkRead(_)) => {}
            Some(f) => {
                if let Err(r) = authorize(&user, &f) {
                    tracing::info!(user = %masked(&user), "refused a frame for another user");
                    if out_tx
                        .send(answer(request_id, server_frame::Frame::Rejected(r)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
                // Answered in any order, as the gateway does.
                let hub = app.hub.clone();
                let out = out_tx.clone();
                tokio::spawn(async move {
                    let a = hub.forward(f).await;
                    out.send(answer(request_id, a)).await.ok();
                });
            }
            None => {}
        }
    }
    app.hub.mailboxes.detach(&user, conn);
    drop(out_tx);
    writer.abort();
    tracing::info!(user = %masked(&user), "browser disconnected");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range("bytes=0-", 10), Some((0, 9)));
        assert_eq!(byte_range("bytes=2-4", 10), Some((2, 4)));
        assert_eq!(byte_range("bytes=5-100", 10), Some((5, 9)));
        assert_eq!(byte_range("bytes=-3", 10), Some((7, 9)));
        assert_eq!(byte_range("bytes=10-", 10), None);
        assert_eq!(byte_range("bytes=4-2", 10), None);
        assert_eq!(byte_range("bytes=0-1,3-4", 10), None);
        assert_eq!(byte_range("items=0-1", 10), None);
        assert_eq!(byte_range("bytes=0-", 0), None);
    }

    #[test]
    fn cookies_origins_and_demo_users() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; hm_session=abc; b=2"),
        );
        assert_eq!(session_cookie(&h), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("hm_sessionx=abc"));
        assert_eq!(session_cookie(&h), None);

        let mut h = HeaderMap::new();
        assert!(same_origin(&h), "no Origin: not from a page");
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8088"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8088"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));

        let u: DemoUser = "home:+4915112345678=Bob".parse().unwrap();
        assert_eq!(u.name, "Bob");
        assert!("home:+4915112345678".parse::<DemoUser>().is_err());
        assert!("nobody=Bob".parse::<DemoUser>().is_err());
    }
}
