//! The NATS bus of the interop gateway: subject and stream names, stream and
//! consumer set-up, the pipeline stage loop, and trace context in headers.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

pub mod admissions;
pub mod handling;
pub mod inbox;
pub mod legacy_store;
pub mod metrics;
pub mod pipeline;
pub mod repartition;
pub mod stage;
pub mod store;
pub mod streams;
pub mod subjects;
pub mod trace;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use async_nats;
pub use handling::{HandleError, Outgoing};
pub use inbox::{InboxPartitions, InboxStreams};
pub use stage::{run_stage, Handler, Input, StageOptions};
pub use streams::{ensure_streams, open_stream, StreamSettings};

/// Errors of bus set-up.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The URL is malformed (a configuration error: nothing to wait for).
    #[error("invalid NATS URL {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    /// A credentials file that cannot be read or parsed (a configuration
    /// error: nothing to wait for). The file's contents are never shown.
    #[error("cannot use the NATS credentials file {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error("nats-server {found} is too old: the gateway needs 2.9.0 or newer")]
    ServerTooOld { found: String },
    #[error("cannot create or update stream {name}: {source}")]
    Stream {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stream created by an older version lacks a setting that NATS 2.9
    /// cannot add to an existing stream.
    #[error("stream {name} was created by an older interop version without {setting}, and NATS cannot add it to an existing stream: {remedy}")]
    StreamUpgrade {
        name: String,
        setting: &'static str,
        remedy: &'static str,
    },
    /// The store's streams on the server were made with another
    /// `--inbox-partitions` than this service's (docs/adr/0032): nothing is
    /// changed; the service stops rather than split the store two ways.
    #[error("the store's streams on NATS ({found}) are not those of --inbox-partitions {configured} ({expected}): \
             run every service with the value the store was made with; changing it on a running system is a \
             procedure of its own (docs/deploy.md, \"Store partitions\")")]
    StoreLayout {
        found: String,
        configured: u32,
        expected: String,
    },
    #[error("cannot create or bind consumer {name}: {source}")]
    Consumer {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot open key-value bucket {name}: {source}")]
    KeyValue {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
}

/// The servers in a `--nats-url` value: one URL, or several separated by
/// commas (a cluster). async-nats parses a `&str` as one URL, so a list has
/// to be split first.
pub fn server_list(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// How often a service still waiting for a dependency at start-up says so
/// again in its log.
pub const STILL_WAITING_LOG_EVERY: Duration = Duration::from_secs(10);

/// `url` (or a comma-separated list) with any user and password replaced,
/// for logs.
pub fn redact_urls(url: &str) -> String {
    server_list(url)
        .into_iter()
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &u[..scheme], &u[at + 1..])
            }
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

static SLOW_CONSUMER_EVENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times a subscription of a client made by [`connect`] in this
/// process fell behind and had messages dropped by the client. Core NATS
/// subscribers that must not miss an event unnoticed (delivery sessions)
/// watch it.
pub fn slow_consumer_events() -> u64 {
    SLOW_CONSUMER_EVENTS.load(Ordering::Relaxed)
}

/// Connects to NATS (`url` may list several servers, comma-separated) and
/// checks the server version.
///
/// It waits for the first connection **as long as it takes**: a NATS that is
/// down, partitioned away or still starting only delays the caller (a
/// service stays not ready meanwhile), it is never a reason to exit. While
/// waiting it logs a warning with the last connection error every
/// [`STILL_WAITING_LOG_EVERY`]. Afterwards the client reconnects by itself
/// forever; losing and regaining the connection is logged. Only a
/// malformed `url` fails at once ([`BusError::Connect`]), and a server older
/// than 2.9 once reached ([`BusError::ServerTooOld`]). Cancel the future to
/// stop waiting.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, BusError> {
    connect_with(url, name, &NatsSecurity::default()).await
}

