//! routing: has each accepted message scored, and decides where it goes.
//!
//! Consumes `interop.v1.ingest.accepted` (durable consumer `routing`): one
//! message, or a batch of them (header `Interop-Batch`, docs/adr/0019),
//! each routed as if it came alone. For each message:
//! 0. spam-scoring's verdict, asked over core NATS request/reply
//!    ([`score`]; docs/adr/0015): REJECT answers the sender with `SPAM`.
//! 1. Is the recipient reachable ([`Router::admit`], the per-recipient
//!    admission path)? They must have opted in and allow the sender's
//!    provider (the consent registry in Redis), and not have declined or
//!    blocked the sender. If not, the sender gets a FAILED receipt with
//!    `RECIPIENT_UNAVAILABLE` — the same code ingest gives for a user who does
//!    not exist. A sender the recipient has not accepted is a message
//!    request (`Route.inbox = INBOX_REQUESTS`). The spam verdict then may
//!    file it as a request, hold it in the quarantine, or refuse it as spam.
//! 2. Media goes to media-transcoding (`interop.v1.routing.media-requested`);
//!    everything else goes straight into the recipient's store
//!    (`interop.v1.delivery.queued.<key>`), where delivery sessions read it
//!    whether the recipient is online now or connects later.
//! 3. A group message (`group_id`) is fanned out: one copy per member, each
//!    admitted like a one-to-one message (see `group.rs`).

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

mod args;
mod group;
mod handler;
mod router;
pub mod score;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use interop_bus::subjects::{CONSUMER_ROUTING, INGEST_ACCEPTED, STREAM_INGEST};
use interop_bus::{BusError, StageOptions, StreamSettings};
use interop_service::Deps;

pub use args::Args;
pub use router::{place, Placement, Router};

/// Configuration of routing.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub streams: StreamSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    State(#[from] interop_state::StateError),
}

/// Runs routing until `shutdown`.
pub async fn run(config: Config, deps: Deps, shutdown: CancellationToken) -> Result<(), Error> {
    let js = async_nats::jetstream::new(deps.nats.clone());
    interop_bus::ensure_streams(&js, &config.streams).await?;
    let consumer =
        interop_bus::streams::stage_consumer(&js, STREAM_INGEST, CONSUMER_ROUTING, INGEST_ACCEPTED)
            .await?;
    let scorer = score::ScoreClient::start(deps.nats.clone(), score::SCORE_TIMEOUT);
    let mut options = StageOptions::new("routing", &deps.metrics);
    // A restarted routing first routes what a killed one had pulled, so a
    // sender's messages keep their order (docs/adr/0030); redeliveries of
    // them are stored once (`Nats-Msg-Id`).
    options.take_over_pending = true;
    let records = interop_state::Records::open(js.clone(), deps.redis.clone()).await?;
    let router = Arc::new(Router::new(
        records,
        deps.nats.clone(),
        scorer,
        &deps.metrics,
        options.metrics.dead_lettered.clone(),
    ));
    deps.health.set_bound();
    info!("routing is consuming.");
    interop_bus::run_stage(js, consumer, router, options, shutdown).await?;
    Ok(())
}
