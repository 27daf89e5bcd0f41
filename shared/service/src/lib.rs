//! Service lifecycle shared by the five services: common flags, connecting
//! to NATS and Redis, the admin HTTP port (`/healthz`, `/readyz`), signals,
//! and a graceful drain.
//!
//! A service's library owns its flags (`Args`) and turns them into its
//! `Config` (`Config::from_args`, a [`ConfigError`] when they are wrong);
//! its `main.rs` only parses, builds and hands both to [`run_main`], which
//! owns the exit codes (64 for a bad configuration).

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

pub mod admin;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use std::path::PathBuf;

pub use interop_bus::NatsSecurity;
use interop_bus::StreamSettings;
pub use interop_telemetry::metrics::Metrics;
use interop_telemetry::LogFormat;

/// Flags every service takes. Each is also read from the environment
/// variable named in its help, so a Helm chart sets them once for all.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// NATS server URL (comma-separated for a cluster).
    #[arg(
        long,
        env = "INTEROP_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Redis URL.
    #[arg(
        long,
        env = "INTEROP_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Log filter, e.g. `info` or `interop_ingest=debug,info`.
    #[arg(long, env = "INTEROP_LOG", default_value = "info")]
    pub log: String,
    /// Log format: `text` or `json`.
    #[arg(long, env = "INTEROP_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Address of the admin HTTP port (`/healthz`, `/readyz`).
    #[arg(long, env = "INTEROP_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Replicas of each JetStream stream (1 for development, 3 in production).
    #[arg(long, env = "INTEROP_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// How long the offline store keeps an undelivered message, in seconds.
    #[arg(long, env = "INTEROP_INBOX_MAX_AGE_SECS", default_value_t = 30 * 24 * 3600)]
    pub inbox_max_age_secs: u64,
    /// How many messages the offline store keeps per recipient.
    #[arg(
        long,
        env = "INTEROP_INBOX_MAX_PER_RECIPIENT",
        default_value_t = 10_000
    )]
    pub inbox_max_per_recipient: i64,
    /// How many JetStream streams hold the offline store: 1, 2, 4, 8, 16,
    /// 32 or 64 (a divisor of the 64 recipient partitions). 1 is
    /// `INTEROP_INBOX`; more are `INTEROP_INBOX_0` ... each holding 64/P
    /// partitions, so their leaders spread over a cluster's nodes. Every
    /// service must run with the value the store was made with.
    #[arg(long, env = "INTEROP_INBOX_PARTITIONS", default_value_t = 1)]
    pub inbox_partitions: u64,
    /// OTLP/HTTP collector base URL for traces, e.g. `http://otel-collector:4318`
    /// or `https://collector.example:4318` (verified against the system's
    /// roots and --otlp-ca-file).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// PEM bundle of CAs an https collector's certificate may chain to,
    /// besides the system's.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE")]
    pub otlp_ca_file: Option<PathBuf>,
    /// Share of new traces recorded when exporting (0.0 to 1.0).
    #[arg(long, env = "INTEROP_TRACE_SAMPLE_RATIO", default_value_t = 0.1)]
    pub trace_sample_ratio: f64,
    /// Seconds to finish in-flight work after SIGTERM before exiting.
    #[arg(long, env = "INTEROP_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    #[command(flatten)]
    pub secured: SecuredArgs,
}

