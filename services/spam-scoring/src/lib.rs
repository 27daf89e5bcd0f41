//! spam-scoring: scores every accepted message and passes the ones it allows
//! to routing.
//!
//! Consumes `interop.v1.ingest.accepted` (durable consumer `spam-scoring`),
//! publishes `interop.v1.spam-scoring.scored` with the verdict attached.
//! A rejected message is not passed on: its sender gets a FAILED receipt
//! with code `SPAM` in their store.
//!
//! The first scorer has one signal, `SENDER_RATE`: messages per sender per
//! minute, counted in Redis across all replicas.

mod handler;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use interop_bus::subjects::{CONSUMER_SPAM_SCORING, INGEST_ACCEPTED, STREAM_INGEST};
use interop_bus::{BusError, StageOptions, StreamSettings};
use interop_service::Deps;

pub use handler::Scorer;

/// Configuration of spam-scoring.
#[derive(Debug, Clone)]
pub struct Config {
    pub streams: StreamSettings,
    /// Messages a sender may send per minute before they are rejected.
    pub max_sender_per_minute: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            streams: StreamSettings::default(),
            max_sender_per_minute: 600,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Runs spam-scoring until `shutdown`.
pub async fn run(config: Config, deps: Deps, shutdown: CancellationToken) -> Result<(), Error> {
    let js = async_nats::jetstream::new(deps.nats.clone());
    interop_bus::ensure_streams(&js, &config.streams).await?;
    let consumer = interop_bus::streams::stage_consumer(
        &js,
        STREAM_INGEST,
        CONSUMER_SPAM_SCORING,
        INGEST_ACCEPTED,
    )
    .await?;
    let scorer = Arc::new(Scorer::new(
        deps.redis.clone(),
        config.max_sender_per_minute,
        &deps.metrics,
    ));
    deps.health.set_bound();
    info!("spam-scoring is consuming.");
    interop_bus::run_stage(
        js,
        consumer,
        scorer,
        StageOptions::new("spam-scoring", &deps.metrics),
        shutdown,
    )
    .await?;
    Ok(())
}
