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

use crate::BusError;

/// One message a handler wants published.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    /// Deduplication id (`Nats-Msg-Id`); derive it from the input so a
    /// redelivered input publishes the same id.
    pub msg_id: String,
    pub payload: Bytes,
}

/// Why a handler could not finish a message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// A dependency is down or slow: the message is redelivered after `after`.
    #[error("retry later: {reason}")]
    Retry { reason: String, after: Duration },
    /// The message can never be handled (e.g. it does not decode): it is
    /// terminated and logged as dead-lettered.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

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
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// Stage name for logs and spans.
    pub name: &'static str,
    /// Messages handled at once (their Redis calls overlap).
    pub concurrency: usize,
    /// Messages whose publish acks may be awaited at once.
    pub publish_window: usize,
    /// Messages requested from the server per pull.
    pub batch: usize,
}

impl StageOptions {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            concurrency: 64,
            publish_window: 1024,
            batch: 512,
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
        Result<Vec<Outgoing>, HandleError>,
    );
    let name = options.name;
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
        // Publish-ack waits and settles, in any order.
        let mut settling: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>> =
            FuturesUnordered::new();
        let mut stopping = false;
        let mut source_done = false;
        loop {
            if (stopping || source_done) && handling.is_empty() && settling.is_empty() {
                break;
            }
            let can_pull = !stopping
                && !source_done
                && handling.len() < options.concurrency
                && settling.len() < options.publish_window;
            tokio::select! {
                biased;
                Some((msg, span, result)) = handling.next(), if !handling.is_empty() => {
                    // Outputs are published here, one message at a time, in
                    // input order.
                    let acks = publish_all(&js, &span, result).await;
                    settling.push(Box::pin(async move {
                        let outcome = match acks {
                            Ok(acks) => await_acks(acks).await,
                            Err(e) => Err(e),
                        };
                        settle(name, &msg, outcome).await;
                    }));
                }
                Some(()) = settling.next(), if !settling.is_empty() => {}
                () = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                }
                next = messages.next(), if can_pull => {
                    match next {
                        Some(Ok(msg)) => {
                            let handler = handler.clone();
                            handling.push_back(Box::pin(async move {
                                let (delivered, seq) = msg
                                    .info()
                                    .map(|i| (i.delivered, i.stream_sequence))
                                    .unwrap_or((1, 0));
                                let span = tracing::info_span!("handle", stage = name, stream_seq = seq, delivered);
                                crate::trace::set_parent_from(&span, msg.headers.as_ref());
                                if delivered > 1 {
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
                                (msg, span, result)
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

async fn publish_all(
    js: &jetstream::Context,
    span: &tracing::Span,
    result: Result<Vec<Outgoing>, HandleError>,
) -> Result<Vec<jetstream::context::PublishAckFuture>, HandleError> {
    let outputs = result?;
    let mut acks = Vec::with_capacity(outputs.len());
    for out in outputs {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", out.msg_id.as_str());
        span.in_scope(|| crate::trace::inject_current(&mut headers));
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
        acks.push(ack);
    }
    Ok(acks)
}

async fn await_acks(acks: Vec<jetstream::context::PublishAckFuture>) -> Result<(), HandleError> {
    for ack in acks {
        ack.await.map_err(|e| HandleError::Retry {
            reason: format!("publish not acknowledged: {e}"),
            after: Duration::from_secs(1),
        })?;
    }
    Ok(())
}

async fn settle(name: &str, msg: &jetstream::Message, outcome: Result<(), HandleError>) {
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let kind = match outcome {
        Ok(()) => AckKind::Ack,
        Err(HandleError::Retry { reason, after }) => {
            warn!(stage = name, seq, %reason, "Will retry the message.");
            AckKind::Nak(Some(after))
        }
        Err(HandleError::Permanent(reason)) => {
            error!(stage = name, seq, %reason, "Dead-lettered a message that can never be handled.");
            AckKind::Term
        }
    };
    if let Err(e) = msg.ack_with(kind).await {
        // The server redelivers after ack_wait; handlers are idempotent.
        debug!(stage = name, seq, error = %e, "Ack not sent; the message will be redelivered.");
    }
}