/// Credentials and TLS for NATS and Redis: files (mounted from Kubernetes
/// Secrets) and environment variables set from Secrets, so no secret has to
/// sit in a URL or a ConfigMap.
#[derive(Clone, Default, clap::Args)]
pub struct SecuredArgs {
    /// NATS credentials file (`.creds`: a user JWT and its nkey seed).
    #[arg(long, env = "INTEROP_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// File holding a NATS nkey seed.
    #[arg(long, env = "INTEROP_NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// NATS user (with `--nats-password`).
    #[arg(long, env = "INTEROP_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password (with `--nats-user`); prefer the environment variable.
    #[arg(long, env = "INTEROP_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// CA certificate (PEM) for NATS; setting it requires TLS.
    #[arg(long, env = "INTEROP_NATS_TLS_CA_FILE")]
    pub nats_tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS with NATS (with the key).
    #[arg(long, env = "INTEROP_NATS_TLS_CERT_FILE")]
    pub nats_tls_cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS with NATS.
    #[arg(long, env = "INTEROP_NATS_TLS_KEY_FILE")]
    pub nats_tls_key_file: Option<PathBuf>,
    /// Redis ACL user (optional, with the password).
    #[arg(long, env = "INTEROP_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// Redis password, any characters (no URL encoding); prefer the
    /// environment variable.
    #[arg(long, env = "INTEROP_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// CA certificate (PEM) for a `rediss://` URL, instead of the system's.
    #[arg(long, env = "INTEROP_REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS with Redis (with the key).
    #[arg(long, env = "INTEROP_REDIS_TLS_CERT_FILE")]
    pub redis_tls_cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS with Redis.
    #[arg(long, env = "INTEROP_REDIS_TLS_KEY_FILE")]
    pub redis_tls_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for SecuredArgs {
    // Passwords never reach a log line; file paths and names may.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |p: &Option<String>| p.as_ref().map(|_| "***");
        f.debug_struct("SecuredArgs")
            .field("nats_creds_file", &self.nats_creds_file)
            .field("nats_nkey_file", &self.nats_nkey_file)
            .field("nats_user", &self.nats_user)
            .field("nats_password", &hidden(&self.nats_password))
            .field("nats_tls_ca_file", &self.nats_tls_ca_file)
            .field("nats_tls_cert_file", &self.nats_tls_cert_file)
            .field("nats_tls_key_file", &self.nats_tls_key_file)
            .field("redis_username", &self.redis_username)
            .field("redis_password", &hidden(&self.redis_password))
            .field("redis_tls_ca_file", &self.redis_tls_ca_file)
            .field("redis_tls_cert_file", &self.redis_tls_cert_file)
            .field("redis_tls_key_file", &self.redis_tls_key_file)
            .finish()
    }
}

/// Where NATS and Redis are and how to reach them securely.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub nats_url: String,
    pub nats: NatsSecurity,
    pub redis: RedisTarget,
}

impl Endpoints {
    /// NATS and Redis at these URLs, without credentials or TLS settings
    /// beyond what the URLs say.
    pub fn plain(nats_url: &str, redis_url: &str) -> Self {
        Self {
            nats_url: nats_url.to_owned(),
            nats: NatsSecurity::default(),
            redis: RedisTarget {
                url: redis_url.to_owned(),
                ..RedisTarget::default()
            },
        }
    }
}

/// A Redis server: its URL (`redis://` or `rediss://` for TLS) and the
/// credentials and certificates given apart from it.
#[derive(Clone, Default)]
pub struct RedisTarget {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for RedisTarget {
    // Neither the password nor one inside the URL reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

impl RedisTarget {
    /// A client for this server. Fails on a malformed URL, a certificate
    /// file that cannot be read, or TLS files given for a `redis://` URL.
    pub fn client(&self) -> Result<redis::Client, DepsError> {
        use redis::IntoConnectionInfo as _;
        let bad = |detail: String| DepsError::Redis {
            url: redact_url(&self.url),
            source: redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "invalid Redis settings",
                detail,
            )),
        };
        let info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|source| DepsError::Redis {
                url: redact_url(&self.url),
                source,
            })?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        let info = info.set_redis_settings(settings);
        let tls_files = self.tls_ca_file.is_some() || self.tls_cert_file.is_some();
        if !tls_files {
            return redis::Client::open(info).map_err(|source| DepsError::Redis {
                url: redact_url(&self.url),
                source,
            });
        }
        if !self.url.starts_with("rediss://") {
            return Err(bad("TLS certificate files need a rediss:// URL".to_owned()));
        }
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| bad(format!("cannot read {}: {e}", p.display())))
        };
        let client_tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(bad(
                    "give both the client certificate and its key".to_owned()
                ))
            }
        };
        let root_cert = self.tls_ca_file.as_ref().map(read).transpose()?;
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|source| DepsError::Redis {
            url: redact_url(&self.url),
            source,
        })
    }
}

