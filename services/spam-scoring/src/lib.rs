//! spam-scoring: scores every accepted message for routing.
//!
//! Routing, which consumes `interop.v1.ingest.accepted`, asks for verdicts
//! over core NATS request/reply (`interop.v1.spam-scoring.score`, queue
//! group `spam-scoring`, batches of messages; [`serve`], docs/adr/0015) and
//! acts on them: a rejected message is not delivered and its sender gets a
//! FAILED receipt with code `SPAM`.
//!
//! Signals ([`signals`]; weights and thresholds in [`policy::Policy`], all
//! documented in docs/spam.md): `SENDER_RATE`, `STRANGER_FANOUT`,
//! `FIRST_CONTACT_RATIO`, `NEW_ACCOUNT`, `IDENTICAL_PAYLOAD`,
//! `SENDER_REPUTATION`, `PROVIDER_REPUTATION`, and for server-visible text
//! `CONTENT_CLASSIFIER` and `SUSPICIOUS_LINK`. The score is the sum of the
//! weights that fired; the verdict (allow, request, quarantine, reject) is
//! the highest threshold it reaches, and records every signal that fired.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

pub mod args;
mod handler;
pub mod policy;
pub mod serve;
pub mod signals;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use interop_bus::{BusError, StreamSettings};
use interop_service::Deps;

pub use args::Args;
pub use handler::{ScoreError, Scorer};
pub use policy::Policy;

/// Configuration of spam-scoring.
#[derive(Clone)]
pub struct Config {
    pub streams: StreamSettings,
    /// Every signal's threshold and weight, and the verdict thresholds.
    pub policy: Policy,
    /// The content classifier for server-visible text.
    pub model: Arc<interop_spam_classifier::Model>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            streams: StreamSettings::default(),
            policy: Policy::default(),
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
    #[error("cannot subscribe to score requests: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// Runs spam-scoring until `shutdown`.
pub async fn run(config: Config, deps: Deps, shutdown: CancellationToken) -> Result<(), Error> {
    let js = async_nats::jetstream::new(deps.nats.clone());
    // The streams are made here too, so any start order works (routing
    // and ingest need them; spam-scoring itself reads none).
    interop_bus::ensure_streams(&js, &config.streams).await?;
    let scorer = Arc::new(Scorer::new(
        deps.redis.clone(),
        Arc::new(config.policy.clone()),
        config.model.clone(),
        &deps.metrics,
    ));
    deps.health.set_bound();
    info!("spam-scoring is answering score requests.");
    let metrics = serve::ServeMetrics::register(&deps.metrics);
    serve::serve(deps.nats.clone(), scorer, metrics, shutdown).await?;
    Ok(())
}
