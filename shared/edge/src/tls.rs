//! TLS for the provider-facing WebSocket endpoints (ingest, delivery).
//!
//! With `--tls-cert` and `--tls-key` (PEM files) the endpoint speaks TLS
//! (rustls, TLS 1.2 and 1.3). Without them it speaks plaintext, which is
//! allowed only on a loopback address, or when `--allow-plaintext` says TLS
//! is terminated in front of the gateway (an ingress or a service mesh).
//!
//! With `--tls-client-ca` the endpoint also asks for a client certificate
//! (mutual TLS): one that does not chain to that CA fails the handshake; a
//! verified one is fingerprinted (SHA-256 of its DER) and handed to the
//! `Hello` check as [`Peer::client_cert_sha256`], which maps it to the
//! provider that lists it (see `interop_providers::Registry::authenticate_hello`).
//! A client without a certificate still connects and authenticates by token,
//! unless its provider requires its certificate.
//!
//! [`serve`] bounds the time a connection may take before it is a WebSocket:
//! [`HANDSHAKE_TIMEOUT`] for TLS, [`UPGRADE_TIMEOUT`] for the HTTP upgrade
//! request header (also while a kept-alive connection waits for its next
//! request).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use interop_service::ConfigError;

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
    /// CA bundle (PEM) for client certificates: turns on optional mutual TLS.
    #[arg(long, env = "INTEROP_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The server config, or `None` for plaintext where that is allowed.
    pub fn server_config(
        &self,
        listen: SocketAddr,
    ) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                server_config_with_client_ca(cert, key, self.tls_client_ca.as_deref()).map(Some)
            }
            _ if self.tls_client_ca.is_some() => Err(ConfigError(
                "--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)".into(),
            )),
            _ if listen.ip().is_loopback() || self.allow_plaintext => Ok(None),
            _ => Err(ConfigError(format!(
                "refusing plaintext on {listen}: give --tls-cert and --tls-key, or --allow-plaintext when TLS is terminated in front"
            ))),
        }
    }
}

/// A rustls server config from PEM files, without client certificates.
pub fn server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    server_config_with_client_ca(cert, key, None)
}

/// A rustls server config from PEM files. With `client_ca`, clients may
/// present a certificate, which must chain to one of its CAs (optional
/// mutual TLS: clients without one still connect).
pub fn server_config_with_client_ca(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("TLS set-up: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad("client CA", ca, &e))? {
                roots
                    .add(c.map_err(|e| bad("client CA", ca, &e))?)
                    .map_err(|e| bad("client CA", ca, &e))?;
            }
            if roots.is_empty() {
                return Err(ConfigError(format!("no certificate in {}", ca.display())));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| bad("client CA", ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| ConfigError(format!("TLS certificate and key do not fit: {e}")))?;
    Ok(Arc::new(config))
}

/// How long a client may take for the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; past that, new connections wait (within
/// their own [`HANDSHAKE_TIMEOUT`]).
pub const MAX_HANDSHAKES: usize = 256;
/// How long a client may take, once connected (and past TLS), to send the
/// HTTP upgrade request's header.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection: handlers read it as the
/// request extension `axum::Extension<Peer>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// SHA-256 (hex) of the client certificate the TLS handshake verified.
    pub client_cert_sha256: Option<String>,
}

