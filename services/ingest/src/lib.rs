//! ingest: the edge where providers' clients send messages.
//!
//! Serves the client protocol (`proto/interop/v1/client.proto`) on
//! `GET /v1/ws` (WebSocket, one binary protobuf frame per message). A
//! connection authenticates with `Hello` (provider id + token), then sends
//! `Send`, `SetConsent`, `RespondToRequest` and `GetConsent` frames, pipelined, or many of
//! them in one `Transaction` (answered with one `TransactionResult`). Each `Send` is validated,
//! checked against the recipient's consent, given a server message id
//! (idempotent per sender and client message id), and published to
//! `interop.v1.ingest.accepted`. `Accepted` is answered only after JetStream
//! acknowledged the publish; every failure is a typed `Rejected`.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

pub mod accepted;
pub mod args;
pub use args::Args;
pub mod admin;
mod breaker;
mod consent_frames;
mod group;
mod key_notices;
mod keys_frames;
mod metrics;
mod send;
mod send_checks;
mod session;
mod transaction;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use interop_bus::{BusError, StreamSettings};
use interop_edge::tls::Peer;
use interop_edge::{EdgeGuard, EdgeLimits};
use interop_providers::store::RegistryStore;
use interop_providers::Registry;
use interop_service::Deps;
pub use interop_state::gcra::RateLimit;

/// Configuration of ingest.
pub struct Config {
    /// Where providers connect (bound by the caller, so tests can use port 0).
    pub listener: TcpListener,
    pub providers: Arc<Registry>,
    /// TLS for the endpoint; plaintext when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub streams: StreamSettings,
    /// How long a send may wait for JetStream before it is refused as
    /// `UNAVAILABLE` (retryable).
    pub store_timeout: Duration,
    /// How long a client message id maps to the same server message id
    /// (`--idempotency-window-secs`). Sends whose `sent_at_ms` is older than
    /// this less the clock skew are refused (docs/adr/0027).
    pub idempotency_window: Duration,
    /// A provider's limit when its registry entry sets none.
    pub default_provider_limit: RateLimit,
    /// Every sender's limit.
    pub sender_limit: RateLimit,
    /// The provider admin API; not served when `None`.
    pub admin_api: Option<admin::AdminApi>,
    /// Connection cap and authentication throttle (see
    /// `interop_edge`).
    pub edge: EdgeLimits,
    /// Key-directory fetches a provider may make (all its users together).
    pub key_fetch_provider_limit: RateLimit,
    /// Key-directory fetches one requesting user may make.
    pub key_fetch_user_limit: RateLimit,
    /// Key transparency (docs/adr/0029): the directory's VRF key; off when
    /// `None` (fetch answers then carry no proof, and clients that require
    /// one refuse them).
    pub key_transparency: Option<KeyTransparency>,
}

/// Key transparency's settings.
#[derive(Debug, Clone)]
pub struct KeyTransparency {
    pub vrf_key: interop_transparency::VrfKey,
    /// How often an epoch is published (also on demand, when a fetch finds
    /// a user's keys not committed yet).
    pub epoch_interval: Duration,
}

/// How often an epoch is published by default.
pub const DEFAULT_KT_EPOCH_INTERVAL: Duration = Duration::from_secs(5);

/// Key fetches a provider may make by default: the session-setup storm of a
/// large provider (docs/benchmarks.md) fits under it.
pub const DEFAULT_KEY_FETCH_PROVIDER_LIMIT: RateLimit = RateLimit {
    per_second: 10_000.0,
    burst: 20_000,
};
/// Key fetches one user may make by default: a user starting conversations
/// with many people at once, not a script draining others' prekeys.
pub const DEFAULT_KEY_FETCH_USER_LIMIT: RateLimit = RateLimit {
    per_second: 5.0,
    burst: 50,
};

/// Open ingest connections a provider may have per replica by default.
pub const DEFAULT_MAX_CONNECTIONS_PER_PROVIDER: usize = 1000;

/// How long an idempotency claim is kept, by default (24 h; docs/adr/0027).
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration =
    Duration::from_millis(interop_proto::limits::DEFAULT_IDEMPOTENCY_WINDOW_MS as u64);

