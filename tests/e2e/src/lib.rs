//! Test-only: the whole gateway in one process, against real `nats-server`
//! and `redis-server` binaries started on free ports.
//!
//! This crate is the one place that depends on the service crates; it holds
//! no product code, only the harness the end-to-end tests use.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use interop_providers::{hash_token, Registry};
use interop_service::{Deps, Endpoints, Health};
use interop_test_support::{NatsServer, RedisServer};

/// Demo providers and their tokens.
pub const HOME_TOKEN: &str = "home-test-token-0123456789abcdef";
pub const SIGNAL_TOKEN: &str = "signal-test-token-0123456789abcdef";
pub const TELEGRAM_TOKEN: &str = "telegram-test-token-0123456789abcdef";
/// The test gateway's key transparency VRF secret (docs/adr/0029).
pub const KT_VRF_SECRET: [u8; 32] = [7; 32];

/// The VRF public key a test's app pins for the test gateway.
pub async fn kt_vrf_public_key() -> Vec<u8> {
    interop_transparency::VrfKey::from_bytes(KT_VRF_SECRET)
        .public_key()
        .await
        .expect("a valid VRF key")
}

/// The bearer token of the [`Gateway`]'s admin API.
pub const ADMIN_TOKEN: &str = "admin-test-token-0123456789abcdef";

/// The registry the harness runs with: `home` (the gatekeeper), `signal`
/// (E2EE) and `telegram` (transport-only).
pub fn registry() -> Registry {
    let text = format!(
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

        [[providers]]
        id = "telegram"
        display_name = "Telegram"
        privacy_policy_url = "https://telegram.example/privacy"
        encryption = "transport-only"
        token_sha256 = ["{}"]
        "#,
        hash_token(HOME_TOKEN),
        hash_token(SIGNAL_TOKEN),
        hash_token(TELEGRAM_TOKEN)
    );
    // The text above is a fixed, valid registry.
    Registry::from_toml(&text).expect("the harness registry is valid")
}

