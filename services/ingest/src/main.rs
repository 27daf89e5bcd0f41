//! The ingest binary: wiring only; see the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use interop_service::CommonArgs;

/// The WebSocket edge where providers send messages.
#[derive(Parser)]
#[command(name = "ingest", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Address providers connect to (WebSocket at /v1/ws).
    #[arg(long, env = "INTEROP_INGEST_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// The provider registry (TOML; see docs/protocol.md).
    #[arg(long, env = "INTEROP_PROVIDERS_FILE")]
    providers_file: PathBuf,
    /// Milliseconds a send may wait for JetStream before UNAVAILABLE.
    #[arg(long, env = "INTEROP_INGEST_STORE_TIMEOUT_MS", default_value_t = 2000)]
    store_timeout_ms: u64,
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
    let providers =
        interop_providers::Registry::load(&args.providers_file).unwrap_or_else(|e| exit_config(e));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .unwrap_or_else(|e| exit_config(format!("cannot listen on {}: {e}", args.listen)));
    let mut config = interop_ingest::Config::new(listener, Arc::new(providers));
    config.streams = streams;
    config.store_timeout = Duration::from_millis(args.store_timeout_ms.max(1));
    let code = interop_service::run_main("ingest", &args.common, |deps, shutdown| {
        interop_ingest::run(config, deps, shutdown)
    })
    .await;
    std::process::exit(code);
}
