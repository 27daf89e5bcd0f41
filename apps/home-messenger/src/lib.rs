//! The reference home messenger's backend adapter: how a gatekeeper's own
//! backend connects to the interop gateway (docs/deploy.md, "Integrating
//! the gatekeeper's backend").
//!
//! - [`hub`]: one ingest connection and one provider session on delivery,
//!   as the `home` provider, for all users; a mailbox per user.
//! - [`web`]: what the users' browsers get: the web app, sign-in, the
//!   registry's providers, media, and a WebSocket carrying the gateway's
//!   frames.
//! - [`relay`]: the checks that keep each browser to its own user.
//!
//! End-to-end encryption ends in the browser: the adapter relays
//! ciphertext and public keys and never holds a key that decrypts.

pub mod hub;
pub mod relay;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use hub::{GatewayConfig, Hub};
pub use web::DemoUser;

/// The demo users `scripts/up` signs in as.
pub fn default_demo_users() -> Vec<DemoUser> {
    vec![
        DemoUser {
            address: "home:+4915112345678".into(),
            name: "Bob".into(),
        },
        DemoUser {
            address: "home:+4915112345679".into(),
            name: "Carol".into(),
        },
    ]
}

/// A running adapter.
pub struct Server {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Connects to the gateway and serves on `listener`; `secure_cookie`
    /// marks the session cookie `Secure` (when served over HTTPS). The
    /// users' mailboxes are kept in `data_dir`.
    pub async fn start(
        gateway: GatewayConfig,
        users: Vec<DemoUser>,
        web_dir: PathBuf,
        data_dir: &std::path::Path,
        secure_cookie: bool,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        let mailboxes = hub::Mailboxes::open(data_dir).map_err(|e| {
            anyhow::anyhow!("cannot open the mailboxes in {}: {e}", data_dir.display())
        })?;
        let hub = Hub::start(gateway, mailboxes).await?;
        let mut app = web::App::new(hub.clone(), users, web_dir)?;
        app.secure_cookie = secure_cookie;
        let app = Arc::new(app);
        let addr = listener.local_addr()?;
        let router = web::router(app);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "the web server stopped");
            }
        });
        Ok(Self { addr, hub, task })
    }

    /// The web app's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs until the web server stops.
    pub async fn wait(self) {
        self.task.await.ok();
    }

    /// Stops serving (the gateway connections end with the hub).
    pub fn stop(self) {
        self.task.abort();
    }
}
