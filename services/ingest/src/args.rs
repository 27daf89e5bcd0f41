//! ingest's flags and the [`Config`] they make.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::DEFAULT_KT_EPOCH_INTERVAL;
use interop_edge::tls::ProviderEndpoint;
use interop_service::{CommonArgs, ConfigError};

use crate::{
    admin, Config, RateLimit, DEFAULT_IDEMPOTENCY_WINDOW, DEFAULT_KEY_FETCH_PROVIDER_LIMIT,
    DEFAULT_KEY_FETCH_USER_LIMIT, DEFAULT_MAX_CONNECTIONS_PER_PROVIDER, DEFAULT_PROVIDER_LIMIT,
    DEFAULT_SENDER_LIMIT, DEFAULT_STORE_TIMEOUT,
};
use interop_proto::limits::{MAX_IDEMPOTENCY_WINDOW_MS, MIN_IDEMPOTENCY_WINDOW_MS};

/// The WebSocket edge where providers send messages.
#[derive(Debug, clap::Parser)]
#[command(name = "ingest", version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub tls: interop_edge::tls::TlsArgs,
    #[command(flatten)]
    pub edge: interop_edge::EdgeArgs,
    /// Address providers connect to (WebSocket at /v1/ws).
    #[arg(long, env = "INTEROP_INGEST_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Share the listen address with other replicas on this machine
    /// (SO_REUSEPORT; the kernel spreads connections over them).
    #[arg(long, env = "INTEROP_LISTEN_REUSE_PORT")]
    pub listen_reuse_port: bool,
    /// The provider registry (TOML; see docs/protocol.md).
    #[arg(long, env = "INTEROP_PROVIDERS_FILE")]
    pub providers_file: PathBuf,
    /// Milliseconds a send may wait for JetStream before UNAVAILABLE.
    #[arg(long, env = "INTEROP_INGEST_STORE_TIMEOUT_MS", default_value_t = DEFAULT_STORE_TIMEOUT.as_millis() as u64)]
    pub store_timeout_ms: u64,
    /// How long a client message id maps to the same server message id (an
    /// idempotency claim in Redis, about 200 bytes each). Sends whose
    /// `sent_at_ms` is older than this less 10 minutes of clock skew are
    /// refused with TIMESTAMP_OUT_OF_RANGE, so a re-send is never accepted
    /// twice (docs/adr/0027). From 3600 (1 h) to 605400 (7 days and 10
    /// minutes).
    #[arg(long, env = "INTEROP_INGEST_IDEMPOTENCY_WINDOW_SECS", default_value_t = DEFAULT_IDEMPOTENCY_WINDOW.as_secs())]
    pub idempotency_window_secs: u64,
    /// Address of the provider admin API (served only with --admin-token-file).
    #[arg(
        long,
        env = "INTEROP_INGEST_ADMIN_API_LISTEN",
        default_value = "0.0.0.0:8090"
    )]
    pub admin_api_listen: SocketAddr,
    /// File holding the admin API's bearer token; without it the API is off.
    #[arg(long, env = "INTEROP_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Messages per second a provider may send when its registry entry sets no limit.
    #[arg(
        long,
        env = "INTEROP_INGEST_PROVIDER_MAX_PER_SECOND",
        default_value_t = DEFAULT_PROVIDER_LIMIT.per_second
    )]
    pub provider_max_per_second: f64,
    /// Burst above that rate a provider may send.
    #[arg(long, env = "INTEROP_INGEST_PROVIDER_BURST", default_value_t = DEFAULT_PROVIDER_LIMIT.burst)]
    pub provider_burst: u32,
    /// Messages per second one sender may send.
    #[arg(
        long,
        env = "INTEROP_INGEST_SENDER_MAX_PER_SECOND",
        default_value_t = DEFAULT_SENDER_LIMIT.per_second
    )]
    pub sender_max_per_second: f64,
    /// Burst above that rate one sender may send.
    #[arg(long, env = "INTEROP_INGEST_SENDER_BURST", default_value_t = DEFAULT_SENDER_LIMIT.burst)]
    pub sender_burst: u32,
    /// Key-directory fetches (bundles, KeyPackages per user) per second one
    /// provider may make.
    #[arg(
        long,
        env = "INTEROP_INGEST_KEY_FETCH_PROVIDER_MAX_PER_SECOND",
        default_value_t = DEFAULT_KEY_FETCH_PROVIDER_LIMIT.per_second
    )]
    pub key_fetch_provider_max_per_second: f64,
    /// Burst above that rate.
    #[arg(
        long,
        env = "INTEROP_INGEST_KEY_FETCH_PROVIDER_BURST",
        default_value_t = DEFAULT_KEY_FETCH_PROVIDER_LIMIT.burst
    )]
    pub key_fetch_provider_burst: u32,
    /// Key-directory fetches per second one requesting user may make (what
    /// stops a script draining someone's one-time prekeys).
    #[arg(
        long,
        env = "INTEROP_INGEST_KEY_FETCH_USER_MAX_PER_SECOND",
        default_value_t = DEFAULT_KEY_FETCH_USER_LIMIT.per_second
    )]
    pub key_fetch_user_max_per_second: f64,
    /// Burst above that rate.
    #[arg(
        long,
        env = "INTEROP_INGEST_KEY_FETCH_USER_BURST",
        default_value_t = DEFAULT_KEY_FETCH_USER_LIMIT.burst
    )]
    pub key_fetch_user_burst: u32,
    /// Key transparency (docs/adr/0029): a file with the auditable key
    /// directory's VRF key, 32 secret bytes as 64 hex digits, the same for
    /// every replica for the directory's whole life. Without it, key
    /// transparency is off: fetch answers carry no proof.
    #[arg(long, env = "INTEROP_INGEST_KT_VRF_KEY_FILE")]
    pub kt_vrf_key_file: Option<std::path::PathBuf>,
    /// How often a key transparency epoch is published, in seconds (1 to
    /// 3,600; also on demand when a fetch finds keys not committed yet).
    #[arg(
        long,
        env = "INTEROP_INGEST_KT_EPOCH_INTERVAL_SECS",
        default_value_t = DEFAULT_KT_EPOCH_INTERVAL.as_secs()
    )]
    pub kt_epoch_interval_secs: u64,
}

