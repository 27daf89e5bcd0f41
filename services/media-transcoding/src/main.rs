//! The media-transcoding binary: wiring only; see the library.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use interop_media_transcoding::{AcceptFormats, Config};
use interop_service::CommonArgs;

/// Media upload and download, transcoding, and end-to-end-encrypted pass-through.
#[derive(Parser)]
#[command(name = "media-transcoding", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    auth: interop_edge::AuthThrottleArgs,
    /// Address of the media API (POST /v1/media, GET /v1/media/{id}).
    #[arg(
        long,
        env = "INTEROP_MEDIA_TRANSCODING_LISTEN",
        default_value = "0.0.0.0:8082"
    )]
    listen: SocketAddr,
    /// The provider registry (TOML; see docs/protocol.md).
    #[arg(long, env = "INTEROP_PROVIDERS_FILE")]
    providers_file: PathBuf,
    /// Formats recipients' apps play (type/subtype, type/* or */*) when their
    /// provider's registry record declares no `media_formats`.
    #[arg(
        long,
        env = "INTEROP_MEDIA_TRANSCODING_ACCEPT_FORMATS",
        default_value = interop_media_transcoding::formats::DEFAULT_ACCEPT_FORMATS
    )]
    accept_formats: String,
    /// How long uploaded media is kept, in seconds.
    #[arg(long, env = "INTEROP_MEDIA_TRANSCODING_RETENTION_SECS", default_value_t = 30 * 24 * 3600)]
    retention_secs: u64,
    /// Most bytes the media bucket may hold (-1: no limit).
    #[arg(
        long,
        env = "INTEROP_MEDIA_TRANSCODING_MAX_STORE_BYTES",
        default_value_t = -1,
        allow_negative_numbers = true
    )]
    max_store_bytes: i64,
    /// Transcoding jobs at once per replica (default: CPU cores).
    #[arg(long, env = "INTEROP_MEDIA_TRANSCODING_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Time limit of one audio or video job, in seconds.
    #[arg(
        long,
        env = "INTEROP_MEDIA_TRANSCODING_AV_TIMEOUT_SECS",
        default_value_t = 480
    )]
    av_timeout_secs: u64,
    /// Time limit of one image job, in seconds.
    #[arg(
        long,
        env = "INTEROP_MEDIA_TRANSCODING_IMAGE_TIMEOUT_SECS",
        default_value_t = 30
    )]
    image_timeout_secs: u64,
    /// Address-space limit of each ffmpeg process, in MiB (0: none).
    #[arg(
        long,
        env = "INTEROP_MEDIA_TRANSCODING_FFMPEG_MEMORY_MIB",
        default_value_t = 2048
    )]
    ffmpeg_memory_mib: u64,
    /// Directory for ffmpeg's temporary files (default: the system's).
    #[arg(long, env = "INTEROP_MEDIA_TRANSCODING_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Uploads in progress at once per replica.
    #[arg(
        long,
        env = "INTEROP_MEDIA_TRANSCODING_MAX_UPLOADS",
        default_value_t = 64
    )]
    max_uploads: usize,
}

fn exit_config(e: impl std::fmt::Display) -> ! {
    eprintln!("media-transcoding: {e}");
    std::process::exit(64);
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let streams = args
        .common
        .stream_settings()
        .unwrap_or_else(|e| exit_config(e));
    let accept = AcceptFormats::parse(&args.accept_formats)
        .unwrap_or_else(|e| exit_config(format!("--accept-formats: {e}")));
    if args.retention_secs == 0 || args.av_timeout_secs == 0 || args.image_timeout_secs == 0 {
        exit_config("--retention-secs and the timeouts must be positive");
    }
    let providers =
        interop_providers::Registry::load(&args.providers_file).unwrap_or_else(|e| exit_config(e));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .unwrap_or_else(|e| exit_config(format!("cannot listen on {}: {e}", args.listen)));
    let mut config = Config::new(listener, Arc::new(providers));
    config.streams = streams;
    config.accept = accept;
    config.store.retention = Duration::from_secs(args.retention_secs);
    config.store.max_bytes = args.max_store_bytes;
    if let Some(n) = args.concurrency {
        config.transcode.concurrency = n.max(1);
    }
    config.transcode.av_timeout = Duration::from_secs(args.av_timeout_secs);
    config.transcode.image_timeout = Duration::from_secs(args.image_timeout_secs);
    config.transcode.ffmpeg.memory_limit_bytes =
        (args.ffmpeg_memory_mib > 0).then(|| args.ffmpeg_memory_mib * 1024 * 1024);
    if let Some(dir) = args.work_dir {
        config.transcode.ffmpeg.work_dir = dir;
    }
    config.max_concurrent_uploads = args.max_uploads.max(1);
    config.auth_limits = args
        .auth
        .limits(usize::MAX)
        .unwrap_or_else(|e| exit_config(e));
    let code = interop_service::run_main("media-transcoding", &args.common, |deps, shutdown| {
        interop_media_transcoding::run(config, deps, shutdown)
    })
    .await;
    std::process::exit(code);
}