/// How a service authenticates to NATS and checks its certificate; every
/// field is optional, and the default is neither TLS nor credentials.
/// Secrets come from files or the environment (a Kubernetes Secret), never
/// from the URL in a ConfigMap.
#[derive(Clone, Default)]
pub struct NatsSecurity {
    /// A `.creds` file (a user JWT and its nkey seed).
    pub creds_file: Option<std::path::PathBuf>,
    /// A file holding an nkey seed (`SU...`).
    pub nkey_file: Option<std::path::PathBuf>,
    /// User and password.
    pub user: Option<String>,
    pub password: Option<String>,
    /// CA certificate (PEM) that the server's certificate must chain to;
    /// setting it requires TLS.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for NatsSecurity {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSecurity")
            .field("creds_file", &self.creds_file)
            .field("nkey_file", &self.nkey_file)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

impl NatsSecurity {
    /// `options` with these credentials and TLS settings.
    async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, BusError> {
        if let Some(path) = &self.creds_file {
            options =
                options
                    .credentials_file(path)
                    .await
                    .map_err(|source| BusError::Credentials {
                        path: path.display().to_string(),
                        source,
                    })?;
        }
        if let Some(path) = &self.nkey_file {
            let seed = std::fs::read_to_string(path).map_err(|source| BusError::Credentials {
                path: path.display().to_string(),
                source,
            })?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }
}

/// [`connect`] with credentials and TLS settings.
pub async fn connect_with(
    url: &str,
    name: &str,
    security: &NatsSecurity,
) -> Result<async_nats::Client, BusError> {
    let last_error: Arc<Mutex<Option<String>>> = Arc::default();
    let ever_connected = Arc::new(AtomicBool::new(false));
    let client = {
        let (last_error, ever_connected) = (last_error.clone(), ever_connected.clone());
        security
            .apply(async_nats::ConnectOptions::new())
            .await?
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                match event {
                    async_nats::Event::Connected => {
                        let again = ever_connected.swap(true, Ordering::AcqRel);
                        if again {
                            tracing::info!("Reconnected to NATS.");
                        }
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("Lost the NATS connection; reconnecting.");
                    }
                    async_nats::Event::ClientError(e) => {
                        *last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    }
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(error = %e, "NATS server error.");
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        SLOW_CONSUMER_EVENTS.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            sid,
                            "A subscription fell behind; the client dropped messages for it."
                        );
                    }
                    _ => {}
                }
                async {}
            })
            .connect(server_list(url))
            .await
            .map_err(|source| BusError::Connect {
                url: redact_urls(url),
                source,
            })?
    };
    // With retry_on_initial_connect the client connects in the background:
    // wait for the first connection, so the version can be read.
    let started = tokio::time::Instant::now();
    let mut next_log = started + Duration::from_secs(2);
    while client.connection_state() != async_nats::connection::State::Connected {
        let now = tokio::time::Instant::now();
        if now >= next_log {
            let error = last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "no answer yet".to_owned());
            tracing::warn!(
                url = %redact_urls(url),
                waited_s = started.elapsed().as_secs(),
                %error,
                "NATS is not reachable yet; still trying (not ready until it is)."
            );
            next_log = now + STILL_WAITING_LOG_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if started.elapsed() >= Duration::from_secs(2) {
        tracing::info!(waited_s = started.elapsed().as_secs(), "Connected to NATS.");
    }
    check_version(&client.server_info().version)?;
    Ok(client)
}

/// Fails for servers older than 2.9 (no consumer-create-with-name API).
/// 2.10-only features are not used (see docs/adr/0003).
pub fn check_version(version: &str) -> Result<(), BusError> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version.is_empty() || (major, minor) >= (2, 9) {
        Ok(())
    } else {
        Err(BusError::ServerTooOld {
            found: version.to_owned(),
        })
    }
}

/// What a clustered deployment (streams with more than one replica) must
/// know about compare-and-set writes on this nats-server (docs/adr/0034):
/// the key directory's device lists, groups and users' records and provider
/// partition leases are written with
/// `Nats-Expected-Last-Subject-Sequence`, which nats-server checks before
/// the write goes through Raft. Before 2.9.21 two such writes in flight at
/// once can both be accepted (nats-io/nats-server#4320); before 2.11 a new
/// stream leader can accept one right after an election before it applied
/// its log (nats-io/nats-server#6194). `None` for one replica (a single
/// server checks each write in order) or 2.11 and newer.
pub fn compare_and_set_caveat(version: &str, replicas: usize) -> Option<&'static str> {
    if replicas <= 1 || version.is_empty() {
        return None;
    }
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    if v < (2, 9, 21) {
        Some("compare-and-set writes on replicated streams are not serialized by this nats-server (before 2.9.21): two concurrent writes can both be accepted and one update lost; run 2.11 or newer (docs/adr/0034)")
    } else if v < (2, 11, 0) {
        Some("compare-and-set writes on replicated streams can be accepted twice right after a stream leader election on this nats-server (before 2.11); run 2.11 or newer (docs/adr/0034)")
    } else {
        None
    }
}

