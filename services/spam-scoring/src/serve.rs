//! Answering score requests: core NATS request/reply on
//! `interop.v1.spam-scoring.score` in the queue group `spam-scoring`, so
//! every replica takes a share (docs/adr/0015).
//!
//! A request is a `ScoreRequest` of at most [`SPAM_SCORE_MAX_MESSAGES`]
//! messages (the subject's contract, beside it in `interop_bus::subjects`);
//! the reply a `ScoreReply` with one result per message, in order. The
//! messages of a request are counted in one Redis script call
//! ([`Scorer::score_batch`]; issue 22: one call per batch, not per
//! message), each seeing the counters as the messages before it in the
//! request left them. Nothing here is durable: the messages stay in
//! `INTEROP_INGEST` until routing has acted on their verdicts, and an
//! unanswered request is retried by routing.

use std::sync::Arc;

use futures_util::StreamExt;
use prost::Message as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use interop_bus::subjects::{QUEUE_SPAM_SCORING, SPAM_SCORE, SPAM_SCORE_MAX_MESSAGES};
use interop_proto::v1::{ScoreReply, ScoreRequest, ScoreResult};
use interop_telemetry::metrics::Metrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::handler::{ScoreError, Scorer};

/// Requests one replica answers at once; more wait in the subscription.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;

/// Scores what `request` (an encoded `ScoreRequest`) asks for.
pub async fn answer(scorer: &Scorer, request: &[u8]) -> ScoreReply {
    let request = match ScoreRequest::decode(request) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "An undecodable score request; answering with no results.");
            return ScoreReply::default();
        }
    };
    if request.messages.len() > SPAM_SCORE_MAX_MESSAGES {
        let reason = format!(
            "a score request carries at most {SPAM_SCORE_MAX_MESSAGES} messages, not {}",
            request.messages.len()
        );
        return ScoreReply {
            results: request
                .messages
                .iter()
                .map(|_| ScoreResult {
                    permanent_reason: reason.clone(),
                    ..Default::default()
                })
                .collect(),
        };
    }
    // One span per message, in its own trace, open while the request is
    // answered.
    let spans: Vec<tracing::Span> = (0..request.messages.len())
        .map(|i| {
            let span = tracing::info_span!("score", otel.name = "spam-scoring score");
            if let Some(t) = request.traces.get(i) {
                interop_bus::trace::set_parent_from_fields(&span, &t.fields);
            }
            span
        })
        .collect();
    let scored = scorer.score_batch(&request.messages, &spans).await;
    ScoreReply {
        results: scored
            .into_iter()
            .map(|r| match r {
                Ok(verdict) => ScoreResult {
                    verdict: Some(verdict),
                    ..Default::default()
                },
                Err(ScoreError::Retry(reason)) => ScoreResult {
                    retry_reason: reason,
                    ..Default::default()
                },
                Err(ScoreError::Permanent(reason)) => ScoreResult {
                    permanent_reason: reason,
                    ..Default::default()
                },
            })
            .collect(),
    }
}

/// Counters of the request/reply side.
#[derive(Clone)]
pub struct ServeMetrics {
    /// Score requests answered.
    pub requests: Counter,
    /// Messages scored (or refused) in them.
    pub messages: Counter,
    /// Time to answer one request.
    pub request_seconds: Histogram,
}

impl ServeMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self {
            requests: Counter::default(),
            messages: Counter::default(),
            request_seconds: interop_telemetry::metrics::latency_histogram(),
        };
        metrics.register(
            "interop_spam_scoring_requests",
            "Score requests answered (each carries one or more messages).",
            m.requests.clone(),
        );
        metrics.register(
            "interop_spam_scoring_messages",
            "Messages in the score requests answered.",
            m.messages.clone(),
        );
        metrics.register(
            "interop_spam_scoring_request_seconds",
            "Time to answer one score request.",
            m.request_seconds.clone(),
        );
        m
    }
}

/// Answers score requests until `shutdown`, then lets the requests in hand
/// finish.
pub async fn serve(
    client: async_nats::Client,
    scorer: Arc<Scorer>,
    metrics: ServeMetrics,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = client
        .queue_subscribe(SPAM_SCORE, QUEUE_SPAM_SCORING.to_owned())
        .await?;
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let request = tokio::select! {
            () = shutdown.cancelled() => break,
            r = requests.next() => match r {
                Some(r) => r,
                None => break,
            },
        };
        let Some(reply_to) = request.reply.clone() else {
            debug!("A score request without a reply subject; ignored.");
            continue;
        };
        let scorer = scorer.clone();
        let client = client.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let reply = answer(&scorer, &request.payload).await;
            metrics.requests.inc();
            metrics.messages.inc_by(reply.results.len() as u64);
            metrics
                .request_seconds
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = client.publish(reply_to, reply.encode_to_vec().into()).await {
                debug!(error = %e, "A score reply was not sent; routing will retry.");
            }
            drop(permit);
        });
    }
    requests.unsubscribe().await.ok();
    // The requests in hand finish (each holds a permit).
    let _all = slots
        .acquire_many(MAX_CONCURRENT_REQUESTS as u32)
        .await
        .expect("the semaphore is never closed");
    client.flush().await.ok();
    Ok(())
}
