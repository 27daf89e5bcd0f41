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
pub struct PassThrough;

impl Handler for PassThrough {
    async fn handle(&self, input: Input<'_>) -> Result<Vec<Outgoing>, HandleError> {
        let pm = pipeline::decode(input.payload)?;
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
        Arc::new(PassThrough),
        StageOptions::new("media-transcoding"),
        shutdown,
    )
    .await?;
    Ok(())
}
