//! A real gateway (the five service binaries as processes, on real
//! nats-server and redis-server, configured as `scripts/up` does) with the
//! adapter in front of it, for the adapter's tests and the browser tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use interop_home_messenger::{default_demo_users, GatewayConfig, Server};
use interop_test_support::{build_bins, free_port, NatsServer, RedisServer};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BOB: &str = "home:+4915112345678";
pub const CAROL: &str = "home:+4915112345679";
pub const HOME_TOKEN: &str = "home-test-token-0123456789abcdef";
pub const SIGNAL_TOKEN: &str = "signal-test-token-0123456789abcdef";
pub const ADMIN_TOKEN: &str = "admin-test-token-0123456789abcdef";

const SERVICES: [&str; 5] = [
    "ingest",
    "spam-scoring",
    "routing",
    "media-transcoding",
    "delivery",
];

/// The workspace's binaries the tests run: the services and `interop`.
pub fn binaries() -> &'static HashMap<String, PathBuf> {
    static BINS: std::sync::OnceLock<HashMap<String, PathBuf>> = std::sync::OnceLock::new();
    BINS.get_or_init(|| {
        build_bins(&[
            "interop-ingest",
            "interop-spam-scoring",
            "interop-routing",
            "interop-media-transcoding",
            "interop-delivery",
            "interop-client",
        ])
        .unwrap_or_else(|e| panic!("building the gateway: {e}"))
    })
}

/// The five services as processes; killed when dropped.
pub struct Gateway {
    pub ingest_url: String,
    pub delivery_url: String,
    pub media_url: String,
    pub admin_api_url: String,
    children: Vec<(&'static str, Child)>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

fn hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

impl Gateway {
    pub async fn start(nats_url: &str, redis_url: &str, dir: &Path) -> Self {
        let providers = dir.join("providers.toml");
        std::fs::write(
            &providers,
            format!(
                r#"
[[providers]]
id = "home"
display_name = "Home Messenger"
privacy_policy_url = "https://home.example/privacy"
encryption = "e2ee"
token_sha256 = ["{}"]

[[providers]]
id = "signal"
display_name = "Signal"
privacy_policy_url = "https://signal.example/privacy"
encryption = "e2ee"
token_sha256 = ["{}"]
"#,
                hash(HOME_TOKEN),
                hash(SIGNAL_TOKEN)
            ),
        )
        .expect("writing the registry");
        std::fs::write(dir.join("admin.token"), ADMIN_TOKEN).expect("writing the admin token");
        std::fs::write(dir.join("kt-vrf.key"), "07".repeat(32)).expect("writing the VRF key");
        let (ingest, delivery, media, admin_api) =
            (free_port(), free_port(), free_port(), free_port());
        let bins = binaries();
        let mut children = Vec::new();
        let mut ready = Vec::new();
        for service in SERVICES {
            let admin = free_port();
            let log =
                std::fs::File::create(dir.join(format!("{service}.log"))).expect("a log file");
            let child = Command::new(&bins[service])
                .env("INTEROP_NATS_URL", nats_url)
                .env("INTEROP_REDIS_URL", redis_url)
                .env("INTEROP_PROVIDERS_FILE", &providers)
                .env("INTEROP_INGEST_LISTEN", format!("127.0.0.1:{ingest}"))
                .env("INTEROP_DELIVERY_LISTEN", format!("127.0.0.1:{delivery}"))
                .env(
                    "INTEROP_INGEST_ADMIN_API_LISTEN",
                    format!("127.0.0.1:{admin_api}"),
                )
                .env("INTEROP_ADMIN_TOKEN_FILE", dir.join("admin.token"))
                .env(
                    "INTEROP_MEDIA_TRANSCODING_LISTEN",
                    format!("127.0.0.1:{media}"),
                )
                .env("INTEROP_INGEST_KT_VRF_KEY_FILE", dir.join("kt-vrf.key"))
                .env("INTEROP_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("a log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {service}: {e}"));
            children.push((service, child));
            ready.push((service, admin));
        }
        let gateway = Self {
            ingest_url: format!("ws://127.0.0.1:{ingest}/v1/ws"),
            delivery_url: format!("ws://127.0.0.1:{delivery}/v1/ws"),
            media_url: format!("http://127.0.0.1:{media}"),
            admin_api_url: format!("http://127.0.0.1:{admin_api}"),
            children,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for (service, admin) in ready {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
            loop {
                if let Ok(Ok((200, _, _))) = tokio::time::timeout(
                    Duration::from_secs(2),
                    try_http(addr, "GET", "/readyz", &[], b""),
                )
                .await
                {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{service} was not ready within 60 s; its log: {}",
                    std::fs::read_to_string(dir.join(format!("{service}.log"))).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        gateway
    }
}

pub struct Env {
    pub server: Server,
    pub gateway: Gateway,
    /// `client.toml` for the `interop` CLI (its keys go beside it), the
    /// registry, and the services' logs.
    pub dir: tempfile::TempDir,
    // Kept last: stopped after the services.
    pub redis: RedisServer,
    pub nats: NatsServer,
}

/// The built web app.
pub fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web/dist")
}

/// An adapter on `gateway` keeping its mailboxes in `data_dir`.
pub async fn adapter(gateway: &Gateway, data_dir: &Path) -> Server {
    let config = GatewayConfig {
        ingest_url: gateway.ingest_url.clone(),
        delivery_url: gateway.delivery_url.clone(),
        media_url: gateway.media_url.clone(),
        admin_url: Some(gateway.admin_api_url.clone()),
        admin_token: Some(ADMIN_TOKEN.into()),
        provider: "home".into(),
        token: HOME_TOKEN.into(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the adapter");
    Server::start(
        config,
        default_demo_users(),
        web_dir(),
        data_dir,
        false,
        listener,
    )
    .await
    .expect("starting the adapter")
}

pub async fn start() -> Env {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let gateway = Gateway::start(&nats.url(), &redis.url(), dir.path()).await;
    std::fs::write(
        dir.path().join("client.toml"),
        format!(
            "ingest_url = \"{}\"\ndelivery_url = \"{}\"\nmedia_url = \"{}\"\nadmin_url = \"{}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\n[tokens]\nhome = \"{HOME_TOKEN}\"\nsignal = \"{SIGNAL_TOKEN}\"\n",
            gateway.ingest_url, gateway.delivery_url, gateway.media_url, gateway.admin_api_url
        ),
    )
    .expect("writing client.toml");
    let server = adapter(&gateway, &dir.path().join("mailboxes")).await;
    Env {
        server,
        gateway,
        dir,
        redis,
        nats,
    }
}

/// One HTTP/1.1 request; returns status, headers and body.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    try_http(addr, method, path, headers, body)
        .await
        .expect("an HTTP answer")
}

pub async fn try_http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let bad = || std::io::Error::other("not an HTTP answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, head, raw[split + 4..].to_vec()))
}

/// Signs in as `user`; returns the `Cookie` header value.
pub async fn sign_in(addr: std::net::SocketAddr, user: &str) -> String {
    let body = format!("{{\"user\":\"{user}\"}}");
    let (status, head, _) = http(
        addr,
        "POST",
        "/api/session",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    cookie.split(';').next().expect("name=value").to_owned()
}
