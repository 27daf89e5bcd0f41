//! spam-scoring: scores every accepted message and passes the ones it allows
//! to routing.
//!
//! Consumes `interop.v1.ingest.accepted` (durable consumer `spam-scoring`),
//! publishes `interop.v1.spam-scoring.scored` with the verdict attached.
//! A rejected message is not passed on: its sender gets a FAILED receipt
//! with code `SPAM` in their store.
//!
//! Signals so far: `SENDER_RATE` (messages per sender per minute, counted in
//! Redis across all replicas; over the limit the message is rejected) and,
//! for server-visible text, `CONTENT_CLASSIFIER` (the SMS-spam model of
//! `interop-spam-classifier`, with the features that weighed most). The
//! verdict policy that acts on content (message requests, quarantine) comes
//! with the consent issue; today the classifier's signal and score are
//! recorded in the verdict for explanation and metrics.

mod handler;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use interop_bus::subjects::{CONSUMER_SPAM_SCORING, INGEST_ACCEPTED, STREAM_INGEST};
use interop_bus::{BusError, StageOptions, StreamSettings};
use interop_service::Deps;

pub use handler::{content_signal, Scorer};

/// Configuration of spam-scoring.
#[derive(Clone)]
pub struct Config {
    pub streams: StreamSettings,
    /// Messages a sender may send per minute before they are rejected.
    pub max_sender_per_minute: u64,
    /// The content classifier for server-visible text.
    pub model: Arc<interop_spam_classifier::Model>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            streams: StreamSettings::default(),
            max_sender_per_minute: 600,
            // The embedded model is checked by the classifier's tests.
            model: Arc::new(
                interop_spam_classifier::embedded_model().expect("the embedded model decodes"),
            ),
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
        config.model.clone(),
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