/// A configuration error: the binary prints it and exits with code 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl CommonArgs {
    /// Where NATS and Redis are and how to reach them, from these flags.
    pub fn endpoints(&self) -> Result<Endpoints, ConfigError> {
        let s = &self.secured;
        let pair = |a: bool, b: bool, what: &str| {
            if a == b {
                Ok(())
            } else {
                Err(ConfigError(format!("{what}: give both or neither")))
            }
        };
        pair(
            s.nats_user.is_some(),
            s.nats_password.is_some(),
            "--nats-user and --nats-password",
        )?;
        pair(
            s.nats_tls_cert_file.is_some(),
            s.nats_tls_key_file.is_some(),
            "--nats-tls-cert-file and --nats-tls-key-file",
        )?;
        pair(
            s.redis_tls_cert_file.is_some(),
            s.redis_tls_key_file.is_some(),
            "--redis-tls-cert-file and --redis-tls-key-file",
        )?;
        let methods = [
            s.nats_creds_file.is_some(),
            s.nats_nkey_file.is_some(),
            s.nats_user.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(ConfigError(
                "NATS credentials: give one of --nats-creds-file, --nats-nkey-file or --nats-user"
                    .into(),
            ));
        }
        if (s.redis_tls_ca_file.is_some() || s.redis_tls_cert_file.is_some())
            && !self.redis_url.starts_with("rediss://")
        {
            return Err(ConfigError(
                "--redis-tls-ca-file and --redis-tls-cert-file need a rediss:// URL".into(),
            ));
        }
        if s.redis_username.is_some() && s.redis_password.is_none() {
            return Err(ConfigError(
                "--redis-username needs --redis-password".into(),
            ));
        }
        Ok(Endpoints {
            nats_url: self.nats_url.clone(),
            nats: NatsSecurity {
                creds_file: s.nats_creds_file.clone(),
                nkey_file: s.nats_nkey_file.clone(),
                user: s.nats_user.clone(),
                password: s.nats_password.clone(),
                tls_ca_file: s.nats_tls_ca_file.clone(),
                tls_cert_file: s.nats_tls_cert_file.clone(),
                tls_key_file: s.nats_tls_key_file.clone(),
            },
            redis: RedisTarget {
                url: self.redis_url.clone(),
                username: s.redis_username.clone(),
                password: s.redis_password.clone(),
                tls_ca_file: s.redis_tls_ca_file.clone(),
                tls_cert_file: s.redis_tls_cert_file.clone(),
                tls_key_file: s.redis_tls_key_file.clone(),
            },
        })
    }

    /// The stream settings these flags describe.
    pub fn stream_settings(&self) -> Result<StreamSettings, ConfigError> {
        if !(1..=5).contains(&self.stream_replicas) {
            return Err(ConfigError(format!(
                "--stream-replicas must be 1 to 5, got {}",
                self.stream_replicas
            )));
        }
        if self.inbox_max_age_secs == 0 || self.inbox_max_per_recipient < 1 {
            return Err(ConfigError(
                "--inbox-max-age-secs and --inbox-max-per-recipient must be positive".into(),
            ));
        }
        let inbox_partitions = interop_bus::InboxPartitions::new(self.inbox_partitions)
            .map_err(|e| ConfigError(e.to_string()))?;
        Ok(StreamSettings {
            replicas: self.stream_replicas,
            inbox_max_age: Duration::from_secs(self.inbox_max_age_secs),
            inbox_max_per_recipient: self.inbox_max_per_recipient,
            inbox_partitions,
            ..StreamSettings::default()
        })
    }

    pub fn log_format(&self) -> Result<LogFormat, ConfigError> {
        self.log_format
            .parse()
            .map_err(|e: interop_telemetry::TelemetryError| ConfigError(e.to_string()))
    }
}

/// Connections a service runs on.
#[derive(Clone)]
pub struct Deps {
    pub nats: async_nats::Client,
    pub redis: redis::aio::ConnectionManager,
    /// What `/readyz` reports; the service marks itself bound when ready.
    pub health: Arc<Health>,
    /// What `/metrics` reports; the service registers its metrics here.
    pub metrics: Arc<Metrics>,
}