/// Serves `app` on `listener` until `shutdown`: over TLS when `tls` is set,
/// plaintext otherwise (see [`TlsArgs::server_config`] for when that is
/// allowed). Each connection may take [`HANDSHAKE_TIMEOUT`] for TLS and
/// [`UPGRADE_TIMEOUT`] for each request header (idle time included), and
/// carries its [`Peer`] as a request extension.
/// Returns once the listener stops; upgraded WebSockets live on under the
/// handlers' own shutdown handling.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => break,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::debug!(error = %e, "Accept failed.");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tcp.set_nodelay(true).ok();
        let (acceptor, permits, app, stop) = (
            acceptor.clone(),
            permits.clone(),
            app.clone(),
            shutdown.clone(),
        );
        conns.spawn(async move {
            match acceptor {
                None => {
                    let peer = Peer {
                        addr,
                        client_cert_sha256: None,
                    };
                    serve_connection(tcp, peer, app, stop).await;
                }
                Some(acceptor) => {
                    let handshake = async {
                        let _permit = permits.acquire_owned().await.ok()?;
                        acceptor.accept(tcp).await.ok()
                    };
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Some(tls)) => tls,
                        Ok(None) => {
                            tracing::debug!("TLS handshake failed.");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out.");
                            return;
                        }
                    };
                    let client_cert_sha256 = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| interop_providers::cert_fingerprint(c.as_ref()));
                    let peer = Peer {
                        addr,
                        client_cert_sha256,
                    };
                    serve_connection(tls, peer, app, stop).await;
                }
            }
        });
    }
    conns.close();
    // Connections still reading their request stop at shutdown; upgraded
    // ones were handed to the handlers.
    conns.wait().await;
    Ok(())
}

/// One HTTP/1.1 connection: each request header within [`UPGRADE_TIMEOUT`].
/// (Keep-alive stays on: hyper would otherwise answer the upgrade with
/// `Connection: close`.)
async fn serve_connection<IO>(
    io: IO,
    peer: Peer,
    app: axum::Router,
    shutdown: tokio_util::sync::CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower_service::Service as _;
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            let mut app = app.clone();
            async move { app.call(req.map(axum::body::Body::new)).await }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(UPGRADE_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended with an error.");
            }
        }
        () = shutdown.cancelled() => {
            // A request in progress (an upload to the media API) finishes;
            // idle connections close now. The service's shutdown grace
            // bounds the wait.
            conn.as_mut().graceful_shutdown();
            conn.await.ok();
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

/// Binds a provider-facing listener. With `reuse_port` (Linux
/// `SO_REUSEPORT`), several processes of the same user listen on one port
/// and the kernel spreads new connections over them: replicas on one
/// machine (`scripts/up --replicas`), as a Kubernetes Service does across
/// pods.
pub fn bind(listen: SocketAddr, reuse_port: bool) -> Result<TcpListener, ConfigError> {
    let bad = |e: std::io::Error| ConfigError(format!("cannot listen on {listen}: {e}"));
    let socket = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(bad)?;
    socket.set_reuseaddr(true).map_err(bad)?;
    if reuse_port {
        #[cfg(unix)]
        socket.set_reuseport(true).map_err(bad)?;
        #[cfg(not(unix))]
        return Err(ConfigError(
            "--listen-reuse-port needs SO_REUSEPORT (Linux)".into(),
        ));
    }
    socket.bind(listen).map_err(bad)?;
    socket.listen(1024).map_err(bad)
}

impl ProviderEndpoint {
    /// Loads the providers file and the TLS config (refusing plaintext off
    /// loopback unless allowed) and binds `listen` ([`bind`]).
    pub async fn open(
        listen: SocketAddr,
        reuse_port: bool,
        providers_file: &std::path::Path,
        tls: &TlsArgs,
    ) -> Result<Self, ConfigError> {
        let providers = interop_providers::Registry::load(providers_file)
            .map_err(|e| ConfigError(e.to_string()))?;
        let tls = tls.server_config(listen)?;
        let listener = bind(listen, reuse_port)?;
        Ok(Self {
            listener,
            providers: Arc::new(providers),
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replicas_share_a_port_only_when_each_asks_to() {
        let first = bind("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let addr = first.local_addr().unwrap();
        // A second replica with the flag shares it; a process without it
        // is refused, as before.
        let second = bind(addr, true).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        let e = bind(addr, false).unwrap_err();
        assert!(e.0.contains("cannot listen"), "{e}");
        let plain = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert!(bind(plain.local_addr().unwrap(), true).is_err());
    }
}
