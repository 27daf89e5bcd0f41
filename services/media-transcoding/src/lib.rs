//! media-transcoding: media upload and download, and the media stage of the
//! pipeline.
//!
//! - **API** (its own listener, [`api`]): providers upload blobs
//!   (`POST /v1/media`) into the JetStream object store ([`store`]) and
//!   download what their users were sent (`GET /v1/media/{id}`).
//! - **Stage** ([`media_requested`]): consumes
//!   `interop.v1.routing.media-requested` (durable consumer
//!   `media-transcoding`). Server-visible media is transcoded to what the
//!   recipient's app plays ([`transcode`]); end-to-end-encrypted media
//!   passes through byte for byte. The recipient is granted access
//!   ([`grants`]) and the message goes into its store; bad media becomes a
//!   FAILED receipt to the sender.
//!
//! Limits per type are in [`formats`]; docs/protocol.md ("Media") documents
//! the API, the limits and the error codes.
//!
//! The stage loop publishes in input order, so on one replica a long video
//! delays the media messages behind it (never text: it does not come
//! here). Few messages are taken at once ([`HANDLED_PER_SLOT`] per
//! transcoding slot) and the consumer's ack wait ([`ack_wait`]) outlasts the
//! worst case, so nothing is redelivered while it is being worked on.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

pub mod api;
pub mod args;
pub mod error;
pub mod formats;
pub mod grants;
pub mod media_requested;
pub mod metrics;
pub mod store;
pub mod transcode;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use interop_bus::subjects::{CONSUMER_MEDIA_TRANSCODING, ROUTING_MEDIA_REQUESTED, STREAM_MEDIA};
use interop_bus::{BusError, StageOptions, StreamSettings};
use interop_providers::Registry;
use interop_service::Deps;

pub use args::Args;
pub use error::MediaError;
pub use formats::AcceptFormats;
pub use store::StoreSettings;
pub use transcode::TranscodeSettings;

/// Configuration of media-transcoding.
pub struct Config {
    /// Where the media API listens (bound by the caller, so tests can use
    /// port 0).
    pub listener: TcpListener,
    /// Providers and their tokens (the API authenticates them).
    pub providers: Arc<Registry>,
    pub streams: StreamSettings,
    /// Retention and size of the media bucket (its replicas follow
    /// `streams.replicas`).
    pub store: StoreSettings,
    /// What recipients' apps play when their provider's registry record
    /// declares no media formats (`capabilities.media_formats`).
    pub accept: AcceptFormats,
    pub transcode: TranscodeSettings,
    /// Uploads in progress at once per replica.
    pub max_concurrent_uploads: usize,
    /// Longest pause while an upload body streams in.
    pub upload_idle_timeout: Duration,
    /// The failed-authentication throttle (the connection cap in it is not
    /// used here).
    pub auth_limits: interop_edge::EdgeLimits,
}

/// Uploads in progress at once per replica, by default.
pub const DEFAULT_MAX_UPLOADS: usize = 64;