/// Why the service cannot start on these dependencies. Unreachable NATS or
/// Redis is not among them: [`Deps::connect`] waits for both.
#[derive(Debug, thiserror::Error)]
pub enum DepsError {
    #[error(transparent)]
    Nats(#[from] interop_bus::BusError),
    #[error("invalid Redis URL {url}: {source}")]
    Redis {
        url: String,
        source: redis::RedisError,
    },
}

impl DepsError {
    /// A configuration error (a malformed URL): nothing to wait for.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Redis { .. }
                | Self::Nats(
                    interop_bus::BusError::Connect { .. }
                        | interop_bus::BusError::Credentials { .. }
                )
        )
    }
}

/// The longest pause between two attempts at reaching Redis at start-up.
const REDIS_RETRY_MAX: Duration = Duration::from_secs(5);

impl Deps {
    /// Connects to NATS and Redis, waiting **as long as it takes** for each
    /// to answer (ADR 14): an unreachable dependency at start only delays
    /// readiness (`/readyz` says which one is awaited, the log repeats a
    /// warning with the last error), it never makes the service exit. Only
    /// a malformed URL or a NATS older than 2.9 fails. Both clients
    /// reconnect by themselves afterwards. Cancel the future to stop.
    pub async fn connect(
        nats_url: &str,
        redis_url: &str,
        name: &str,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DepsError> {
        Self::connect_to(
            &Endpoints::plain(nats_url, redis_url),
            name,
            health,
            metrics,
        )
        .await
    }

    /// [`Deps::connect`] with credentials and TLS settings.
    pub async fn connect_to(
        endpoints: &Endpoints,
        name: &str,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DepsError> {
        let redis_url = endpoints.redis.url.as_str();
        // A malformed Redis URL fails before anything is waited for.
        let client = endpoints.redis.client()?;
        health.set_phase(Phase::Nats);
        let nats = interop_bus::connect_with(&endpoints.nats_url, name, &endpoints.nats).await?;
        health.set_phase(Phase::Redis);
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(250);
        let mut next_log = started;
        let redis = loop {
            match redis::aio::ConnectionManager::new_with_config(client.clone(), config.clone())
                .await
            {
                Ok(r) => break r,
                Err(e) => {
                    let now = tokio::time::Instant::now();
                    if now >= next_log {
                        warn!(
                            url = %redact_url(redis_url),
                            waited_s = started.elapsed().as_secs(),
                            error = %e,
                            "Redis is not reachable yet; still trying (not ready until it is)."
                        );
                        next_log = now + interop_bus::STILL_WAITING_LOG_EVERY;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(REDIS_RETRY_MAX);
                }
            }
        };
        if started.elapsed() >= Duration::from_secs(2) {
            info!(
                waited_s = started.elapsed().as_secs(),
                "Connected to Redis."
            );
        }
        health.set_phase(Phase::Service);
        let deps = Self {
            nats,
            redis,
            health,
            metrics,
        };
        deps.health.watch(&deps);
        Ok(deps)
    }
}

/// A URL with any password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// What a starting service is waiting for (`/readyz` names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Reaching NATS.
    Nats = 0,
    /// Reaching Redis.
    Redis = 1,
    /// The service's own start: streams, consumers, the provider registry
    /// (each retried until it succeeds; the log says which).
    Service = 2,
}

impl Phase {
    fn reason(self) -> &'static str {
        match self {
            Self::Nats => "starting: waiting for NATS",
            Self::Redis => "starting: waiting for Redis",
            Self::Service => "starting: creating streams and consumers, loading the registry",
        }
    }
}

/// What `/readyz` reports. Services flip `bound` once their consumers and
/// listeners are up; `draining` is set on shutdown; until bound, the start-up
/// [`Phase`] says what the service waits for.
#[derive(Default)]
pub struct Health {
    bound: AtomicBool,
    draining: AtomicBool,
    phase: AtomicU8,
    deps: std::sync::OnceLock<(async_nats::Client, redis::aio::ConnectionManager)>,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// What start-up waits for now.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Nats,
            1 => Phase::Redis,
            _ => Phase::Service,
        }
    }

    /// Whether the service finished starting (see [`Health::set_bound`]).
    pub fn is_bound(&self) -> bool {
        self.bound.load(Ordering::Acquire)
    }

    /// Watch these connections for readiness.
    pub fn watch(&self, deps: &Deps) {
        // Only the first set counts: a Health watches one set of connections.
        self.deps.set((deps.nats.clone(), deps.redis.clone())).ok();
    }

    pub fn set_bound(&self) {
        self.bound.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Ready: bound, not draining, NATS connected, Redis answering PING.
    /// Returns the reason when not ready.
    pub async fn ready(&self) -> Result<(), &'static str> {
        if self.is_draining() {
            return Err("draining");
        }
        if !self.is_bound() {
            return Err(self.phase().reason());
        }
        let Some((nats, redis)) = self.deps.get() else {
            return Err("starting");
        };
        if nats.connection_state() != async_nats::connection::State::Connected {
            return Err("nats disconnected");
        }
        let mut redis = redis.clone();
        let ping = tokio::time::timeout(
            Duration::from_millis(500),
            redis::cmd("PING").query_async::<String>(&mut redis),
        )
        .await;
        match ping {
            Ok(Ok(_)) => Ok(()),
            _ => Err("redis unavailable"),
        }
    }
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::terminate(),
            ) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "Cannot listen for SIGTERM; only Ctrl-C stops the service.");
                    ctrl_c.await.ok();
                    t.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        ctrl_c.await.ok();
        info!("Shutdown requested; draining.");
        t.cancel();
    });
    token
}

