//! A real gateway (the five services in-process, on real nats-server and
//! redis-server) with the adapter in front of it, for the adapter's tests
//! and the browser tests.

#![allow(dead_code)]

use std::path::PathBuf;

use interop_e2e::{Gateway, ADMIN_TOKEN, HOME_TOKEN, SIGNAL_TOKEN};
use interop_home_messenger::{default_demo_users, GatewayConfig, Server};
use interop_test_support::{NatsServer, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BOB: &str = "home:+4915112345678";
pub const CAROL: &str = "home:+4915112345679";

pub struct Env {
    pub gateway: Gateway,
    pub server: Server,
    /// Holds `client.toml` for the `interop` CLI (and its `keys/`).
    pub dir: tempfile::TempDir,
    // Kept last: dropped (stopped) after the services.
    pub redis: RedisServer,
    pub nats: NatsServer,
}

/// The built web app.
pub fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web/dist")
}

pub async fn start() -> Env {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let gateway = Gateway::start(&nats.url(), &redis.url()).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(
        dir.path().join("client.toml"),
        format!(
            "ingest_url = \"{}\"\ndelivery_url = \"{}\"\nmedia_url = \"{}\"\nadmin_url = \"{}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\n[tokens]\nhome = \"{HOME_TOKEN}\"\nsignal = \"{SIGNAL_TOKEN}\"\n",
            gateway.ingest_url, gateway.delivery_url, gateway.media_url, gateway.admin_api_url
        ),
    )
    .expect("writing client.toml");
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
    let server = Server::start(config, default_demo_users(), web_dir(), listener)
        .await
        .expect("starting the adapter");
    Env {
        gateway,
        server,
        dir,
        redis,
        nats,
    }
}

/// One HTTP/1.1 request to the adapter; returns status, headers and body.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("writing");
    s.write_all(body).await.expect("writing");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("reading");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head, raw[split + 4..].to_vec())
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