/// The key under which a recipient's messages are stored: 32 hex digits of
/// the SHA-256 of the address. Subjects and stream state never contain
/// phone numbers.
pub fn recipient_key(address: &str) -> String {
    let digest = Sha256::digest(address.as_bytes());
    hex::encode(&digest[..16])
}

/// The partition (of [`interop_proto::limits::PARTITIONS`]) a recipient key
/// falls in: its first 32 bits, modulo. Provider sessions own partitions
/// of their provider's users; streams are split along them.
pub fn partition_of_key(key: &str) -> u32 {
    let head = key.get(..8).and_then(|h| u32::from_str_radix(h, 16).ok());
    head.unwrap_or(0) % interop_proto::limits::PARTITIONS
}

/// The recipient's path in store and session subjects:
/// `<provider>.<partition>.<key>`. The provider id is a subject token as
/// it is (lowercase letters, digits, `-`: `Address` checks it); an address
/// without a provider (never stored: validation refuses it) gets `-`.
pub fn recipient_path(address: &str) -> String {
    let key = recipient_key(address);
    let provider = address
        .split_once(':')
        .map(|(p, _)| p)
        .filter(|p| !p.is_empty() && !p.contains(['.', '*', '>', ' ']))
        .unwrap_or("-");
    format!("{provider}.{}.{key}", partition_of_key(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_the_provider_a_partition_and_the_key() {
        let path = recipient_path("home:+4915112345678");
        let t: Vec<&str> = path.split('.').collect();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0], "home");
        assert_eq!(t[2], recipient_key("home:+4915112345678"));
        assert_eq!(t[1].parse::<u32>().unwrap(), partition_of_key(t[2]));
        // Partitions spread: 10,000 users fill every one, none more than
        // twice its share.
        let mut counts = vec![0u32; interop_proto::limits::PARTITIONS as usize];
        for i in 0..10_000 {
            counts[partition_of_key(&recipient_key(&format!("home:u{i}"))) as usize] += 1;
        }
        let share = 10_000 / interop_proto::limits::PARTITIONS;
        assert!(counts.iter().all(|&c| c > 0 && c < 2 * share), "{counts:?}");
        assert_eq!(recipient_path("nobody").split('.').next(), Some("-"));
    }

    #[test]
    fn recipient_keys_are_stable_and_hide_the_address() {
        let k = recipient_key("home:+4915112345678");
        assert_eq!(k.len(), 32);
        assert_eq!(k, recipient_key("home:+4915112345678"));
        assert_ne!(k, recipient_key("home:+4915112345679"));
        assert!(!k.contains("4915112345678"));
    }

    #[test]
    fn a_comma_separated_url_is_a_server_list() {
        assert_eq!(server_list("nats://a:4222"), vec!["nats://a:4222"]);
        assert_eq!(
            server_list("nats://a:4222, nats://b:4222,nats://c:4222"),
            vec!["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert_eq!(server_list("nats://a:4222,"), vec!["nats://a:4222"]);
    }

    #[test]
    fn credentials_are_redacted_in_url_lists() {
        assert_eq!(
            redact_urls("nats://u:p@a:4222,nats://b:4222"),
            "nats://***@a:4222,nats://b:4222"
        );
    }

    #[test]
    fn compare_and_set_caveat_by_version_and_replicas() {
        assert_eq!(compare_and_set_caveat("2.9.10", 1), None);
        assert_eq!(compare_and_set_caveat("2.10.4", 1), None);
        assert!(compare_and_set_caveat("2.9.10", 3)
            .unwrap()
            .contains("2.9.21"));
        assert!(compare_and_set_caveat("2.9.20", 3)
            .unwrap()
            .contains("2.9.21"));
        assert!(compare_and_set_caveat("2.9.21", 3)
            .unwrap()
            .contains("election"));
        assert!(compare_and_set_caveat("2.10.22", 3)
            .unwrap()
            .contains("election"));
        assert!(compare_and_set_caveat("2.11.0-RC.1", 3).is_none());
        assert!(compare_and_set_caveat("2.11.0", 3).is_none());
        assert!(compare_and_set_caveat("2.12.1", 3).is_none());
    }

    #[test]
    fn version_check() {
        assert!(check_version("2.9.10").is_ok());
        assert!(check_version("2.10.4").is_ok());
        assert!(check_version("3.0.0").is_ok());
        assert!(matches!(
            check_version("2.8.4"),
            Err(BusError::ServerTooOld { .. })
        ));
    }
}
