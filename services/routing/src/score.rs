//! Asking spam-scoring for verdicts: core NATS request/reply on
//! `interop.v1.spam-scoring.score` (docs/adr/0015).
//!
//! Handlers call [`ScoreClient::score`] one message at a time; a batcher
//! task sends whatever has queued up meanwhile (up to [`MAX_BATCH`]) as one
//! `ScoreRequest`, so under load one request and one reply carry many
//! messages, and at low load a message waits for nothing. Several requests
//! may be in flight at once. No answer within the timeout (spam-scoring
//! down, or no replica yet), or a result that asks for it, is a retry: the
//! message stays in `INTEROP_INGEST` and comes back after the stage's delay.

use std::time::Duration;

use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use interop_bus::subjects::{SPAM_SCORE, SPAM_SCORE_MAX_MESSAGES};
use interop_bus::HandleError;
use interop_proto::v1::{PipelineMessage, ScoreReply, ScoreRequest, SpamVerdict, TraceContext};

/// Messages per score request at most (docs/adr/0015); must fit what
/// spam-scoring accepts ([`SPAM_SCORE_MAX_MESSAGES`]).
pub const MAX_BATCH: usize = 64;
const _: () = assert!(
    MAX_BATCH <= SPAM_SCORE_MAX_MESSAGES,
    "spam-scoring fails a score request longer than SPAM_SCORE_MAX_MESSAGES"
);

/// How long a score request may take before its messages are retried.
pub const SCORE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a message waits before it is tried again when it could not be
/// scored.
const RETRY_AFTER: Duration = Duration::from_millis(500);

type Waiter = oneshot::Sender<Result<SpamVerdict, HandleError>>;
type Queued = (PipelineMessage, TraceContext, Waiter);

/// A handle to the batcher; cheap to clone.
#[derive(Clone)]
pub struct ScoreClient {
    queue: mpsc::Sender<Queued>,
}

impl ScoreClient {
    /// Starts the batcher on `client`'s connection.
    pub fn start(client: async_nats::Client, timeout: Duration) -> Self {
        let (queue, mut rx) = mpsc::channel::<Queued>(4 * MAX_BATCH);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                tokio::spawn(request(client.clone(), batch, timeout));
            }
        });
        Self { queue }
    }

    /// The verdict on `pm` (its envelope set). spam-scoring's span joins the
    /// current span's trace.
    pub async fn score(&self, pm: PipelineMessage) -> Result<SpamVerdict, HandleError> {
        let (tx, rx) = oneshot::channel();
        let trace = TraceContext {
            fields: interop_bus::trace::current_fields(),
        };
        self.queue
            .send((pm, trace, tx))
            .await
            .map_err(|_| retry("the score batcher stopped".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(retry("the score request was dropped".into())))
    }
}

/// A message not scored now. spam-scoring scores every message alike and
/// fails one it can never score as permanent, so a message it cannot score
/// now (no answer, or its Redis down) is an outage, everybody's
/// ([`HandleError::Unavailable`]): the message keeps its place while it
/// lasts.
fn retry(reason: String) -> HandleError {
    HandleError::Unavailable {
        reason,
        after: RETRY_AFTER,
    }
}

async fn request(client: async_nats::Client, batch: Vec<Queued>, timeout: Duration) {
    let n = batch.len();
    let mut messages = Vec::with_capacity(n);
    let mut traces = Vec::with_capacity(n);
    let mut waiters = Vec::with_capacity(n);
    for (pm, trace, waiter) in batch {
        messages.push(pm);
        traces.push(trace);
        waiters.push(waiter);
    }
    let body = ScoreRequest { messages, traces }.encode_to_vec();
    let answer = tokio::time::timeout(timeout, client.request(SPAM_SCORE, body.into())).await;
    let results = match answer {
        Ok(Ok(reply)) => match ScoreReply::decode(reply.payload.as_ref()) {
            Ok(r) if r.results.len() == n => Ok(r.results),
            Ok(r) => Err(format!(
                "spam-scoring answered {} results for {n} messages",
                r.results.len()
            )),
            Err(e) => Err(format!("an undecodable score reply: {e}")),
        },
        Ok(Err(e)) => Err(format!("spam-scoring unavailable: {e}")),
        Err(_) => Err(format!("spam-scoring did not answer within {timeout:?}")),
    };
    match results {
        Ok(results) => {
            for (waiter, r) in waiters.into_iter().zip(results) {
                let outcome = if let Some(v) = r.verdict {
                    Ok(v)
                } else if !r.permanent_reason.is_empty() {
                    Err(HandleError::Permanent(r.permanent_reason))
                } else if !r.retry_reason.is_empty() {
                    Err(retry(r.retry_reason))
                } else {
                    Err(retry("spam-scoring gave no verdict".into()))
                };
                waiter.send(outcome).ok();
            }
        }
        Err(reason) => {
            debug!(%reason, messages = n, "A score request failed; its messages will be retried.");
            for waiter in waiters {
                waiter.send(Err(retry(reason.clone()))).ok();
            }
        }
    }
}
