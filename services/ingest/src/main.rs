//! The ingest binary: wiring only; see the library.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use clap::Parser as _;
use interop_ingest::{Args, Config};

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let config = Config::from_args(&args).await;
    std::process::exit(
        interop_service::run_main("ingest", &args.common, config, interop_ingest::run).await,
    );
}
