//! delivery: holds recipients' WebSocket sessions and delivers their
//! messages.
//!
//! Every message for a recipient sits in their store: the subject
//! `interop.v1.delivery.queued.<provider>.<partition>.<key>` of the
//! `INTEROP_INBOX` stream (or, with `--inbox-partitions` P > 1, of the
//! `INTEROP_INBOX_<i>` holding the partition: docs/adr/0032), written
//! by routing, media-transcoding and delivery itself (receipts). A session
//! (`Hello` with `user` and `device_id`) reads the store with an ordered
//! consumer from the device's cursor, so messages that arrived while the
//! user was offline come first, then live ones, in store order, with no gap.
//! The client acks each `Deliver`; the device's cursor (the last message on
//! `interop.v1.delivery.acked.<key>.<device>` in `INTEROP_CURSORS`) moves past a message only once it and
//! everything before it was acked, so a crash or disconnect re-delivers
//! rather than loses. The first ack of a message sends a `delivered` receipt
//! into the sender's store; `MarkRead` sends `read` receipts; typing
//! indicators reach open sessions over core NATS, never stored; rich content
//! the recipient's app does not support becomes a visible text fallback
//! ([`rich`]); the expiry sweeper sends `expired` receipts for messages that
//! aged out undelivered.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

mod args;
mod auth;
mod expiry;
mod metrics;
mod partitions;
mod provider_session;
mod reading;
pub mod rich;
mod session;

pub use args::Args;

use std::net::SocketAddr;
use std::sync::Arc;

use async_nats::jetstream;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use interop_bus::subjects::{ADMISSIONS_CHANGED_ALL, STREAM_CURSORS, STREAM_PROVIDER_SESSIONS};
use interop_bus::{BusError, InboxPartitions, InboxStreams, StreamSettings};
use interop_edge::tls::Peer;
use interop_edge::{EdgeGuard, EdgeLimits};
use interop_providers::store::RegistryStore;
use interop_providers::Registry;
use interop_service::Deps;

/// Initial read buffer of a session's WebSocket: clients send small frames
/// (acks); a larger frame grows it to fit.
const READ_BUFFER_BYTES: usize = 256;

/// Configuration of delivery.
pub struct Config {
    /// Where recipients' clients connect (bound by the caller).
    pub listener: TcpListener,
    pub providers: Arc<Registry>,
    /// TLS for the endpoint; plaintext when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub streams: StreamSettings,
    /// Connection cap and authentication throttle (see
    /// `interop_edge`).
    pub edge: EdgeLimits,
}

/// Open delivery sessions a provider may have per replica by default (one
/// per user device).
pub const DEFAULT_MAX_CONNECTIONS_PER_PROVIDER: usize = 50_000;

