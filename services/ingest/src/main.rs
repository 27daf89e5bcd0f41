//! The ingest binary: wiring only; see the library.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use interop_edge::tls::ProviderEndpoint;
use interop_service::CommonArgs;

/// The WebSocket edge where providers send messages.
#[derive(Parser)]
#[command(name = "ingest", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    tls: interop_edge::tls::TlsArgs,
    #[command(flatten)]
    edge: interop_edge::EdgeArgs,
    /// Address providers connect to (WebSocket at /v1/ws).
    #[arg(long, env = "INTEROP_INGEST_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// The provider registry (TOML; see docs/protocol.md).
    #[arg(long, env = "INTEROP_PROVIDERS_FILE")]
    providers_file: PathBuf,
    /// Milliseconds a send may wait for JetStream before UNAVAILABLE.
    #[arg(long, env = "INTEROP_INGEST_STORE_TIMEOUT_MS", default_value_t = 1500)]
    store_timeout_ms: u64,
    /// Address of the provider admin API (served only with --admin-token-file).
    #[arg(
        long,
        env = "INTEROP_INGEST_ADMIN_API_LISTEN",
        default_value = "0.0.0.0:8090"
    )]
    admin_api_listen: SocketAddr,
    /// File holding the admin API's bearer token; without it the API is off.
    #[arg(long, env = "INTEROP_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Messages per second a provider may send when its registry entry sets no limit.
    #[arg(
        long,
        env = "INTEROP_INGEST_PROVIDER_MAX_PER_SECOND",
        default_value_t = 1000.0
    )]
    provider_max_per_second: f64,
    /// Burst above that rate a provider may send.
    #[arg(long, env = "INTEROP_INGEST_PROVIDER_BURST", default_value_t = 2000)]
    provider_burst: u32,
    /// Messages per second one sender may send.
    #[arg(
        long,
        env = "INTEROP_INGEST_SENDER_MAX_PER_SECOND",
        default_value_t = 20.0
    )]
    sender_max_per_second: f64,
    /// Burst above that rate one sender may send.
    #[arg(long, env = "INTEROP_INGEST_SENDER_BURST", default_value_t = 40)]
    sender_burst: u32,
    /// Key-directory fetches (bundles, KeyPackages per user) per second one
    /// provider may make.
    #[arg(
        long,
        env = "INTEROP_INGEST_KEY_FETCH_PROVIDER_MAX_PER_SECOND",
        default_value_t = interop_ingest::DEFAULT_KEY_FETCH_PROVIDER_LIMIT.per_second
    )]
    key_fetch_provider_max_per_second: f64,
    /// Burst above that rate.
    #[arg(
        long,
        env = "INTEROP_INGEST_KEY_FETCH_PROVIDER_BURST",
        default_value_t = interop_ingest::DEFAULT_KEY_FETCH_PROVIDER_LIMIT.burst
    )]
    key_fetch_provider_burst: u32,
    /// Key-directory fetches per second one requesting user may make (what
    /// stops a script draining someone's one-time prekeys).
    #[arg(
        long,
        env = "INTEROP_INGEST_KEY_FETCH_USER_MAX_PER_SECOND",
        default_value_t = interop_ingest::DEFAULT_KEY_FETCH_USER_LIMIT.per_second
    )]
    key_fetch_user_max_per_second: f64,
    /// Burst above that rate.
    #[arg(
        long,
        env = "INTEROP_INGEST_KEY_FETCH_USER_BURST",
        default_value_t = interop_ingest::DEFAULT_KEY_FETCH_USER_LIMIT.burst
    )]
    key_fetch_user_burst: u32,
}

fn exit_config(e: impl std::fmt::Display) -> ! {
    eprintln!("ingest: {e}");
    std::process::exit(64);
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let streams = args
        .common
        .stream_settings()
        .unwrap_or_else(|e| exit_config(e));
    let endpoint = ProviderEndpoint::open(args.listen, &args.providers_file, &args.tls)
        .await
        .unwrap_or_else(|e| exit_config(e));
    let mut config = interop_ingest::Config::new(endpoint.listener, endpoint.providers);
    config.streams = streams;
    config.tls = endpoint.tls;
    config.edge = args
        .edge
        .limits(interop_ingest::DEFAULT_MAX_CONNECTIONS_PER_PROVIDER)
        .unwrap_or_else(|e| exit_config(e));
    config.store_timeout = Duration::from_millis(args.store_timeout_ms.max(1));
    for (rate, burst) in [
        (args.provider_max_per_second, args.provider_burst),
        (args.sender_max_per_second, args.sender_burst),
        (
            args.key_fetch_provider_max_per_second,
            args.key_fetch_provider_burst,
        ),
        (args.key_fetch_user_max_per_second, args.key_fetch_user_burst),
    ] {
        if !(rate > 0.0 && rate.is_finite()) || burst == 0 {
            exit_config("rate limits must be positive");
        }
    }
    config.default_provider_limit = interop_ingest::RateLimit {
        per_second: args.provider_max_per_second,
        burst: args.provider_burst,
    };
    config.sender_limit = interop_ingest::RateLimit {
        per_second: args.sender_max_per_second,
        burst: args.sender_burst,
    };
    config.key_fetch_provider_limit = interop_ingest::RateLimit {
        per_second: args.key_fetch_provider_max_per_second,
        burst: args.key_fetch_provider_burst,
    };
    config.key_fetch_user_limit = interop_ingest::RateLimit {
        per_second: args.key_fetch_user_max_per_second,
        burst: args.key_fetch_user_burst,
    };
    if let Some(path) = &args.admin_token_file {
        let token = std::fs::read_to_string(path)
            .unwrap_or_else(|e| exit_config(format!("cannot read {}: {e}", path.display())));
        if token.trim().len() < 16 {
            exit_config("the admin token must be at least 16 characters");
        }
        let listener = tokio::net::TcpListener::bind(args.admin_api_listen)
            .await
            .unwrap_or_else(|e| {
                exit_config(format!("cannot listen on {}: {e}", args.admin_api_listen))
            });
        config.admin_api = Some(interop_ingest::admin::AdminApi::new(listener, &token));
    }
    let code = interop_service::run_main("ingest", &args.common, |deps, shutdown| {
        interop_ingest::run(config, deps, shutdown)
    })
    .await;
    std::process::exit(code);
}
