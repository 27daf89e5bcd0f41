//! The routing binary: wiring only; see the library.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use clap::Parser;
use interop_service::CommonArgs;

/// Decides where each scored message goes.
#[derive(Parser)]
#[command(name = "routing", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let streams = match args.common.stream_settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("routing: {e}");
            std::process::exit(64);
        }
    };
    let config = interop_routing::Config { streams };
    let code = interop_service::run_main("routing", &args.common, |deps, shutdown| {
        interop_routing::run(config, deps, shutdown)
    })
    .await;
    std::process::exit(code);
}
