//! media-transcoding's flags and the [`Config`] they make.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use interop_service::{CommonArgs, ConfigError};

use crate::{AcceptFormats, Config, StoreSettings, TranscodeSettings, DEFAULT_MAX_UPLOADS};

/// Media upload and download, transcoding, and end-to-end-encrypted pass-through.
#[derive(Debug, clap::Parser)]
#[command(name = "media-transcoding", version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub auth: interop_edge::AuthThrottleArgs,
    /// Address of the media API (POST /v1/media, GET /v1/media/{id}).
    #[arg(
        long,
        env = "INTEROP_MEDIA_TRANSCODING_LISTEN",
        default_value = "0.0.0.0:8082"
    )]
    pub listen: SocketAddr,
    /// Share the listen address with other replicas on this machine
    /// (SO_REUSEPORT; the kernel spreads connections over them).
    #[arg(long, env = "INTEROP_LISTEN_REUSE_PORT")]
    pub listen_reuse_port: bool,
    /// The provider registry (TOML; see docs/protocol.md).
    #[arg(long, env = "INTEROP_PROVIDERS_FILE")]
    pub providers_file: PathBuf,
    /// Formats recipients' apps play (type/subtype, type/* or */*) when their
    /// provider's registry record declares no `media_formats`.
    #[arg(
        long,
        env = "INTEROP_MEDIA_TRANSCODING_ACCEPT_FORMATS",
        default_value = crate::formats::DEFAULT_ACCEPT_FORMATS
    )]
    pub accept_formats: String,
    /// How long uploaded media is kept, in seconds.
    #[arg(long, env = "INTEROP_MEDIA_TRANSCODING_RETENTION_SECS", default_value_t = StoreSettings::default().retention.as_secs())]
    pub retention_secs: u64,
    /// Most bytes the media bucket may hold (-1: no limit).
    #[arg(
        long,
        env = "INTEROP_MEDIA_TRANSCODING_MAX_STORE_BYTES",
        default_value_t = StoreSettings::default().max_bytes,
        allow_negative_numbers = true
    )]
    pub max_store_bytes: i64,
    /// Transcoding jobs at once per replica (default: CPU cores).
    #[arg(long, env = "INTEROP_MEDIA_TRANSCODING_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Time limit of one audio or video job, in seconds.
    #[arg(
        long,
        env = "INTEROP_MEDIA_TRANSCODING_AV_TIMEOUT_SECS",
        default_value_t = TranscodeSettings::default().av_timeout.as_secs()
    )]
    pub av_timeout_secs: u64,
    /// Time limit of one image job, in seconds.
    #[arg(
        long,
        env = "INTEROP_MEDIA_TRANSCODING_IMAGE_TIMEOUT_SECS",
        default_value_t = TranscodeSettings::default().image_timeout.as_secs()
    )]
    pub image_timeout_secs: u64,
    /// Address-space limit of each ffmpeg process, in MiB (0: none).
    #[arg(
        long,
        env = "INTEROP_MEDIA_TRANSCODING_FFMPEG_MEMORY_MIB",
        default_value_t = TranscodeSettings::default().ffmpeg.memory_limit_bytes.unwrap_or(0) / (1024 * 1024)
    )]
    pub ffmpeg_memory_mib: u64,
    /// Directory for ffmpeg's temporary files (default: the system's).
    #[arg(long, env = "INTEROP_MEDIA_TRANSCODING_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Uploads in progress at once per replica.
    #[arg(
        long,
        env = "INTEROP_MEDIA_TRANSCODING_MAX_UPLOADS",
        default_value_t = DEFAULT_MAX_UPLOADS
    )]
    pub max_uploads: usize,
}

impl Config {
    /// The configuration `args` describe: loads the registry and binds the
    /// listener. [`ConfigError`] when a flag is out of range or a file or
    /// the address cannot be used.
    pub async fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let streams = args.common.stream_settings()?;
        let accept = AcceptFormats::parse(&args.accept_formats)
            .map_err(|e| ConfigError(format!("--accept-formats: {e}")))?;
        if args.retention_secs == 0 || args.av_timeout_secs == 0 || args.image_timeout_secs == 0 {
            return Err(ConfigError(
                "--retention-secs, --av-timeout-secs and --image-timeout-secs must be positive"
                    .into(),
            ));
        }
        if args.concurrency == Some(0) || args.max_uploads == 0 {
            return Err(ConfigError(
                "--concurrency and --max-uploads must be positive".into(),
            ));
        }
        let auth_limits = args.auth.limits(usize::MAX)?;
        let providers = interop_providers::Registry::load(&args.providers_file)
            .map_err(|e| ConfigError(e.to_string()))?;
        let listener = interop_edge::tls::bind(args.listen, args.listen_reuse_port)?;
        let mut config = Config::new(listener, Arc::new(providers));
        config.streams = streams;
        config.accept = accept;
        config.store.retention = Duration::from_secs(args.retention_secs);
        config.store.max_bytes = args.max_store_bytes;
        if let Some(n) = args.concurrency {
            config.transcode.concurrency = n;
        }
        config.transcode.av_timeout = Duration::from_secs(args.av_timeout_secs);
        config.transcode.image_timeout = Duration::from_secs(args.image_timeout_secs);
        config.transcode.ffmpeg.memory_limit_bytes =
            (args.ffmpeg_memory_mib > 0).then(|| args.ffmpeg_memory_mib * 1024 * 1024);
        if let Some(dir) = &args.work_dir {
            config.transcode.ffmpeg.work_dir = dir.clone();
        }
        config.max_concurrent_uploads = args.max_uploads;
        config.auth_limits = auth_limits;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[tokio::test]
    async fn flags_make_the_config_with_the_librarys_defaults_and_bad_ones_are_refused() {
        let reg = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            reg.path(),
            "[[providers]]\nid = \"home\"\ndisplay_name = \"Home\"\nencryption = \"e2ee\"\n",
        )
        .unwrap();
        let path = reg.path().to_str().unwrap();
        let base = [
            "media-transcoding",
            "--listen",
            "127.0.0.1:0",
            "--providers-file",
            path,
        ];
        let config = Config::from_args(&Args::try_parse_from(base).unwrap())
            .await
            .unwrap();
        let defaults = Config::new(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            config.providers.clone(),
        );
        assert_eq!(
            config.max_concurrent_uploads,
            defaults.max_concurrent_uploads
        );
        assert_eq!(config.store.retention, defaults.store.retention);
        assert_eq!(config.transcode.av_timeout, defaults.transcode.av_timeout);
        assert_eq!(
            config.transcode.image_timeout,
            defaults.transcode.image_timeout
        );
        assert_eq!(config.store.max_bytes, defaults.store.max_bytes);
        assert_eq!(
            config.transcode.ffmpeg.memory_limit_bytes,
            defaults.transcode.ffmpeg.memory_limit_bytes
        );
        for bad in [
            &["--accept-formats", "not a type"][..],
            &["--retention-secs", "0"],
            &["--av-timeout-secs", "0"],
            &["--concurrency", "0"],
            &["--max-uploads", "0"],
            &["--auth-failure-window-secs", "0"],
            &["--stream-replicas", "0"],
        ] {
            let args = Args::try_parse_from(base.iter().chain(bad)).unwrap();
            let e = Config::from_args(&args).await.err().expect("refused");
            assert!(e.0.contains(bad[0]), "{bad:?}: {e}");
        }
    }
}
