//! `home-messenger`: the reference home messenger's backend adapter and web
//! app. `scripts/up` runs it; see docs/deploy.md, "Integrating the
//! gatekeeper's backend".

use std::path::PathBuf;

use clap::Parser;
use interop_home_messenger::{default_demo_users, DemoUser, GatewayConfig, Server};

/// The gatekeeper's backend adapter: connects to the gateway as the home
/// provider (provider sessions) and serves the web app to demo users.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Where to serve the web app.
    #[arg(long, env = "INTEROP_HOME_LISTEN", default_value = "127.0.0.1:8088")]
    listen: String,
    /// The client config `scripts/up` writes (URLs, the provider's token,
    /// the admin API for the registry's providers).
    #[arg(
        long,
        env = "INTEROP_CLIENT_CONFIG",
        default_value = ".run/client.toml"
    )]
    client_config: PathBuf,
    /// The gatekeeper's provider id.
    #[arg(long, env = "INTEROP_HOME_PROVIDER", default_value = "home")]
    provider: String,
    /// The built web app (`npm run build` in apps/home-messenger/web).
    #[arg(
        long,
        env = "INTEROP_HOME_WEB_DIR",
        default_value = "apps/home-messenger/web/dist"
    )]
    web_dir: PathBuf,
    /// Where the users' mailboxes are kept (what the gateway delivered and
    /// their browsers have not taken yet).
    #[arg(
        long,
        env = "INTEROP_HOME_DATA_DIR",
        default_value = ".run/home-messenger"
    )]
    data_dir: PathBuf,
    /// A user one may sign in as, ADDRESS=NAME (repeat); default Bob
    /// (home:+4915112345678) and Carol (home:+4915112345679).
    #[arg(long = "demo-user")]
    demo_users: Vec<DemoUser>,
    /// Mark the session cookie `Secure`: set it when users reach the
    /// adapter over HTTPS (behind a TLS ingress).
    #[arg(long, env = "INTEROP_HOME_SECURE_COOKIE")]
    secure_cookie: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let file = interop_client::config::ClientConfig::load(&args.client_config)?;
    let need = |v: Option<String>, what: &str| {
        v.ok_or_else(|| anyhow::anyhow!("{} has no {what}", args.client_config.display()))
    };
    let token = need(
        file.tokens.get(&args.provider).cloned(),
        "token for the provider",
    )?;
    let gateway = GatewayConfig {
        ingest_url: need(file.ingest_url, "ingest_url")?,
        delivery_url: need(file.delivery_url, "delivery_url")?,
        media_url: need(file.media_url, "media_url")?,
        admin_url: file.admin_url,
        admin_token: file.admin_token,
        provider: args.provider,
        token,
    };
    let users = if args.demo_users.is_empty() {
        default_demo_users()
    } else {
        args.demo_users
    };
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let server = Server::start(
        gateway,
        users,
        args.web_dir,
        &args.data_dir,
        args.secure_cookie,
        listener,
    )
    .await?;
    tracing::info!(url = %server.url(), "home messenger ready");
    tokio::select! {
        _ = server.wait() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
