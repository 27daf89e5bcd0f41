//! The loop every pipeline stage runs: pull a batch from the stage's durable
//! consumer, handle messages concurrently, publish their outputs **in input
//! order** with `Nats-Msg-Id`, and ack each input only after all its outputs
//! are stored (their publish acks arrived). A crash anywhere means
//! redelivery, never loss; `Nats-Msg-Id` makes the re-publish a no-op.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use std::pin::Pin;

use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn, Instrument};

use crate::handling::{HandleError, Outgoing};
use crate::metrics::StageMetrics;
use crate::BusError;
use interop_telemetry::metrics::Metrics;
use tokio::time::Instant;

/// What a handler sees of an input message.
pub struct Input<'a> {
    pub subject: &'a str,
    pub headers: Option<&'a HeaderMap>,
    pub payload: &'a Bytes,
    /// How many times this message has been delivered (1 = first time).
    pub delivered: i64,
    pub stream_sequence: u64,
}

/// The logic of one stage.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        input: Input<'_>,
    ) -> impl Future<Output = Result<Vec<Outgoing>, HandleError>> + Send;
}

/// Tuning of the stage loop.
#[derive(Clone)]
pub struct StageOptions {
    /// Stage name for logs and spans.
    pub name: &'static str,
    /// Messages handled at once (their Redis calls overlap); a batch
    /// counts as the messages it holds.
    pub concurrency: usize,
    /// Messages whose publish acks may be awaited at once.
    pub publish_window: usize,
    /// Messages requested from the server per pull.
    pub batch: usize,
    pub metrics: StageMetrics,
}

impl StageOptions {
    /// Defaults for stage `name`, registering its metrics.
    pub fn new(name: &'static str, metrics: &Metrics) -> Self {
        Self {
            name,
            // In flight = rate × time per message: routing's handler waits
            // for a score reply, Redis and publish acks (~25 ms each under
            // load here), so 64 capped a stage at ~2,500 msgs/s (ADR 15).
            concurrency: 512,
            publish_window: 1024,
            batch: 512,
            metrics: StageMetrics::register(metrics, name),
        }
    }
}

/// Runs the stage until `shutdown` is cancelled, then finishes the messages
/// in hand (publishes and acks them) and returns.
pub async fn run_stage<H: Handler>(
    js: jetstream::Context,
    consumer: PullConsumer,
    handler: Arc<H>,
    options: StageOptions,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    type Handled = (
        jetstream::Message,
        tracing::Span,
        Instant,
        Result<Vec<Outgoing>, HandleError>,
        // Its weight (see `weight`), taken when it came.
        usize,
    );
    let name = options.name;
    let metrics = options.metrics.clone();
    metrics.watch(
        js.client(),
        consumer.clone(),
        Duration::from_secs(5),
        shutdown.clone(),
    );
    while !shutdown.is_cancelled() {
        let messages = consumer
            .stream()
            .max_messages_per_batch(options.batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                warn!(stage = name, error = %e, "Cannot pull from the consumer; retrying.");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        // Handler futures, yielding in input order.
        let mut handling: FuturesOrdered<Pin<Box<dyn Future<Output = Handled> + Send>>> =
            FuturesOrdered::new();
        // Publish-ack waits and settles, in any order; each yields how many
        // publish acks it held.
        let mut settling: FuturesUnordered<Pin<Box<dyn Future<Output = usize> + Send>>> =
            FuturesUnordered::new();
        // Publish acks not awaited yet, at most ACK_BUDGET (see there).
        let mut unacked = 0usize;
        // Messages being handled, a batch counting as its messages
        // (`pipeline::BATCH_HEADER`): `concurrency` bounds the work in hand,
        // not the stream messages holding it.
        let mut in_hand = 0usize;
        let mut stopping = false;
        let mut source_done = false;
        loop {
            if (stopping || source_done) && handling.is_empty() && settling.is_empty() {
                break;
            }
            let can_pull = !stopping
                && !source_done
                && in_hand < options.concurrency
                && settling.len() < options.publish_window
                && unacked < ACK_BUDGET;
            tokio::select! {
                biased;
                Some((msg, span, started, result, weight)) = handling.next(), if !handling.is_empty() => {
                    in_hand -= weight;
                    // Outputs are published here, one message at a time, in
                    // input order. Room for their acks is made first by
                    // settling earlier messages (their acks are awaited only
                    // in `settling`, which is not polled meanwhile).
                    let outputs = result.as_ref().map_or(0, Vec::len);
                    while unacked + outputs > ACK_BUDGET {
                        match settling.next().await {
                            Some(n) => unacked -= n,
                            None => break,
                        }
                    }
                    let acks = publish_all(&js, &span, result).await;
                    let held = acks.as_ref().map_or(0, |a| a.len());
                    unacked += held;
                    let metrics = metrics.clone();
                    let js = js.clone();
                    settling.push(Box::pin(async move {
                        let outcome = match acks {
                            Ok(acks) => {
                                let n = acks.published;
                                let r = await_acks(&js, acks.unawaited).await;
                                if r.is_ok() {
                                    metrics.messages_out.inc_by(n);
                                }
                                r
                            }
                            Err(e) => Err(e),
                        };
                        settle(name, &msg, outcome, &metrics).await;
                        metrics.handle_seconds.observe(started.elapsed().as_secs_f64());
                        held
                    }));
                }
                Some(n) = settling.next(), if !settling.is_empty() => unacked -= n,
                () = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                }
                next = messages.next(), if can_pull => {
                    match next {
                        Some(Ok(msg)) => {
                            let weight = weight(&msg);
                            in_hand += weight;
                            let handler = handler.clone();
                            let metrics = metrics.clone();
                            handling.push_back(Box::pin(async move {
                                let started = Instant::now();
                                metrics.messages_in.inc();
                                let (delivered, seq) = msg
                                    .info()
                                    .map(|i| (i.delivered, i.stream_sequence))
                                    .unwrap_or((1, 0));
                                let span = tracing::info_span!("handle", otel.name = %format!("{name} handle"), stage = name, stream_seq = seq, delivered);
                                crate::trace::set_parent_from(&span, msg.headers.as_ref());
                                if delivered > 1 {
                                    metrics.redeliveries.inc();
                                    debug!(stage = name, seq, delivered, "Handling a redelivered message.");
                                }
                                let input = Input {
                                    subject: msg.subject.as_str(),
                                    headers: msg.headers.as_ref(),
                                    payload: &msg.payload,
                                    delivered,
                                    stream_sequence: seq,
                                };
                                let result = handler.handle(input).instrument(span.clone()).await;
                                (msg, span, started, result, weight)
                            }));
                        }
                        Some(Err(e)) => {
                            debug!(stage = name, error = %e, "Pull stream reported an error.");
                        }
                        None => source_done = true,
                    }
                }
            }
        }
    }
    Ok(())
}

