//! delivery's flags and the [`Config`] they make.

use std::net::SocketAddr;
use std::path::PathBuf;

use interop_edge::tls::ProviderEndpoint;
use interop_service::{CommonArgs, ConfigError};

use crate::{Config, DEFAULT_MAX_CONNECTIONS_PER_PROVIDER};

/// Holds recipients' WebSocket sessions and delivers their messages.
#[derive(Debug, clap::Parser)]
#[command(name = "delivery", version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub tls: interop_edge::tls::TlsArgs,
    #[command(flatten)]
    pub edge: interop_edge::EdgeArgs,
    /// Address recipients' clients connect to (WebSocket at /v1/ws).
    #[arg(long, env = "INTEROP_DELIVERY_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Share the listen address with other replicas on this machine
    /// (SO_REUSEPORT; the kernel spreads connections over them).
    #[arg(long, env = "INTEROP_LISTEN_REUSE_PORT")]
    pub listen_reuse_port: bool,
    /// The provider registry (TOML; see docs/protocol.md).
    #[arg(
        long,
        env = "INTEROP_PROVIDERS_FILE",
        required_unless_present = "grow_store"
    )]
    pub providers_file: Option<PathBuf>,
    /// Do not serve: grow the store's streams to --inbox-partitions (from
    /// 1, or from a divisor of it), moving what they hold, then exit. Run
    /// with routing, media-transcoding and delivery stopped
    /// (docs/deploy.md, "Store partitions").
    #[arg(long)]
    pub grow_store: bool,
}

impl Config {
    /// The configuration `args` describe: loads the registry and the TLS
    /// files and binds the listener. [`ConfigError`] when a flag is out of
    /// range or a file or the address cannot be used.
    pub async fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let streams = args.common.stream_settings()?;
        let edge = args.edge.limits(DEFAULT_MAX_CONNECTIONS_PER_PROVIDER)?;
        let endpoint = ProviderEndpoint::open(
            args.listen,
            args.listen_reuse_port,
            args.providers_file
                .as_deref()
                .ok_or_else(|| ConfigError("--providers-file is required".into()))?,
            &args.tls,
        )
        .await?;
        let mut config = Config::new(endpoint.listener, endpoint.providers);
        config.streams = streams;
        config.tls = endpoint.tls;
        config.edge = edge;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn registry_file() -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            f.path(),
            "[[providers]]\nid = \"home\"\ndisplay_name = \"Home\"\nencryption = \"e2ee\"\n",
        )
        .unwrap();
        f
    }

    #[tokio::test]
    async fn flags_make_the_config_and_bad_ones_are_refused() {
        let reg = registry_file();
        let path = reg.path().to_str().unwrap();
        let base = [
            "delivery",
            "--listen",
            "127.0.0.1:0",
            "--providers-file",
            path,
        ];
        let args = Args::try_parse_from(base).unwrap();
        let config = Config::from_args(&args).await.unwrap();
        assert!(config.providers.get("home").is_some());
        assert!(config.tls.is_none(), "plaintext is allowed on loopback");
        assert_eq!(
            config.edge.max_connections_per_provider,
            DEFAULT_MAX_CONNECTIONS_PER_PROVIDER
        );
        for bad in [
            &["--max-connections-per-provider", "0"][..],
            &["--stream-replicas", "6"],
            &["--auth-failure-window-secs", "0"],
        ] {
            let args = Args::try_parse_from(base.iter().chain(bad)).unwrap();
            let e = Config::from_args(&args).await.err().expect("refused");
            assert!(e.0.contains(bad[0]), "{bad:?}: {e}");
        }
        // Plaintext off loopback, and a registry that is not there.
        let args = Args::try_parse_from([
            "delivery",
            "--listen",
            "0.0.0.0:0",
            "--providers-file",
            path,
        ])
        .unwrap();
        assert!(Config::from_args(&args).await.is_err());
        let args = Args::try_parse_from([
            "delivery",
            "--listen",
            "127.0.0.1:0",
            "--providers-file",
            "/nonexistent/providers.toml",
        ])
        .unwrap();
        assert!(Config::from_args(&args).await.is_err());
        // The registry is needed to serve, not to grow the store.
        assert!(Args::try_parse_from(["delivery"]).is_err());
        let grow = Args::try_parse_from(["delivery", "--grow-store", "--inbox-partitions", "8"])
            .expect("no registry needed");
        assert!(grow.grow_store);
        assert_eq!(
            grow.common
                .stream_settings()
                .unwrap()
                .inbox_partitions
                .get(),
            8
        );
    }
}