impl Config {
    /// Defaults, with the given listener and providers.
    pub fn new(listener: TcpListener, providers: Arc<Registry>) -> Self {
        Self {
            listener,
            providers,
            streams: StreamSettings::default(),
            store: StoreSettings::default(),
            accept: AcceptFormats::default(),
            transcode: TranscodeSettings::default(),
            max_concurrent_uploads: DEFAULT_MAX_UPLOADS,
            upload_idle_timeout: Duration::from_secs(30),
            auth_limits: interop_edge::EdgeLimits::with_connections(usize::MAX),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Ffmpeg(#[from] transcode::ffmpeg::FfmpegSetupError),
    #[error("cannot serve the media API: {0}")]
    Serve(std::io::Error),
    #[error("provider registry: {0}")]
    Registry(#[from] interop_providers::store::StoreError),
}

/// Messages handled at once per transcoding slot.
pub const HANDLED_PER_SLOT: usize = 2;
/// Messages pulled per batch per transcoding slot.
pub const PULLED_PER_SLOT: usize = 1;

/// How long the stage's consumer waits for an ack before redelivering: the
/// worst case of a message waiting behind full slots, plus its own job.
pub fn ack_wait(t: &TranscodeSettings) -> Duration {
    // A job's time limit plus probing, the poster frame and storage.
    let job = t.av_timeout.max(t.image_timeout) + Duration::from_secs(40);
    // Jobs ahead of it (handled and pulled) run `concurrency` at a time.
    let waves = (HANDLED_PER_SLOT + PULLED_PER_SLOT + 1) as u32;
    job * waves + Duration::from_secs(60)
}

/// Runs media-transcoding until `shutdown`: the API and the stage.
pub async fn run(config: Config, deps: Deps, shutdown: CancellationToken) -> Result<(), Error> {
    let js = async_nats::jetstream::new(deps.nats.clone());
    interop_bus::ensure_streams(&js, &config.streams).await?;
    let store = store::MediaStore::open(&js, &config.store, config.streams.replicas).await?;
    let transcoder = transcode::Transcoder::new(config.transcode.clone());
    transcoder.check().await?;
    let grants = grants::Grants::new(deps.redis.clone(), config.store.retention);
    let metrics = metrics::MediaMetrics::register(&deps.metrics);

    // The shared durable consumer, with an ack wait that outlasts a
    // transcode (the stage loop cannot send progress acks).
    let stream = interop_bus::open_stream(&js, STREAM_MEDIA).await?;
    let mut consumer_config = interop_bus::streams::stage_consumer_config(
        CONSUMER_MEDIA_TRANSCODING,
        ROUTING_MEDIA_REQUESTED,
    );
    consumer_config.ack_wait = ack_wait(&config.transcode);
    let consumer = interop_bus::streams::create_consumer(&stream, consumer_config).await?;

    let slots = config.transcode.concurrency.max(1);
    let mut options = StageOptions::new("media-transcoding", &deps.metrics);
    options.concurrency = slots * HANDLED_PER_SLOT;
    options.batch = slots * PULLED_PER_SLOT;
    // The live registry, as ingest and delivery see it: rotations and
    // revocations apply to the media API too, and each recipient provider's
    // declared media formats to the stage.
    let providers = interop_providers::store::RegistryStore::new(js.clone())
        .seed_and_watch(&config.providers, shutdown.clone())
        .await?;
    let stage = media_requested::MediaRequested::new(
        store.clone(),
        grants.clone(),
        transcoder,
        config.accept.clone(),
        providers.clone(),
        metrics.clone(),
        config.store.retention,
    );
    let api = Arc::new(api::ApiState {
        providers,
        edge: {
            let edge = interop_edge::EdgeGuard::new(deps.redis.clone(), config.auth_limits);
            edge.register_metrics(&deps.metrics, "media-transcoding");
            edge
        },
        store,
        grants,
        metrics,
        accept: config.accept,
        uploads: Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_uploads.max(1),
        )),
        idle_timeout: config.upload_idle_timeout,
        retention: config.store.retention,
    });

    let addr: Option<SocketAddr> = config.listener.local_addr().ok();
    // Either half failing stops the other.
    let local = shutdown.child_token();
    let http = {
        let local = local.clone();
        async move {
            let stop = local.clone();
            // The provider endpoints' HTTP loop: a 10 s limit on each
            // request header, so slow-loris clients are dropped.
            let r = interop_edge::tls::serve(config.listener, None, api::router(api), stop).await;
            local.cancel();
            r
        }
    };
    let pipeline = {
        let local = local.clone();
        async move {
            let r =
                interop_bus::run_stage(js, consumer, Arc::new(stage), options, local.clone()).await;
            local.cancel();
            r
        }
    };
    deps.health.set_bound();
    info!(?addr, "media-transcoding is listening and consuming.");
    let (http, pipeline) = tokio::join!(http, pipeline);
    http.map_err(Error::Serve)?;
    pipeline?;
    Ok(())
}
