//! media-transcoding: processes media before delivery.
//!
//! Consumes `interop.v1.routing.media-requested` (durable consumer
//! `media-transcoding`) and writes each message into its recipient's store.
//! Until the media issue lands, media passes through unchanged: the
//! envelope's media reference is forwarded as it came.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use interop_bus::subjects::{CONSUMER_MEDIA_TRANSCODING, ROUTING_MEDIA_REQUESTED, STREAM_MEDIA};
use interop_bus::{
    pipeline, BusError, HandleError, Handler, Input, Outgoing, StageOptions, StreamSettings,
};
use interop_service::Deps;
use interop_telemetry::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Configuration of media-transcoding.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub streams: StreamSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Handler of `interop.v1.routing.media-requested`: input `PipelineMessage`
/// with media content; output the same message on
/// `interop.v1.delivery.queued.<key>` (Nats-Msg-Id = server message id).
pub struct PassThrough {
    transcodes: Family<TranscodeLabel, Counter>,
}

/// Kind of media work and its result (fixed sets: bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TranscodeLabel {
    pub kind: &'static str,
    pub result: &'static str,
}

impl PassThrough {
    pub fn new(metrics: &Metrics) -> Self {
        let transcodes = Family::<TranscodeLabel, Counter>::default();
        metrics.register(
            "interop_media_transcoding_transcodes",
            "Media processed, by kind and result.",
            transcodes.clone(),
        );
        Self { transcodes }
    }
}

impl Handler for PassThrough {
    async fn handle(&self, input: Input<'_>) -> Result<Vec<Outgoing>, HandleError> {
        let pm = pipeline::decode(input.payload)?;
        self.transcodes
            .get_or_create(&TranscodeLabel {
                kind: "passthrough",
                result: "ok",
            })
            .inc();
        Ok(vec![pipeline::to_recipient_store(&pm)])
    }
}

/// Runs media-transcoding until `shutdown`.
pub async fn run(config: Config, deps: Deps, shutdown: CancellationToken) -> Result<(), Error> {
    let js = async_nats::jetstream::new(deps.nats.clone());
    interop_bus::ensure_streams(&js, &config.streams).await?;
    let consumer = interop_bus::streams::stage_consumer(
        &js,
        STREAM_MEDIA,
        CONSUMER_MEDIA_TRANSCODING,
        ROUTING_MEDIA_REQUESTED,
    )
    .await?;
    deps.health.set_bound();
    info!("media-transcoding is consuming.");
    interop_bus::run_stage(
        js,
        consumer,
        Arc::new(PassThrough::new(&deps.metrics)),
        StageOptions::new("media-transcoding", &deps.metrics),
        shutdown,
    )
    .await?;
    Ok(())
}
