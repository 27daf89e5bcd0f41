//! The routing binary: wiring only; see the library.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use clap::Parser as _;
use interop_routing::{Args, Config};

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let config = Config::from_args(&args);
    std::process::exit(
        interop_service::run_main("routing", &args.common, config, interop_routing::run).await,
    );
}