impl Config {
    pub fn new(listener: TcpListener, providers: Arc<Registry>) -> Self {
        Self {
            listener,
            providers,
            tls: None,
            streams: StreamSettings::default(),
            edge: EdgeLimits::with_connections(DEFAULT_MAX_CONNECTIONS_PER_PROVIDER),
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
    State(#[from] interop_state::StateError),
    #[error("the store cannot grow while its readers run (consumers with waiting pull requests: {0}); stop routing, media-transcoding and delivery, wait 30 s, and run again")]
    GrowWhileRunning(String),
}

pub(crate) struct Shared {
    /// The live registry (updated from the registry stream).
    pub providers: tokio::sync::watch::Receiver<Arc<Registry>>,
    /// One per store stream, by index: bumped each time the NATS
    /// connection is made again (all), and each time the stream elects a
    /// leader: stored messages republished meanwhile may not have come, so
    /// sessions of that stream not reading their store look at it.
    pub look_again: Vec<tokio::sync::watch::Receiver<u64>>,
    /// Bumped when what many recipients admit may have changed (an
    /// erasure): every session re-checks the live messages accepted before,
    /// or within a second after, the bump (docs/adr/0018).
    pub admissions_changed: tokio::sync::watch::Receiver<u64>,
    pub js: jetstream::Context,
    /// The store's streams (one per `--inbox-partitions`): a user's store
    /// and a partition are each in one of them.
    pub inbox: InboxStreams,
    pub cursors: jetstream::stream::Stream,
    /// Provider sessions' heartbeats and partition leases
    /// (docs/adr/0031).
    pub provider_sessions: jetstream::stream::Stream,
    pub shutdown: CancellationToken,
    pub sessions: TaskTracker,
    pub metrics: metrics::DeliveryMetrics,
    /// The offline retention: older messages are not delivered, and their
    /// senders get `EXPIRED`.
    pub retention: std::time::Duration,
    pub edge: EdgeGuard,
    /// Consent and the recipient's answers, checked again before each push.
    /// The re-checks of every session of this replica, made together:
    /// one Redis round trip for what is asked while one is in flight.
    pub contacts: interop_state::contacts::AdmissionBatcher,
}

/// Runs delivery until `shutdown`, then closes sessions (un-acked messages
/// are re-delivered on the next connection).
pub async fn run(config: Config, deps: Deps, shutdown: CancellationToken) -> Result<(), Error> {
    let js = jetstream::new(deps.nats.clone());
    interop_bus::ensure_streams(&js, &config.streams).await?;
    let inbox = InboxStreams::open(&js, config.streams.inbox_partitions).await?;
    let cursors = interop_bus::open_stream(&js, STREAM_CURSORS).await?;
    let provider_sessions = interop_bus::open_stream(&js, STREAM_PROVIDER_SESSIONS).await?;
    let addr: Option<SocketAddr> = config.listener.local_addr().ok();
    let store = RegistryStore::new(js.clone());
    let providers = store
        .seed_and_watch(&config.providers, shutdown.clone())
        .await?;
    let metrics = metrics::DeliveryMetrics::register(&deps.metrics);
    let records = interop_state::Records::open(js.clone(), deps.redis.clone()).await?;
    let shared = Arc::new(Shared {
        providers,
        look_again: watch_look_again(
            &deps.nats,
            inbox.partitions(),
            metrics.look_again.clone(),
            shutdown.clone(),
        ),
        admissions_changed: watch_admissions_changed(&deps.nats, shutdown.clone()).await?,
        js,
        inbox,
        cursors,
        provider_sessions,
        shutdown: shutdown.clone(),
        sessions: TaskTracker::new(),
        metrics,
        retention: config.streams.inbox_max_age,
        edge: {
            let edge = EdgeGuard::new(deps.redis.clone(), config.edge);
            edge.register_metrics(&deps.metrics, "delivery");
            edge
        },
        contacts: interop_state::contacts::AdmissionBatcher::new(interop_state::ContactStore::new(
            records,
        )),
    });
    tokio::spawn(move_legacy_store(
        shared.js.clone(),
        shared.inbox.partitions(),
        shutdown.clone(),
    ));
    if config.streams.replicas > 1 && shared.inbox.partitions().streams() > 1 {
        tokio::spawn(keep_store_leaders_spread(
            shared.js.clone(),
            shared.inbox.partitions(),
            shutdown.clone(),
        ));
    }
    // One sweeper per store stream, each on its stream's durable consumer.
    let mut sweepers = Vec::with_capacity(shared.inbox.all().len());
    for stream in shared.inbox.all() {
        sweepers.push(tokio::spawn(expiry::run(
            shared.clone(),
            expiry::consumer(stream).await?,
            shutdown.clone(),
        )));
    }
    let app = Router::new()
        .route("/v1/ws", get(upgrade))
        .with_state(shared.clone());
    deps.health.set_bound();
    info!(?addr, "delivery is listening.");
    interop_edge::tls::serve(config.listener, config.tls, app, shutdown.clone())
        .await
        .map_err(Error::Serve)?;
    shared.sessions.close();
    shared.sessions.wait().await;
    for sweeper in sweepers {
        sweeper.await.ok();
    }
    Ok(())
}

/// `delivery --grow-store`: grows the store to `streams.inbox_partitions`
/// (`interop_bus::repartition::grow_store`, docs/deploy.md "Store
/// partitions") and returns, without serving. Refuses while routing,
/// media-transcoding or a delivery still read their streams.
pub async fn grow_store(
    streams: StreamSettings,
    deps: Deps,
    _shutdown: CancellationToken,
) -> Result<(), Error> {
    let js = jetstream::new(deps.nats.clone());
    let running = interop_bus::repartition::readers_running(&js).await?;
    if !running.is_empty() {
        return Err(Error::GrowWhileRunning(running.join(", ")));
    }
    let report = interop_bus::repartition::grow_store(&js, &streams).await?;
    // What the services would do at start: the other streams, and a check
    // that the store is of the layout asked for.
    interop_bus::ensure_streams(&js, &streams).await?;
    info!(
        from = report.from,
        to = report.to,
        created = report.created.len(),
        removed = report.removed.len(),
        partitions_moved = report.partitions_moved,
        copied = report.copied,
        skipped_acked = report.skipped_acked,
        "The store has the streams of --inbox-partitions; start the services with it."
    );
    Ok(())
}

/// Moves what an earlier version stored under the store's layout before
/// partitions into the current one (docs/adr/0031), tried again every 10 s
/// until it succeeds or delivery stops: the service serves meanwhile.
async fn move_legacy_store(
    js: jetstream::Context,
    partitions: InboxPartitions,
    shutdown: CancellationToken,
) {
    loop {
        match interop_bus::legacy_store::migrate(&js, partitions).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot move stored messages of the layout before partitions yet; trying again in 10 s.");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
        }
    }
}

/// How often delivery looks whether the store streams' leaders are spread
/// over the NATS servers (each replica, at a random offset).
const BALANCE_LEADERS_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Keeps the store streams' leaders spread over the NATS servers
/// (`interop_bus::inbox::balance_leaders`, docs/adr/0032): 10 to 70 s after
/// start, then every 5 minutes (plus up to a minute, so that replicas
/// rarely look at once), until `shutdown`. JetStream places leaders at
/// random and leaves a returning server leading nothing.
async fn keep_store_leaders_spread(
    js: jetstream::Context,
    partitions: InboxPartitions,
    shutdown: CancellationToken,
) {
    let jitter = || {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        std::time::Duration::from_millis(u64::from(nanos % 60_000))
    };
    let mut wait = std::time::Duration::from_secs(10) + jitter();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match interop_bus::inbox::balance_leaders(&js, partitions).await {
            Ok(0) => {}
            Ok(stepped) => info!(
                stepped,
                "Store streams' leaders stepped down to spread them over the NATS servers."
            ),
            Err(e) => tracing::warn!(error = %e, "Cannot spread the store streams' leaders now."),
        }
        wait = BALANCE_LEADERS_EVERY + jitter();
    }
}

/// How often the NATS connection count is looked at.
const RECONNECT_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// A receiver bumped whenever `nats` has connected again (its connection
/// count grew), a subscription fell behind (the client dropped messages:
/// [`interop_bus::slow_consumer_events`]) — all of them — or a store
/// stream has elected a leader (JetStream's advisory) — that stream's —,
/// until `shutdown`; one receiver per stream of `partitions`, by index. Each can lose republished
/// messages on their way to sessions; the next one would show the gap, but
/// a user may get no next one for a long time. Each can also lose a change
/// announcement, so sessions re-check what they push for a while.
fn watch_look_again(
    nats: &async_nats::Client,
    partitions: InboxPartitions,
    counter: prometheus_client::metrics::counter::Counter,
    shutdown: CancellationToken,
) -> Vec<tokio::sync::watch::Receiver<u64>> {
    let stats = nats.statistics();
    // Connections made, plus subscriptions that fell behind: either bumps.
    let connects = move || {
        stats.connects.load(std::sync::atomic::Ordering::Relaxed)
            + interop_bus::slow_consumer_events()
    };
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..partitions.streams())
        .map(|_| tokio::sync::watch::channel(0u64))
        .unzip();
    let nats = nats.clone();
    tokio::spawn(async move {
        // One subscription for every store stream: their names share a
        // prefix only with P > 1, so the names are told apart here.
        let advisory = if partitions.get() == 1 {
            format!(
                "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{}",
                partitions.stream_name(0)
            )
        } else {
            "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.*".to_owned()
        };
        let names = partitions.stream_names();
        // Re-subscribed if it fails (the client retries subscriptions
        // across reconnects by itself).
        let mut elected = nats.subscribe(advisory.clone()).await.ok();
        let mut seen = connects();
        let mut tick = tokio::time::interval(RECONNECT_POLL);
        loop {
            let next_election = async {
                match elected.as_mut() {
                    Some(sub) => sub.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let now = connects();
                    if now != seen {
                        seen = now;
                        for tx in &txs {
                            tx.send_modify(|n| *n += 1);
                        }
                        counter.inc();
                    }
                    if elected.is_none() {
                        elected = nats.subscribe(advisory.clone()).await.ok();
                    }
                }
                event = next_election => match event {
                    Some(event) => {
                        let stream = event.subject.as_str().rsplit('.').next().unwrap_or_default();
                        let Some(i) = names.iter().position(|n| n == stream) else {
                            continue;
                        };
                        info!(stream, "A store stream elected a leader; its sessions look at their stores.");
                        txs[i].send_modify(|n| *n += 1);
                        counter.inc();
                    }
                    None => elected = None,
                },
            }
        }
    });
    rxs
}