/// How long a send may wait for JetStream before `UNAVAILABLE`, by default.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Messages per second (and burst) a provider may send when its registry
/// entry sets no limit, by default.
pub const DEFAULT_PROVIDER_LIMIT: RateLimit = RateLimit {
    per_second: 1000.0,
    burst: 2000,
};
/// Messages per second (and burst) one sender may send, by default.
pub const DEFAULT_SENDER_LIMIT: RateLimit = RateLimit {
    per_second: 20.0,
    burst: 40,
};

impl Config {
    pub fn new(listener: TcpListener, providers: Arc<Registry>) -> Self {
        Self {
            listener,
            providers,
            tls: None,
            streams: StreamSettings::default(),
            store_timeout: DEFAULT_STORE_TIMEOUT,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            default_provider_limit: DEFAULT_PROVIDER_LIMIT,
            sender_limit: DEFAULT_SENDER_LIMIT,
            admin_api: None,
            edge: EdgeLimits::with_connections(DEFAULT_MAX_CONNECTIONS_PER_PROVIDER),
            key_fetch_provider_limit: DEFAULT_KEY_FETCH_PROVIDER_LIMIT,
            key_fetch_user_limit: DEFAULT_KEY_FETCH_USER_LIMIT,
            key_transparency: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("provider registry: {0}")]
    Registry(#[from] interop_providers::store::StoreError),
    #[error("cannot serve WebSockets: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Keys(#[from] interop_keys::KeysError),
    #[error(transparent)]
    State(#[from] interop_state::StateError),
    #[error(transparent)]
    Transparency(#[from] interop_transparency::KtError),
}

/// Moves consent records, answers and groups that Redis held before the
/// user-state streams existed into them, marks every user with answers
/// written since the last start (`Records::index_answers`), then warms the
/// cache with every consent record and group (docs/adr/0028), retrying
/// while Redis or NATS is unavailable. Until the move is done, such a record is moved when
/// first read; until the cache is warm, a record is loaded when first read.
async fn migrate_and_warm(records: interop_state::Records) {
    let mut pause = Duration::from_secs(1);
    loop {
        let done = async {
            if let Some(moved) = records.migrate().await? {
                info!(
                    moved,
                    "Moved users' records from Redis into the user-state streams."
                );
            }
            if let Some(marked) = records.index_answers().await? {
                info!(
                    marked,
                    "Marked every user with answers, so a user without answers costs one exact read."
                );
            }
            if let Some((consents, groups)) = records.warm().await? {
                info!(consents, groups, "Warmed the cache of users' records.");
            }
            Ok::<(), interop_state::StateError>(())
        };
        match done.await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot move or warm users' records yet; retrying.");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// What every connection shares.
pub(crate) struct Shared {
    /// The live registry (updated from the registry stream).
    pub providers: tokio::sync::watch::Receiver<Arc<Registry>>,
    pub js: async_nats::jetstream::Context,
    pub redis: redis::aio::ConnectionManager,
    /// What users decided: the stream and its Redis cache (docs/adr/0028).
    pub records: interop_state::Records,
    pub store_timeout: Duration,
    pub idempotency_secs: u64,
    /// How old a send's `sent_at_ms` may be: the idempotency window less
    /// the clock skew, so a re-send always finds its claim (docs/adr/0027).
    pub max_sent_at_age_ms: i64,
    pub default_provider_limit: RateLimit,
    pub sender_limit: RateLimit,
    pub shutdown: CancellationToken,
    pub sessions: TaskTracker,
    pub metrics: metrics::IngestMetrics,
    pub edge: EdgeGuard,
    /// Publishes accepted sends, gathered (docs/adr/0019).
    pub accepted: accepted::Publisher,
    /// Lone sends' Redis checks, gathered (issue 22).
    pub send_checks: send_checks::SendChecks,
    /// Whether Redis is out (sends' checks refused at once meanwhile).
    pub redis_breaker: breaker::Breaker,
    /// The key directory (docs/adr/0025).
    pub keys: interop_keys::KeyDirectory,
    pub key_fetch_provider_limit: RateLimit,
    pub key_fetch_user_limit: RateLimit,
    /// Key transparency, when configured (docs/adr/0029).
    pub transparency: Option<Arc<interop_transparency::Transparency>>,
}

/// Publishes an epoch every `interval` until `shutdown`: any replica may
/// (the log's compare-and-set commit lets one of two win).
async fn publish_epochs(
    kt: Arc<interop_transparency::Transparency>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match kt.publish_epoch().await {
            Ok(Some(e)) => {
                tracing::debug!(epoch = e.epoch(), "Published a key transparency epoch.")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Cannot publish a key transparency epoch; the next tick tries again.")
            }
        }
    }
}

/// Runs ingest until `shutdown`, then closes connections after their
/// in-flight sends are answered.
pub async fn run(config: Config, deps: Deps, shutdown: CancellationToken) -> Result<(), Error> {
    let js = async_nats::jetstream::new(deps.nats.clone());
    interop_bus::ensure_streams(&js, &config.streams).await?;
    let addr: Option<SocketAddr> = config.listener.local_addr().ok();
    let store = RegistryStore::new(js.clone());
    let providers = store
        .seed_and_watch(&config.providers, shutdown.clone())
        .await?;
    let admin_task = config.admin_api.map(|api| {
        let addr = api.listener.local_addr().ok();
        info!(?addr, "Provider admin API is listening.");
        tokio::spawn(admin::serve(
            api,
            store.clone(),
            js.clone(),
            deps.redis.clone(),
            shutdown.clone(),
        ))
    });
    let keys = interop_keys::KeyDirectory::open(js.clone()).await?;
    let records = interop_state::Records::open(js.clone(), deps.redis.clone()).await?;
    let transparency = match &config.key_transparency {
        Some(kt) => {
            let t = Arc::new(
                interop_transparency::Transparency::open(js.clone(), kt.vrf_key.clone()).await?,
            );
            // Public: what providers' apps pin (docs/security.md).
            let vrf_public_key = hex::encode(kt.vrf_key.public_key().await?);
            info!(%vrf_public_key, "Key transparency is on.");
            tokio::spawn(publish_epochs(
                t.clone(),
                kt.epoch_interval,
                shutdown.clone(),
            ));
            Some(t)
        }
        None => None,
    };
    tokio::spawn(migrate_and_warm(records.clone()));
    let metrics = metrics::IngestMetrics::register(&deps.metrics);
    let shared = Arc::new(Shared {
        providers,
        accepted: accepted::Publisher::start(js.clone(), metrics.clone()),
        send_checks: send_checks::SendChecks::start(),
        redis_breaker: breaker::Breaker::default(),
        js,
        redis: deps.redis.clone(),
        records,
        store_timeout: config.store_timeout,
        idempotency_secs: config.idempotency_window.as_secs().max(1),
        max_sent_at_age_ms: interop_proto::limits::max_sent_at_age_ms(
            i64::try_from(config.idempotency_window.as_millis()).unwrap_or(i64::MAX),
        ),
        default_provider_limit: config.default_provider_limit,
        sender_limit: config.sender_limit,
        shutdown: shutdown.clone(),
        sessions: TaskTracker::new(),
        metrics,
        edge: {
            let edge = EdgeGuard::new(deps.redis.clone(), config.edge);
            edge.register_metrics(&deps.metrics, "ingest");
            edge
        },
        keys,
        key_fetch_provider_limit: config.key_fetch_provider_limit,
        key_fetch_user_limit: config.key_fetch_user_limit,
        transparency,
    });
    let app = Router::new()
        .route("/v1/ws", get(upgrade))
        .with_state(shared.clone());
    // The rate-limit scripts; reloaded on demand if Redis restarts.
    let mut redis = deps.redis.clone();
    if let Err(e) = send::load_scripts(&mut redis).await {
        tracing::warn!(error = %e, "Cannot load the rate-limit scripts yet; will retry on first use.");
    }
    deps.health.set_bound();
    info!(?addr, "ingest is listening.");
    interop_edge::tls::serve(config.listener, config.tls, app, shutdown.clone())
        .await
        .map_err(Error::Serve)?;
    shared.sessions.close();
    shared.sessions.wait().await;
    if let Some(task) = admin_task {
        // It stops with the same shutdown token.
        task.await.ok();
    }
    Ok(())
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    ws: WebSocketUpgrade,
) -> Response {
    interop_edge::ws::configure(ws).on_upgrade(move |socket| {
        let tracker = shared.sessions.clone();
        tracker.track_future(session::serve(socket, shared, peer))
    })
}
