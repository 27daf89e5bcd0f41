//! The media-transcoding binary: wiring only; see the library.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use clap::Parser as _;
use interop_media_transcoding::{Args, Config};

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let config = Config::from_args(&args).await;
    std::process::exit(
        interop_service::run_main(
            "media-transcoding",
            &args.common,
            config,
            interop_media_transcoding::run,
        )
        .await,
    );
}
