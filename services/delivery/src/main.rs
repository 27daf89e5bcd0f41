//! The delivery binary: wiring only; see the library.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use interop_edge::tls::ProviderEndpoint;
use interop_service::CommonArgs;

/// Holds recipients' WebSocket sessions and delivers their messages.
#[derive(Parser)]
#[command(name = "delivery", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    tls: interop_edge::tls::TlsArgs,
    #[command(flatten)]
    edge: interop_edge::EdgeArgs,
    /// Address recipients' clients connect to (WebSocket at /v1/ws).
    #[arg(long, env = "INTEROP_DELIVERY_LISTEN", default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
    /// The provider registry (TOML; see docs/protocol.md).
    #[arg(long, env = "INTEROP_PROVIDERS_FILE")]
    providers_file: PathBuf,
}

fn exit_config(e: impl std::fmt::Display) -> ! {
    eprintln!("delivery: {e}");
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
    let mut config = interop_delivery::Config::new(endpoint.listener, endpoint.providers);
    config.streams = streams;
    config.tls = endpoint.tls;
    config.edge = args
        .edge
        .limits(interop_delivery::DEFAULT_MAX_CONNECTIONS_PER_PROVIDER)
        .unwrap_or_else(|e| exit_config(e));
    let code = interop_service::run_main("delivery", &args.common, |deps, shutdown| {
        interop_delivery::run(config, deps, shutdown)
    })
    .await;
    std::process::exit(code);
}