/// A receiver bumped on each announcement that what many recipients admit
/// may have changed (`interop.v1.delivery.admissions.changed`), until
/// `shutdown`. Subscribed before delivery serves sessions.
async fn watch_admissions_changed(
    nats: &async_nats::Client,
    shutdown: CancellationToken,
) -> Result<tokio::sync::watch::Receiver<u64>, BusError> {
    let mut sub = nats
        .subscribe(ADMISSIONS_CHANGED_ALL)
        .await
        .map_err(|source| BusError::Subscribe {
            subject: ADMISSIONS_CHANGED_ALL.to_owned(),
            source,
        })?;
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        // The subscription outlives reconnects; it ends only with the
        // client. The sender is kept until shutdown either way, so a
        // session never sees the channel closed.
        let mut open = true;
        loop {
            let next = async {
                if open {
                    sub.next().await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                event = next => match event {
                    Some(_) => tx.send_modify(|n| *n += 1),
                    None => open = false,
                },
            }
        }
    });
    Ok(rx)
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    ws: WebSocketUpgrade,
) -> Response {
    interop_edge::ws::configure(ws)
        // Clients send small frames (acks); a large read buffer per idle
        // session is most of its memory (docs/adr/0011).
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            let tracker = shared.sessions.clone();
            tracker.track_future(session::serve(socket, shared, peer))
        })
}