/// How many messages `msg` holds: a batch's count, else 1.
fn weight(msg: &jetstream::Message) -> usize {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(crate::pipeline::BATCH_HEADER))
        .and_then(|v| v.as_str().parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, 1024)
}

/// Publish acks a stage leaves unawaited at most. async-nats gives each
/// JetStream context 5,000 (`max_ack_inflight`) and makes a publish wait
/// for one: a stage holding them all in futures it is not polling would
/// wait for itself. One input with more outputs than this (a batch of
/// group messages) publishes them in chunks, awaiting each chunk's acks.
pub const ACK_BUDGET: usize = 4096;

/// One input's outputs, published.
struct Published {
    /// How many.
    published: u64,
    /// The acks still to await (all of them, or the last chunk's), each
    /// with its message when it went into a recipient's store (to store it
    /// again, or tell its sender, should the store be full: `store.rs`).
    unawaited: Vec<Unacked>,
}

type Unacked = (jetstream::context::PublishAckFuture, Option<Outgoing>);

impl Published {
    fn len(&self) -> usize {
        self.unawaited.len()
    }
}

async fn publish_all(
    js: &jetstream::Context,
    span: &tracing::Span,
    result: Result<Vec<Outgoing>, HandleError>,
) -> Result<Published, HandleError> {
    let outputs = result?;
    let published = outputs.len() as u64;
    let mut acks = Vec::with_capacity(outputs.len().min(ACK_BUDGET));
    for out in outputs {
        if acks.len() == ACK_BUDGET {
            await_acks(js, std::mem::take(&mut acks)).await?;
        }
        let kept = crate::store::is_store_subject(&out.subject).then(|| out.clone());
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", out.msg_id.as_str());
        match &out.trace {
            Some(fields) => {
                for (k, v) in fields {
                    headers.insert(k.as_str(), v.as_str());
                }
            }
            None => span.in_scope(|| crate::trace::inject_current(&mut headers)),
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(out.payload)
            .headers(headers);
        let ack = js
            .send_publish(out.subject, publish)
            .await
            .map_err(|e| HandleError::Retry {
                reason: format!("publish failed: {e}"),
                after: Duration::from_secs(1),
            })?;
        acks.push((ack, kept));
    }
    Ok(Published {
        published,
        unawaited: acks,
    })
}

async fn await_acks(js: &jetstream::Context, acks: Vec<Unacked>) -> Result<(), HandleError> {
    for (ack, kept) in acks {
        match (ack.await, kept) {
            (Ok(_), _) => {}
            // A recipient's store at its count limit: room is made or the
            // sender told, never a retry that would meet the same refusal.
            (Err(e), Some(out)) if crate::store::is_full(&e) => store_full(js, out).await?,
            (Err(e), _) => {
                return Err(HandleError::Retry {
                    reason: format!("publish not acknowledged: {e}"),
                    after: Duration::from_secs(1),
                })
            }
        }
    }
    Ok(())
}

/// `out` was refused by its recipient's full store (docs/adr/0027): room is
/// made (what the recipient's devices acked goes) and it is stored again;
/// if there is none, its sender gets `FAILED`/`RECIPIENT_STORE_FULL`
/// (stored the same way), and a receipt or notice is dropped with a
/// warning. `Err` (retry the input) only when JetStream does not answer.
async fn store_full(js: &jetstream::Context, out: Outgoing) -> Result<(), HandleError> {
    let retry = |e: String| HandleError::Retry {
        reason: format!("a full store: {e}"),
        after: Duration::from_secs(1),
    };
    let mut out = out;
    // At most twice: the message, then the receipt telling its sender.
    for _ in 0..2 {
        let tell = crate::store::full_store_receipt(&out, None);
        // A message from a sender looks at the cursors every time; a
        // receipt or notice may go by a recent "no room" (store.rs).
        let freed = if tell.is_some() {
            crate::store::make_room_now(js, &out.subject).await
        } else {
            crate::store::make_room(js, &out.subject).await
        }
        .map_err(|e| retry(e.to_string()))?;
        // Again even when nothing was freed here: another publisher refused
        // at the same time may just have made room.
        match publish_one(js, &out).await {
            Ok(()) => {
                debug!(subject = %out.subject, freed, "Stored into a store that was full.");
                return Ok(());
            }
            Err(e) if crate::store::is_full(&*e) => {}
            Err(e) => return Err(retry(e.to_string())),
        }
        match tell {
            Some(receipt) => {
                warn!(subject = %out.subject, msg_id = %out.msg_id, "A recipient's store is full of undelivered messages; the sender is told (RECIPIENT_STORE_FULL).");
                match publish_one(js, &receipt).await {
                    Ok(()) => return Ok(()),
                    Err(e) if crate::store::is_full(&*e) => out = receipt,
                    Err(e) => return Err(retry(e.to_string())),
                }
            }
            None => break,
        }
    }
    warn!(subject = %out.subject, msg_id = %out.msg_id, "Dropped a receipt or notice: its recipient's store is full of undelivered messages.");
    Ok(())
}

/// Publishes `out` and awaits its ack.
async fn publish_one(
    js: &jetstream::Context,
    out: &Outgoing,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", out.msg_id.as_str());
    for (k, v) in out.trace.iter().flatten() {
        headers.insert(k.as_str(), v.as_str());
    }
    let publish = jetstream::message::PublishMessage::build()
        .payload(out.payload.clone())
        .headers(headers);
    js.send_publish(out.subject.clone(), publish).await?.await?;
    Ok(())
}

async fn settle(
    name: &str,
    msg: &jetstream::Message,
    outcome: Result<(), HandleError>,
    metrics: &StageMetrics,
) {
    let (seq, delivered) = msg
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 1));
    let kind = match outcome {
        Ok(()) => AckKind::Ack,
        Err(HandleError::Retry { reason, after }) => {
            metrics.retries.inc();
            let after = retry_delay(after, delivered);
            warn!(stage = name, seq, delivered, ?after, %reason, "Will retry the message.");
            AckKind::Nak(Some(after))
        }
        Err(HandleError::Permanent(reason)) => {
            metrics.dead_lettered.inc();
            error!(stage = name, seq, %reason, "Dead-lettered a message that can never be handled.");
            AckKind::Term
        }
    };
    if let Err(e) = msg.ack_with(kind).await {
        // The server redelivers after ack_wait; handlers are idempotent.
        debug!(stage = name, seq, error = %e, "Ack not sent; the message will be redelivered.");
    }
}

/// The longest wait between two tries of a message that could not be
/// handled now.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// How long a message waits before its next try: the handler's delay,
/// doubled with each delivery, at most [`MAX_RETRY_DELAY`]. A dependency
/// that stays down (Redis, spam-scoring) costs a message a try every 30 s,
/// for as long as it takes: transient failures never dead-letter it (the
/// stage consumers have no delivery limit; see `streams::MAX_DELIVER`).
pub fn retry_delay(after: Duration, delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    after
        .saturating_mul(1u32 << doublings)
        .min(MAX_RETRY_DELAY)
        .max(after.min(MAX_RETRY_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_thirty_seconds() {
        let half = Duration::from_millis(500);
        assert_eq!(retry_delay(half, 1), half);
        assert_eq!(retry_delay(half, 2), Duration::from_secs(1));
        assert_eq!(retry_delay(half, 3), Duration::from_secs(2));
        assert_eq!(retry_delay(half, 7), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(half, 1_000_000), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(half, 0), half);
        assert_eq!(retry_delay(Duration::from_secs(60), 1), MAX_RETRY_DELAY);
    }
}