/// The exit code of a binary started with a bad configuration (BSD's
/// `EX_USAGE`): flags, files or settings it cannot run with.
pub const EXIT_CONFIG: i32 = 64;

/// The whole life of a service binary: the configuration `config` (its
/// error, printed, exits with [`EXIT_CONFIG`]), telemetry, connections, the
/// admin port, running `service` until a signal, draining with a grace
/// timeout. Returns the process exit code.
pub async fn run_main<C, F, Fut, E>(
    name: &'static str,
    common: &CommonArgs,
    config: Result<C, ConfigError>,
    service: F,
) -> i32
where
    F: FnOnce(C, Deps, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return EXIT_CONFIG;
        }
    };
    let format = match common.log_format() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{name}: {e}");
            return EXIT_CONFIG;
        }
    };
    if !(0.0..=1.0).contains(&common.trace_sample_ratio) {
        eprintln!("{name}: --trace-sample-ratio must be between 0 and 1");
        return EXIT_CONFIG;
    }
    let endpoints = match common.endpoints() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{name}: {e}");
            return EXIT_CONFIG;
        }
    };
    let options = interop_telemetry::Options {
        format,
        filter: common.log.clone(),
        otlp_endpoint: common.otlp_endpoint.clone(),
        otlp_ca_file: common.otlp_ca_file.clone(),
        sample_ratio: common.trace_sample_ratio,
        ..interop_telemetry::Options::new(name)
    };
    let _guard = match interop_telemetry::init(options) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{name}: {e}");
            return EXIT_CONFIG;
        }
    };
    let health = Health::new();
    let metrics = Arc::new(Metrics::default());
    let shutdown = shutdown_on_signal();
    let admin = match tokio::net::TcpListener::bind(common.admin_listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(addr = %common.admin_listen, error = %e, "Cannot bind the admin port.");
            return 1;
        }
    };
    let admin_task = tokio::spawn(admin::serve(
        admin,
        health.clone(),
        metrics.clone(),
        shutdown.child_token(),
    ));
    info!("Starting; waiting for NATS and Redis.");
    let deps = tokio::select! {
        d = Deps::connect_to(&endpoints, name, health.clone(), metrics) => d,
        () = shutdown.cancelled() => return 0,
    };
    let deps = match deps {
        Ok(d) => d,
        Err(e) if e.is_config() => {
            error!(error = %e, "Invalid configuration.");
            return EXIT_CONFIG;
        }
        Err(e) => {
            error!(error = %e, "Cannot use a dependency.");
            return 1;
        }
    };
    let nats = deps.nats.clone();
    let service_shutdown = shutdown.clone();
    let mut task = tokio::spawn(service(config, deps, service_shutdown));
    let result = tokio::select! {
        r = &mut task => r,
        () = shutdown.cancelled() => {
            if !health.is_bound() {
                // Still starting (waiting for streams, consumers, the
                // registry): nothing in flight to finish.
                info!("Shutdown requested while starting; stopping.");
                task.abort();
                return 0;
            }
            health.set_draining();
            let grace = Duration::from_secs(common.shutdown_grace_secs);
            match tokio::time::timeout(grace, &mut task).await {
                Ok(r) => r,
                Err(_) => {
                    warn!(?grace, "In-flight work did not finish within the grace period; exiting.");
                    task.abort();
                    return 1;
                }
            }
        }
    };
    health.set_draining();
    // Push out any buffered publishes and acks before exiting.
    if let Ok(Err(e)) | Err(e) = tokio::time::timeout(Duration::from_secs(5), nats.flush())
        .await
        .map_err(|_| "timed out".to_string())
        .map(|r| r.map_err(|e| e.to_string()))
    {
        warn!(error = %e, "Could not flush NATS before exiting.");
    }
    admin_task.abort();
    match result {
        Ok(Ok(())) => {
            info!("Stopped.");
            0
        }
        Ok(Err(e)) => {
            error!(error = %e, "The service failed.");
            1
        }
        Err(e) => {
            error!(error = %e, "The service panicked.");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[tokio::test]
    async fn a_bad_configuration_exits_64_before_anything_starts() {
        use clap::Parser as _;
        let flags = Flags::try_parse_from(["svc"]).expect("the defaults parse");
        let started = Arc::new(AtomicBool::new(false));
        let s = started.clone();
        let code = run_main(
            "svc",
            &flags.common,
            Err::<(), _>(ConfigError("--x must be positive".into())),
            move |(), _deps, _shutdown| {
                s.store(true, Ordering::SeqCst);
                async { Ok::<(), String>(()) }
            },
        )
        .await;
        assert_eq!(code, EXIT_CONFIG);
        assert!(!started.load(Ordering::SeqCst));
        // So is a bad common flag, with a good service configuration.
        for bad in [["--stream-replicas", "9"], ["--inbox-partitions", "3"]] {
            let flags = Flags::try_parse_from(["svc", bad[0], bad[1]]).expect("parses");
            let code = run_main(
                "svc",
                &flags.common,
                flags.common.stream_settings(),
                |_, _deps, _shutdown| async { Ok::<(), String>(()) },
            )
            .await;
            assert_eq!(code, EXIT_CONFIG, "{bad:?}");
        }
    }

    #[test]
    fn the_store_partitions_must_divide_64() {
        use clap::Parser as _;
        let p = |value: &str| {
            Flags::try_parse_from(["svc", "--inbox-partitions", value])
                .expect("parses")
                .common
                .stream_settings()
                .map(|s| s.inbox_partitions.get())
        };
        let defaults = Flags::try_parse_from(["svc"]).expect("the defaults parse");
        assert_eq!(
            defaults
                .common
                .stream_settings()
                .expect("valid")
                .inbox_partitions
                .get(),
            1
        );
        for ok in [1, 2, 4, 8, 16, 32, 64] {
            assert_eq!(p(&ok.to_string()).expect("valid"), ok);
        }
        // The edges: nothing, one past the top, and what does not divide.
        for bad in ["0", "65", "128", "3", "48", "63"] {
            let e = p(bad).expect_err(bad);
            assert!(e.0.contains("--inbox-partitions"), "{}", e.0);
        }
        assert!(Flags::try_parse_from(["svc", "--inbox-partitions", "-1"]).is_err());
    }

    #[tokio::test]
    async fn readyz_says_what_start_up_waits_for() {
        let health = Health::new();
        assert_eq!(health.ready().await, Err("starting: waiting for NATS"));
        health.set_phase(Phase::Redis);
        assert_eq!(health.ready().await, Err("starting: waiting for Redis"));
        health.set_phase(Phase::Service);
        assert!(health
            .ready()
            .await
            .unwrap_err()
            .starts_with("starting: creating"));
    }

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_url("redis://:secret@host:6379"),
            "redis://***@host:6379"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
    }
}
