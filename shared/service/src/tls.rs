//! TLS for the provider-facing WebSocket endpoints (ingest, delivery).
//!
//! With `--tls-cert` and `--tls-key` (PEM files) the endpoint speaks TLS
//! (rustls, TLS 1.2 and 1.3). Without them it speaks plaintext, which is
//! allowed only on a loopback address, or when `--allow-plaintext` says TLS
//! is terminated in front of the gateway (an ingress or a service mesh).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::ConfigError;

/// TLS flags of a provider-facing endpoint.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// Certificate chain (PEM) for the provider endpoint.
    #[arg(long, env = "INTEROP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for the provider endpoint.
    #[arg(long, env = "INTEROP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plaintext on a non-loopback address (TLS terminated in front).
    #[arg(long, env = "INTEROP_ALLOW_PLAINTEXT", default_value_t = false)]
    pub allow_plaintext: bool,
}

impl TlsArgs {
    /// The server config, or `None` for plaintext where that is allowed.
    pub fn server_config(
        &self,
        listen: SocketAddr,
    ) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => server_config(cert, key).map(Some),
            _ if listen.ip().is_loopback() || self.allow_plaintext => Ok(None),
            _ => Err(ConfigError(format!(
                "refusing plaintext on {listen}: give --tls-cert and --tls-key, or --allow-plaintext when TLS is terminated in front"
            ))),
        }
    }
}

/// A rustls server config from PEM files.
pub fn server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let bad = |what: &str, p: &std::path::Path, e: &dyn std::fmt::Display| {
        ConfigError(format!("cannot read the TLS {what} {}: {e}", p.display()))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("certificate", cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("certificate", cert, &e))?;
    if chain.is_empty() {
        return Err(ConfigError(format!("no certificate in {}", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConfigError(format!("TLS set-up: {e}")))?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| ConfigError(format!("TLS certificate and key do not fit: {e}")))?;
    Ok(Arc::new(config))
}

/// How long a client may take for the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; past that, new connections wait.
pub const MAX_HANDSHAKES: usize = 256;

/// A listener that hands out TLS streams. Handshakes run concurrently in the
/// background, each under [`HANDSHAKE_TIMEOUT`], so a slow client cannot hold
/// up the others.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(64);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok((stream, addr)) = tcp.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, conn_tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            // The server is gone when the receiver is dropped.
                            conn_tx.send((tls, addr)).await.ok();
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed."),
                        Err(_) => tracing::debug!("TLS handshake timed out."),
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task only ends with the process; wait forever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves `app` on `listener` until `shutdown`: over TLS when `tls` is set,
/// plaintext otherwise (see [`TlsArgs::server_config`] for when that is
/// allowed).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let stop = async move { shutdown.cancelled().await };
    match tls {
        Some(config) => {
            axum::serve(TlsListener::new(listener, config)?, app)
                .with_graceful_shutdown(stop)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    }
}

/// What a provider endpoint (ingest, delivery) needs before it runs.
pub struct ProviderEndpoint {
    pub listener: TcpListener,
    /// The providers file: it seeds the registry stream.
    pub providers: Arc<interop_providers::Registry>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl ProviderEndpoint {
    /// Loads the providers file and the TLS config (refusing plaintext off
    /// loopback unless allowed) and binds `listen`.
    pub async fn open(
        listen: SocketAddr,
        providers_file: &std::path::Path,
        tls: &TlsArgs,
    ) -> Result<Self, ConfigError> {
        let providers = interop_providers::Registry::load(providers_file)
            .map_err(|e| ConfigError(e.to_string()))?;
        let tls = tls.server_config(listen)?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| ConfigError(format!("cannot listen on {listen}: {e}")))?;
        Ok(Self {
            listener,
            providers: Arc::new(providers),
            tls,
        })
    }
}
