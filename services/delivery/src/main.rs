//! The delivery binary: wiring only; see the library.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use clap::Parser as _;
use interop_delivery::{Args, Config};

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.grow_store {
        std::process::exit(
            interop_service::run_main(
                "delivery",
                &args.common,
                args.common.stream_settings(),
                interop_delivery::grow_store,
            )
            .await,
        );
    }
    let config = Config::from_args(&args).await;
    std::process::exit(
        interop_service::run_main("delivery", &args.common, config, interop_delivery::run).await,
    );
}
