//! The media-transcoding binary: wiring only; see the library.

use clap::Parser;
use interop_service::CommonArgs;

/// Processes media before delivery.
#[derive(Parser)]
#[command(name = "media-transcoding", version)]
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
            eprintln!("media-transcoding: {e}");
            std::process::exit(64);
        }
    };
    let config = interop_media_transcoding::Config { streams };
    let code = interop_service::run_main("media-transcoding", &args.common, |deps, shutdown| {
        interop_media_transcoding::run(config, deps, shutdown)
    })
    .await;
    std::process::exit(code);
}