/// The five services, running.
pub struct Gateway {
    pub ingest_url: String,
    pub delivery_url: String,
    /// Base URL of the media API (`POST /v1/media`, `GET /v1/media/{id}`).
    pub media_url: String,
    /// Base URL of ingest's admin API (providers, erasure), token
    /// [`ADMIN_TOKEN`].
    pub admin_api_url: String,
    shutdown: CancellationToken,
    healths: Vec<Arc<Health>>,
    /// Each service's admin base URL (`/healthz`, `/readyz`, `/metrics`).
    pub admin: Vec<(&'static str, String)>,
    tasks: Vec<(&'static str, JoinHandle<Result<(), String>>)>,
}

/// Connects one service and serves its admin port on a free port.
async fn deps(
    endpoints: &Endpoints,
    name: &'static str,
    healths: &mut Vec<Arc<Health>>,
    admin: &mut Vec<(&'static str, String)>,
    shutdown: &CancellationToken,
) -> Deps {
    let health = Health::new();
    let metrics = Arc::new(interop_service::Metrics::default());
    healths.push(health.clone());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding an admin port");
    admin.push((
        name,
        format!("http://{}", listener.local_addr().expect("bound")),
    ));
    tokio::spawn(interop_service::admin::serve(
        listener,
        health.clone(),
        metrics.clone(),
        shutdown.child_token(),
    ));
    Deps::connect_to(endpoints, name, health, metrics)
        .await
        .expect("connecting a service to the test servers")
}

impl Gateway {
    /// Starts ingest, spam-scoring, routing, media-transcoding and delivery
    /// in this process.
    pub async fn start(nats_url: &str, redis_url: &str) -> Self {
        Self::start_with(nats_url, redis_url, interop_spam_scoring::Config::default()).await
    }

    pub async fn start_with(
        nats_url: &str,
        redis_url: &str,
        spam: interop_spam_scoring::Config,
    ) -> Self {
        Self::start_to(&Endpoints::plain(nats_url, redis_url), spam).await
    }

    /// The five services connected to NATS and Redis as `endpoints` say
    /// (credentials, TLS).
    pub async fn start_to(endpoints: &Endpoints, spam: interop_spam_scoring::Config) -> Self {
        Self::start_with_streams(endpoints, spam, interop_bus::StreamSettings::default()).await
    }

    /// The five services with these stream settings (all the same, as a
    /// deployment's common flags make them), e.g. `--inbox-partitions`.
    pub async fn start_with_streams(
        endpoints: &Endpoints,
        spam: interop_spam_scoring::Config,
        streams: interop_bus::StreamSettings,
    ) -> Self {
        let spam = interop_spam_scoring::Config {
            streams: streams.clone(),
            ..spam
        };
        let providers = Arc::new(registry());
        let shutdown = CancellationToken::new();
        let ingest_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding ingest");
        let delivery_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding delivery");
        let ingest_url = format!(
            "ws://{}/v1/ws",
            ingest_listener.local_addr().expect("bound")
        );
        let delivery_url = format!(
            "ws://{}/v1/ws",
            delivery_listener.local_addr().expect("bound")
        );
        let mut tasks: Vec<(&'static str, JoinHandle<Result<(), String>>)> = Vec::new();
        let mut healths = Vec::new();
        let mut admin = Vec::new();

        let d = deps(endpoints, "ingest", &mut healths, &mut admin, &shutdown).await;
        let mut config = interop_ingest::Config::new(ingest_listener, providers.clone());
        config.streams = streams.clone();
        let admin_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the admin API");
        let admin_api_url = format!("http://{}", admin_listener.local_addr().expect("bound"));
        config.admin_api = Some(interop_ingest::admin::AdminApi::new(
            admin_listener,
            ADMIN_TOKEN,
        ));
        config.key_transparency = Some(interop_ingest::KeyTransparency {
            vrf_key: interop_transparency::VrfKey::from_bytes(KT_VRF_SECRET),
            epoch_interval: std::time::Duration::from_secs(5),
        });
        let s = shutdown.clone();
        tasks.push((
            "ingest",
            tokio::spawn(async move {
                interop_ingest::run(config, d, s)
                    .await
                    .map_err(|e| e.to_string())
            }),
        ));

        let d = deps(
            endpoints,
            "spam-scoring",
            &mut healths,
            &mut admin,
            &shutdown,
        )
        .await;
        let s = shutdown.clone();
        tasks.push((
            "spam-scoring",
            tokio::spawn(async move {
                interop_spam_scoring::run(spam, d, s)
                    .await
                    .map_err(|e| e.to_string())
            }),
        ));

        let d = deps(endpoints, "routing", &mut healths, &mut admin, &shutdown).await;
        let s = shutdown.clone();
        let routing = interop_routing::Config {
            streams: streams.clone(),
        };
        tasks.push((
            "routing",
            tokio::spawn(async move {
                interop_routing::run(routing, d, s)
                    .await
                    .map_err(|e| e.to_string())
            }),
        ));

        let d = deps(
            endpoints,
            "media-transcoding",
            &mut healths,
            &mut admin,
            &shutdown,
        )
        .await;
        let media_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding media-transcoding");
        let media_url = format!("http://{}", media_listener.local_addr().expect("bound"));
        let mut config = interop_media_transcoding::Config::new(media_listener, providers.clone());
        config.streams = streams.clone();
        let s = shutdown.clone();
        tasks.push((
            "media-transcoding",
            tokio::spawn(async move {
                interop_media_transcoding::run(config, d, s)
                    .await
                    .map_err(|e| e.to_string())
            }),
        ));

        let d = deps(endpoints, "delivery", &mut healths, &mut admin, &shutdown).await;
        let mut config = interop_delivery::Config::new(delivery_listener, providers);
        config.streams = streams;
        let s = shutdown.clone();
        tasks.push((
            "delivery",
            tokio::spawn(async move {
                interop_delivery::run(config, d, s)
                    .await
                    .map_err(|e| e.to_string())
            }),
        ));

        let mut gateway = Self {
            ingest_url,
            delivery_url,
            media_url,
            admin_api_url,
            shutdown,
            tasks,
            healths,
            admin,
        };
        gateway.wait_ready().await;
        gateway
    }

    /// Waits until every service reports ready (what `/readyz` says).
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            for (name, task) in &mut self.tasks {
                if task.is_finished() {
                    let result = task.await;
                    panic!("{name} stopped during start-up: {result:?}");
                }
            }
            let mut all = true;
            for h in &self.healths {
                all &= h.ready().await.is_ok();
            }
            if all {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway was not ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The admin base URL of `service`.
    pub fn admin_url(&self, service: &str) -> &str {
        self.admin
            .iter()
            .find(|(n, _)| *n == service)
            .map(|(_, u)| u.as_str())
            .unwrap_or_else(|| panic!("no service {service}"))
    }

    /// Uploads `data` through the media API as `provider` (E2EE, declared
    /// `image/jpeg`: stored and passed on byte for byte) and returns its
    /// media id.
    pub async fn upload_e2ee(&self, provider: &str, token: &str, data: &[u8]) -> String {
        use sha2::Digest as _;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.media_url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connecting to the media API");
        let head = format!(
            "POST /v1/media HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Authorization: Bearer {token}\r\nX-Interop-Provider: {provider}\r\n\
             Content-Type: image/jpeg\r\nContent-Length: {}\r\nX-Interop-Sha256: {}\r\n\
             X-Interop-Encryption: e2ee\r\n\r\n",
            data.len(),
            hex::encode(sha2::Sha256::digest(data))
        );
        stream.write_all(head.as_bytes()).await.expect("writing");
        stream.write_all(data).await.expect("writing");
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.expect("reading");
        let text = String::from_utf8_lossy(&buf).into_owned();
        assert!(text.starts_with("HTTP/1.1 201"), "upload refused: {text}");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value = serde_json::from_str(body.trim()).expect("a JSON answer");
        v["media_id"].as_str().expect("a media id").to_owned()
    }

    /// Stops every service and returns their results.
    pub async fn stop(self) -> Vec<(&'static str, Result<(), String>)> {
        self.shutdown.cancel();
        let mut results = Vec::new();
        for (name, task) in self.tasks {
            let r = match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(format!("panicked: {e}")),
                Err(_) => Err("did not stop within 30 s".into()),
            };
            results.push((name, r));
        }
        results
    }
}

/// Real servers plus the gateway.
pub struct Cluster {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub gateway: Gateway,
}

impl Cluster {
    pub async fn start() -> Self {
        Self::start_with(interop_spam_scoring::Config::default()).await
    }

    /// The same, with spam-scoring configured as given (e.g. its policy).
    pub async fn start_with(spam: interop_spam_scoring::Config) -> Self {
        let nats = NatsServer::start();
        let redis = RedisServer::start();
        let gateway = Gateway::start_with(&nats.url(), &redis.url(), spam).await;
        Self {
            nats,
            redis,
            gateway,
        }
    }
}

/// A plain HTTP/1.0 GET (admin ports only): the status code and body.
pub async fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of one sample (`name{labels} value`) in a Prometheus text
/// exposition, if present.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Connects one service to the test servers with its own health and metrics
/// (for tests that start services by hand).
pub async fn connect_service(nats_url: &str, redis_url: &str, name: &str) -> Deps {
    Deps::connect(
        nats_url,
        redis_url,
        name,
        Health::new(),
        Arc::new(interop_service::Metrics::default()),
    )
    .await
    .expect("connecting a service to the test servers")
}

/// The user-state stream (created if no service did yet) and its Redis
/// cache, opened as the services open them: what a test reads and writes
/// users' decisions through (docs/adr/0028).
pub async fn records(nats_url: &str, redis_url: &str) -> interop_state::Records {
    let deps = connect_service(nats_url, redis_url, "test").await;
    let js = async_nats::jetstream::new(deps.nats.clone());
    interop_bus::ensure_streams(&js, &interop_bus::StreamSettings::default())
        .await
        .expect("creating the streams");
    interop_state::Records::open(js, deps.redis.clone())
        .await
        .expect("opening the user-state stream")
}

/// Waits until something accepts TCP connections on `addr` (`host:port`).
pub async fn wait_listening(addr: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never listened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many messages were ever published to the ingest stream (its last
/// sequence): what reached the pipeline.
pub async fn ingest_published(nats_url: &str) -> u64 {
    let client = async_nats::connect(nats_url)
        .await
        .expect("connecting to NATS");
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(interop_bus::subjects::STREAM_INGEST)
        .await
        .expect("the ingest stream exists");
    stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence
}

/// A raw WebSocket to an endpoint, for tests of the wire format.
pub type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next server frame on a raw WebSocket (within 10 s), or the close
/// frame's code and reason when the gateway closed it.
pub async fn read_server_frame(
    ws: &mut RawWs,
) -> Result<
    interop_proto::v1::ServerFrame,
    (
        Option<tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode>,
        String,
    ),
> {
    use futures_util::StreamExt;
    use prost::Message as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s");
        match msg {
            Some(Ok(Message::Binary(b))) => {
                return Ok(interop_proto::v1::ServerFrame::decode(b).expect("a valid ServerFrame"))
            }
            Some(Ok(Message::Close(c))) => {
                return Err((
                    c.as_ref().map(|c| c.code),
                    c.map(|c| c.reason.to_string()).unwrap_or_default(),
                ))
            }
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return Err((None, String::new())),
        }
    }
}

/// ingest, spam-scoring and routing with limits high enough for volume, on
/// their own servers, plus as many delivery instances as a test starts
/// (each with its own shutdown, to kill one alone). Every service gets the
/// same registry and stream settings.
pub struct Stack {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub ingest_url: String,
    pub registry: Arc<Registry>,
    pub streams: interop_bus::StreamSettings,
    pub shutdown: CancellationToken,
}

/// One delivery instance of a [`Stack`].
pub struct DeliveryInstance {
    pub url: String,
    /// Cancels this instance only.
    pub kill: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Stack {
    pub async fn start(registry: Registry, streams: interop_bus::StreamSettings) -> Self {
        let nats = NatsServer::start();
        let redis = RedisServer::start();
        let (n, r) = (nats.url(), redis.url());
        let registry = Arc::new(registry);
        let shutdown = CancellationToken::new();
        let ingest_url = start_ingest(&n, &r, &registry, &streams, &shutdown).await;
        let spam = interop_spam_scoring::Config {
            policy: {
                let mut p = interop_spam_scoring::Policy::default();
                p.sender_rate.max_per_minute = 1_000_000;
                p
            },
            streams: streams.clone(),
            ..Default::default()
        };
        let d = connect_service(&n, &r, "spam-scoring").await;
        let s = shutdown.clone();
        tokio::spawn(async move { interop_spam_scoring::run(spam, d, s).await });
        let d = connect_service(&n, &r, "routing").await;
        let s = shutdown.clone();
        let routing = interop_routing::Config {
            streams: streams.clone(),
        };
        tokio::spawn(async move { interop_routing::run(routing, d, s).await });
        Self {
            nats,
            redis,
            ingest_url,
            registry,
            streams,
            shutdown,
        }
    }

    /// Starts one more ingest instance (a replica: same servers, registry
    /// and settings); its WebSocket URL.
    pub async fn ingest(&self) -> String {
        start_ingest(
            &self.nats.url(),
            &self.redis.url(),
            &self.registry,
            &self.streams,
            &self.shutdown,
        )
        .await
    }

    /// Starts one more delivery instance.
    pub async fn delivery(&self) -> DeliveryInstance {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding delivery");
        let addr = l.local_addr().expect("bound");
        let mut config = interop_delivery::Config::new(l, self.registry.clone());
        config.streams = self.streams.clone();
        let d = connect_service(&self.nats.url(), &self.redis.url(), "delivery").await;
        let kill = self.shutdown.child_token();
        let s = kill.clone();
        let task = tokio::spawn(async move {
            interop_delivery::run(config, d, s).await.ok();
        });
        wait_listening(&addr.to_string()).await;
        DeliveryInstance {
            url: format!("ws://{addr}/v1/ws"),
            kill,
            task,
        }
    }
}

/// An ingest with send limits high enough for volume, listening; its URL.
async fn start_ingest(
    nats_url: &str,
    redis_url: &str,
    registry: &Arc<Registry>,
    streams: &interop_bus::StreamSettings,
    shutdown: &CancellationToken,
) -> String {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding ingest");
    let addr = l.local_addr().expect("bound");
    let mut config = interop_ingest::Config::new(l, registry.clone());
    let unlimited = interop_ingest::RateLimit {
        per_second: 100_000.0,
        burst: 100_000,
    };
    config.sender_limit = unlimited;
    config.default_provider_limit = unlimited;
    config.streams = streams.clone();
    config.key_transparency = Some(interop_ingest::KeyTransparency {
        vrf_key: interop_transparency::VrfKey::from_bytes(KT_VRF_SECRET),
        epoch_interval: std::time::Duration::from_secs(5),
    });
    let d = connect_service(nats_url, redis_url, "ingest").await;
    let s = shutdown.clone();
    tokio::spawn(async move { interop_ingest::run(config, d, s).await });
    wait_listening(&addr.to_string()).await;
    format!("ws://{addr}/v1/ws")
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A command running the [`interop_cli`] with an empty client config, so a
/// developer's `.run/client.toml` (found beside the binary's checkout: URLs,
/// tokens, a pinned key transparency key of their local gateway) never
/// reaches a test: only the test's flags count.
pub fn interop_command() -> tokio::process::Command {
    static EMPTY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let config = EMPTY.get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "interop-e2e-empty-client-{}.toml",
            std::process::id()
        ));
        std::fs::write(&path, "").expect("writing an empty client config");
        path
    });
    let mut cmd = tokio::process::Command::new(interop_cli());
    cmd.env("INTEROP_CLIENT_CONFIG", config);
    cmd
}

/// The `interop` CLI, built by Cargo for the running test's profile (once
/// per test process).
pub fn interop_cli() -> std::path::PathBuf {
    static CLI: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    CLI.get_or_init(|| {
        let mut bins = interop_test_support::build_bins(&["interop-client"])
            .unwrap_or_else(|e| panic!("building the interop CLI: {e}"));
        bins.remove("interop")
            .expect("interop-client has the `interop` binary")
    })
    .clone()
}