/// The VRF key in `path`: 64 hex digits (surrounding whitespace allowed).
fn vrf_key(path: &std::path::Path) -> Result<interop_transparency::VrfKey, ConfigError> {
    interop_transparency::VrfKey::from_file(path).map_err(ConfigError)
}

fn rate_limit(flag: &str, per_second: f64, burst: u32) -> Result<RateLimit, ConfigError> {
    if !(per_second > 0.0 && per_second.is_finite()) || burst == 0 {
        return Err(ConfigError(format!(
            "--{flag}-max-per-second and --{flag}-burst must be positive"
        )));
    }
    Ok(RateLimit { per_second, burst })
}

impl Config {
    /// The configuration `args` describe: loads the registry, the TLS files
    /// and the admin token, and binds the listeners. [`ConfigError`] when a
    /// flag is out of range or a file or an address cannot be used.
    pub async fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let streams = args.common.stream_settings()?;
        let edge = args.edge.limits(DEFAULT_MAX_CONNECTIONS_PER_PROVIDER)?;
        let default_provider_limit = rate_limit(
            "provider",
            args.provider_max_per_second,
            args.provider_burst,
        )?;
        let sender_limit = rate_limit("sender", args.sender_max_per_second, args.sender_burst)?;
        let key_fetch_provider_limit = rate_limit(
            "key-fetch-provider",
            args.key_fetch_provider_max_per_second,
            args.key_fetch_provider_burst,
        )?;
        let key_fetch_user_limit = rate_limit(
            "key-fetch-user",
            args.key_fetch_user_max_per_second,
            args.key_fetch_user_burst,
        )?;
        let window_ms =
            i64::try_from(args.idempotency_window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        if !(MIN_IDEMPOTENCY_WINDOW_MS..=MAX_IDEMPOTENCY_WINDOW_MS).contains(&window_ms) {
            return Err(ConfigError(format!(
                "--idempotency-window-secs must be from {} to {} (7 days, the oldest sent_at_ms \
                 accepted, plus 10 minutes of clock skew)",
                MIN_IDEMPOTENCY_WINDOW_MS / 1000,
                MAX_IDEMPOTENCY_WINDOW_MS / 1000
            )));
        }
        if !(1..=3600).contains(&args.kt_epoch_interval_secs) {
            return Err(ConfigError(
                "--kt-epoch-interval-secs must be from 1 to 3600".into(),
            ));
        }
        let key_transparency = match &args.kt_vrf_key_file {
            Some(path) => Some(crate::KeyTransparency {
                vrf_key: vrf_key(path)?,
                epoch_interval: Duration::from_secs(args.kt_epoch_interval_secs),
            }),
            None => None,
        };
        if args.store_timeout_ms == 0 {
            return Err(ConfigError("--store-timeout-ms must be positive".into()));
        }
        let admin_token = match &args.admin_token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
                if token.trim().len() < 16 {
                    return Err(ConfigError(
                        "the admin token must be at least 16 characters".into(),
                    ));
                }
                Some(token)
            }
            None => None,
        };
        let endpoint = ProviderEndpoint::open(
            args.listen,
            args.listen_reuse_port,
            &args.providers_file,
            &args.tls,
        )
        .await?;
        let mut config = Config::new(endpoint.listener, endpoint.providers);
        config.streams = streams;
        config.tls = endpoint.tls;
        config.edge = edge;
        config.store_timeout = Duration::from_millis(args.store_timeout_ms);
        config.idempotency_window = Duration::from_secs(args.idempotency_window_secs);
        config.default_provider_limit = default_provider_limit;
        config.sender_limit = sender_limit;
        config.key_fetch_provider_limit = key_fetch_provider_limit;
        config.key_fetch_user_limit = key_fetch_user_limit;
        config.key_transparency = key_transparency;
        if let Some(token) = admin_token {
            let listener = tokio::net::TcpListener::bind(args.admin_api_listen)
                .await
                .map_err(|e| {
                    ConfigError(format!("cannot listen on {}: {e}", args.admin_api_listen))
                })?;
            config.admin_api = Some(admin::AdminApi::new(listener, &token));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[tokio::test]
    async fn flags_make_the_config_with_one_source_per_default_and_bad_ones_are_refused() {
        let reg =
            file("[[providers]]\nid = \"home\"\ndisplay_name = \"Home\"\nencryption = \"e2ee\"\n");
        let path = reg.path().to_str().unwrap();
        let base = [
            "ingest",
            "--listen",
            "127.0.0.1:0",
            "--providers-file",
            path,
        ];
        let config = Config::from_args(&Args::try_parse_from(base).unwrap())
            .await
            .unwrap();
        // The flags' defaults are the library's.
        let defaults = Config::new(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            config.providers.clone(),
        );
        assert_eq!(config.store_timeout, defaults.store_timeout);
        assert_eq!(config.idempotency_window, defaults.idempotency_window);
        assert_eq!(
            config.default_provider_limit,
            defaults.default_provider_limit
        );
        assert_eq!(config.sender_limit, defaults.sender_limit);
        assert_eq!(
            config.key_fetch_provider_limit,
            defaults.key_fetch_provider_limit
        );
        assert_eq!(config.key_fetch_user_limit, defaults.key_fetch_user_limit);
        assert!(config.admin_api.is_none(), "no token file, no admin API");

        let short = file("too-short");
        let long = file("an-admin-token-long-enough");
        let (short, long) = (
            short.path().to_str().unwrap(),
            long.path().to_str().unwrap(),
        );
        for (extra, refused_for) in [
            (&["--provider-burst", "0"][..], "--provider-"),
            (&["--sender-max-per-second", "0"], "--sender-"),
            (&["--sender-max-per-second", "NaN"], "--sender-"),
            (&["--key-fetch-user-burst", "0"], "--key-fetch-user-"),
            (
                &["--key-fetch-provider-max-per-second=-1"],
                "--key-fetch-provider-",
            ),
            (&["--store-timeout-ms", "0"], "--store-timeout-ms"),
            // At its edges: 1 h and 7 days 10 minutes are taken (below).
            (
                &["--idempotency-window-secs", "3599"],
                "--idempotency-window-secs",
            ),
            (
                &["--idempotency-window-secs", "605401"],
                "--idempotency-window-secs",
            ),
            (&["--stream-replicas", "0"], "--stream-replicas"),
            (&["--admin-token-file", short], "at least 16"),
            (&["--admin-token-file", "/nonexistent/token"], "cannot read"),
            (&["--kt-vrf-key-file", short], "64 hex digits"),
            (&["--kt-vrf-key-file", "/nonexistent/key"], "cannot read"),
            (
                &["--kt-epoch-interval-secs", "0"],
                "--kt-epoch-interval-secs",
            ),
            (
                &["--kt-epoch-interval-secs", "3601"],
                "--kt-epoch-interval-secs",
            ),
        ] {
            let args = Args::try_parse_from(base.iter().chain(extra)).unwrap();
            let e = Config::from_args(&args).await.err().expect("refused");
            assert!(e.0.contains(refused_for), "{extra:?}: {e}");
        }
        let args = Args::try_parse_from(base.iter().chain(&[
            "--admin-token-file",
            long,
            "--admin-api-listen",
            "127.0.0.1:0",
        ]))
        .unwrap();
        assert!(Config::from_args(&args).await.unwrap().admin_api.is_some());
        // Key transparency: off by default, on with a key, at the interval's
        // edges.
        assert!(config.key_transparency.is_none());
        let key = file(&format!("{}\n", "ab".repeat(32)));
        for secs in ["1", "3600"] {
            let args = Args::try_parse_from(base.iter().chain(&[
                "--kt-vrf-key-file",
                key.path().to_str().unwrap(),
                "--kt-epoch-interval-secs",
                secs,
            ]))
            .unwrap();
            let kt = Config::from_args(&args)
                .await
                .unwrap()
                .key_transparency
                .expect("on with a key");
            assert_eq!(kt.epoch_interval.as_secs().to_string(), secs);
        }
        for (secs, window) in [("3600", 3600), ("605400", 605_400)] {
            let args =
                Args::try_parse_from(base.iter().chain(&["--idempotency-window-secs", secs]))
                    .unwrap();
            let config = Config::from_args(&args).await.unwrap();
            assert_eq!(config.idempotency_window, Duration::from_secs(window));
        }
    }
}
