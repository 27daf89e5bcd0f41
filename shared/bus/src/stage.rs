//! The loop every pipeline stage runs: pull a batch from the stage's durable
//! consumer, handle messages concurrently, publish their outputs **in input
//! order** with `Nats-Msg-Id`, and ack each input only after all its outputs
//! are stored (their publish acks arrived). A crash anywhere means
//! redelivery, never loss; `Nats-Msg-Id` makes the re-publish a no-op.
//!
//! **Order** (docs/adr/0030). What goes out keeps the input order through
//! faults, too:
//! - a message whose handler must retry is retried *in place* (it keeps
//!   its position; the outputs of the messages behind it wait), as long as
//!   the failure is everybody's (a dependency down, or coming back). Only
//!   a message that keeps failing for [`HOLD_FOR`] while others are
//!   handled is let go: it is nak'd with a delay, as before, so it cannot stall the
//!   stage for good. A failure the handler calls an outage
//!   ([`HandleError::Unavailable`]) is held until the dependency is back
//!   for others (or [`HOLD_OUTAGE_FOR`]): receipts, which need no Redis,
//!   pass during a Redis outage and must not get messages let go;
//! - a publish that was not acknowledged is published again in place, after
//!   every input before it is settled, so re-publishes keep input order too;
//! - on shutdown, what was pulled and not taken in hand is nak'd at once,
//!   and a retry in progress is nak'd without delay: another instance takes
//!   it now, not after `ack_wait`;
//! - with [`StageOptions::take_over_pending`], a starting instance first
//!   handles the messages the consumer still has pending (pulled by an
//!   instance that may have died), in stream order, before pulling new
//!   ones, and does so again after its NATS connection came back (what was
//!   delivered while it went down never arrived); they come back later as
//!   redeliveries whose outputs JetStream drops as duplicates.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;

use futures_util::future::{FutureExt, Shared};
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

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
    /// At start, handle what the consumer has pending (pulled, not acked)
    /// before pulling: a killed instance's messages then keep their place
    /// instead of coming back after `ack_wait`. Handlers must be idempotent
    /// (outputs with `Nats-Msg-Id`); another live instance's pending
    /// messages are handled twice.
    pub take_over_pending: bool,
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
            take_over_pending: false,
            metrics: StageMetrics::register(metrics, name),
        }
    }
}

/// How long a message that fails while other messages are handled is
/// retried in place before it is let go (nak'd with a delay, behind later
/// messages) so that it does not hold the stage up for good: its failure is
/// its own, not a dependency's. Long enough for a dependency coming back
/// (a Redis reconnect fails some calls and not others for seconds). A
/// message let go once is let go at its next failure.
///
/// A message failing on an outage ([`HandleError::Unavailable`]) is held
/// longer: messages that need less pass meanwhile (receipts need no Redis),
/// so others passing says nothing of it. It is let go `HOLD_FOR` after
/// messages that had failed as unavailable started to pass again (the
/// dependency is back for them, so the failure is now its own), or after
/// [`HOLD_OUTAGE_FOR`] while any message passes: an outage up to that long
/// (Redis loading a large data set) reorders nothing.
pub const HOLD_FOR: Duration = Duration::from_secs(10);

/// The longest a message failing on an outage is held in place while other
/// messages pass (see [`HOLD_FOR`]): the bound on how long a failure that
/// only looks like an outage can stall the stage.
pub const HOLD_OUTAGE_FOR: Duration = Duration::from_secs(600);

/// The longest wait between two tries of a message retried in place.
pub const HOLD_MAX_DELAY: Duration = Duration::from_secs(5);

/// How long one pull request waits for messages (the pull stream renews
/// them): after a reconnect the take-over, and at a stop the naks, wait
/// this long for a request the server may still answer.
pub const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// A stopping stage ends its pull stream this long after the stop, and
/// naks what it brought (what the client had buffered).
const RETURN_IDLE: Duration = Duration::from_millis(100);

/// At most this many stream sequences are looked at when taking over the
/// consumer's pending messages at start.
const TAKE_OVER_MAX: u64 = 65_536;

/// The stream sequences a take-over looks at, given the consumer's ack
/// floor and the last sequence it delivered: everything in between, or the
/// latest [`TAKE_OVER_MAX`] of it. The latest, not the earliest: what a
/// dead instance had in hand is what was delivered last, while an ack floor
/// far behind is one message that is stuck. (After nats-server 2.9 was
/// killed, its consumer came back with an older state that held a message
/// the stream had already removed: the floor stayed there, a take-over five
/// minutes later looked only at the 65,536 sequences above it, missed the
/// 43 messages actually pending, and those came back 30 s later, after
/// later ones.)
fn take_over_range(ack_floor: u64, delivered: u64) -> (u64, u64) {
    let first = (ack_floor + 1).max(delivered.saturating_sub(TAKE_OVER_MAX - 1));
    (first, delivered)
}

/// What the stage's handlings know of each other.
#[derive(Default)]
struct Tally {
    /// Messages handled successfully (by this instance): tells a message
    /// failing alone from a dependency failing everybody.
    successes: AtomicU64,
    /// Of those, messages that had failed as unavailable first: the
    /// dependency came back for them.
    recovered: AtomicU64,
    /// Stream sequences of messages let go (`HOLD_FOR`), the latest ones.
    let_go: std::sync::Mutex<std::collections::HashSet<u64>>,
}

impl Tally {
    fn was_let_go(&self, seq: u64) -> bool {
        self.let_go.lock().is_ok_and(|l| l.contains(&seq))
    }

    fn remember_let_go(&self, seq: u64) {
        if let Ok(mut l) = self.let_go.lock() {
            if l.len() >= 4096 {
                l.clear();
            }
            l.insert(seq);
        }
    }
}

/// Settled once an input, and every input before it, is settled.
type Settled = Shared<oneshot::Receiver<()>>;

/// Runs the stage until `shutdown` is cancelled, then finishes the messages
/// in hand (publishes and acks them), naks what it pulled and did not take
/// in hand, and returns.
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
    let successes = Arc::new(Tally::default());
    // Reconnects of the NATS client: messages the server delivered while the
    // connection was going down never arrived, and would come back only
    // after `ack_wait`; a stage that takes over pending messages does so
    // again after each reconnect.
    let stats = js.client().statistics();
    let mut connects = stats.connects.load(Ordering::Relaxed);
    if options.take_over_pending {
        take_over_pending(&js, &consumer, &*handler, &options, &successes, &shutdown).await;
    }
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
    // Inputs whose outputs are being published again: nothing after them
    // is published until they are settled.
    let republishing = Arc::new(AtomicUsize::new(0));
    // The pull request out, if any.
    let mut pull: Option<jetstream::consumer::pull::Stream> = None;
    let mut next_pull = Instant::now();
    // Pulled after the stop: nak'd once the pull request is over (before,
    // the server would hand them straight back to that same request).
    let mut returned: Vec<jetstream::Message> = Vec::new();
    // Messages in hand to be retried when the stop came: nak'd with those.
    let handed_back: Arc<std::sync::Mutex<Vec<jetstream::Message>>> = Arc::default();
    let mut before: Option<Settled> = None;
    // The client's connects when outputs were last published.
    let mut published_at = connects;
    let mut reconnects = tokio::time::interval(Duration::from_millis(250));
    reconnects.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopped_at = Instant::now();
    loop {
        let stopping = shutdown.is_cancelled();
        if !stopping {
            stopped_at = Instant::now();
        }
        if stopping && pull.is_none() && handling.is_empty() && settling.is_empty() {
            // Not before the ended stream's last pull request has expired:
            // the server would hand a nak'd message straight back to it,
            // into the void, until ack_wait.
            tokio::time::sleep_until(stopped_at + PULL_EXPIRES).await;
            // In stream order: the server hands them out again in the order
            // of the naks.
            if let Ok(mut back) = handed_back.lock() {
                returned.append(&mut back);
            }
            returned.sort_by_key(|m| m.info().map(|i| i.stream_sequence).unwrap_or(0));
            if !returned.is_empty() {
                debug!(
                    stage = name,
                    count = returned.len(),
                    "Returning what was pulled and not done."
                );
            }
            for msg in returned.drain(..) {
                if let Err(e) = msg.ack_with(AckKind::Nak(None)).await {
                    debug!(stage = name, error = %e, "Nak not sent; the message will be redelivered after ack_wait.");
                }
            }
            break;
        }
        if pull.is_none() && !stopping && Instant::now() >= next_pull {
            let now = stats.connects.load(Ordering::Relaxed);
            if now != connects {
                connects = now;
                if options.take_over_pending {
                    take_over_pending(&js, &consumer, &*handler, &options, &successes, &shutdown)
                        .await;
                }
            }
            match consumer
                .stream()
                .max_messages_per_batch(options.batch)
                .expires(PULL_EXPIRES)
                .heartbeat(PULL_EXPIRES / 2)
                .messages()
                .await
            {
                Ok(b) => pull = Some(b),
                Err(e) => {
                    warn!(stage = name, error = %e, "Cannot pull from the consumer; retrying.");
                    next_pull = Instant::now() + Duration::from_secs(1);
                }
            }
        }
        let can_pull = pull.is_some()
            && (stopping
                || (in_hand < options.concurrency
                    && settling.len() < options.publish_window
                    && unacked < ACK_BUDGET));
        tokio::select! {
            biased;
            Some((msg, span, started, result, weight)) = handling.next(), if !handling.is_empty() => {
                in_hand -= weight;
                // An input before this one is being published again: it
                // goes first (input order), so everything before this one
                // is settled first.
                // So does one whose publish may have been lost with the
                // connection (written to it before it went down, while later
                // ones wait in the client's buffer): while NATS is away, and
                // after it came back, everything before is settled first.
                let connected = js.client().connection_state() == async_nats::connection::State::Connected;
                let now = stats.connects.load(Ordering::Relaxed);
                if republishing.load(Ordering::Acquire) > 0 || !connected || now != published_at {
                    while let Some(n) = settling.next().await {
                        unacked -= n;
                    }
                    published_at = now;
                }
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
                let published = match result {
                    Ok(outputs) => {
                        let first = publish_all(&js, &span, &outputs).await;
                        Ok((outputs, first))
                    }
                    Err(e) => Err(e),
                };
                let held = match &published {
                    Ok((_, Ok(acks))) => acks.len(),
                    _ => 0,
                };
                unacked += held;
                let (done, settled) = oneshot::channel();
                let previous = before.replace(settled.shared());
                let metrics = metrics.clone();
                let js = js.clone();
                let shutdown = shutdown.clone();
                let republishing = republishing.clone();
                let handed_back = handed_back.clone();
                settling.push(Box::pin(async move {
                    let outcome = match published {
                        // The handler's own failure, already retried in place.
                        Err(e) => Err(e),
                        Ok((outputs, first)) => {
                            let first = match first {
                                Ok(acks) => await_acks(acks.unawaited, &outputs).await,
                                Err(e) => Err(e),
                            };
                            let outcome = match first {
                                Ok(()) => Ok(()),
                                Err(e) => {
                                    republishing.fetch_add(1, Ordering::AcqRel);
                                    let r = publish_again(&js, &msg, &outputs, e, previous.clone(), &shutdown, name, &metrics).await;
                                    republishing.fetch_sub(1, Ordering::AcqRel);
                                    r
                                }
                            };
                            if outcome.is_ok() {
                                metrics.messages_out.inc_by(outputs.len() as u64);
                            }
                            outcome
                        }
                    };
                    // A message going back (a nak) goes after those before
                    // it: the server hands them out in the order of the naks.
                    if outcome.is_err() {
                        if let Some(previous) = previous.clone() {
                            previous.await.ok();
                        }
                    }
                    if shutdown.is_cancelled() && outcome.as_ref().is_err_and(HandleError::is_retry) {
                        // Nak'd once the pull stream is ended (the server
                        // would hand it straight back to it), with what it
                        // brought after the stop.
                        if let Ok(mut back) = handed_back.lock() {
                            back.push(msg);
                        }
                    } else {
                        settle(name, &msg, outcome, &metrics, shutdown.is_cancelled()).await;
                    }
                    metrics.handle_seconds.observe(started.elapsed().as_secs_f64());
                    if let Some(previous) = previous {
                        previous.await.ok();
                    }
                    done.send(()).ok();
                    held
                }));
            }
            Some(n) = settling.next(), if !settling.is_empty() => unacked -= n,
            () = shutdown.cancelled(), if !stopping => {}
            () = tokio::time::sleep_until(next_pull), if pull.is_none() && !stopping => {}
            // Stopping: the pull stream renews its requests as it is read,
            // so it is ended RETURN_IDLE after the stop (what it brought by
            // then is nak'd); a message the server sends to its last
            // request after that waits for ack_wait.
            () = tokio::time::sleep_until(stopped_at + RETURN_IDLE), if stopping && pull.is_some() => {
                pull = None;
                // The naks wait for its last request's expiry from here.
                stopped_at = Instant::now();
            }
            // After a reconnect the pull request out may have been
            // forgotten (its answer would come at the client-side timeout,
            // 5 s late) or may still bring messages: it is ended here, and
            // the take-over (at the next pull) waits until it has expired
            // on the server, so that what it delivered is pending then.
            _ = reconnects.tick(), if pull.is_some() && !stopping && options.take_over_pending => {
                if stats.connects.load(Ordering::Relaxed) != connects {
                    pull = None;
                    next_pull = Instant::now() + PULL_EXPIRES;
                }
            }
            next = async { match pull.as_mut() { Some(p) => p.next().await, None => None } }, if can_pull => {
                match next {
                    Some(Ok(msg)) if shutdown.is_cancelled() => {
                        returned.push(msg);
                        if returned.len() >= options.batch {
                            pull = None;
                            stopped_at = Instant::now();
                        }
                    }
                    Some(Ok(msg)) => {
                        let weight = weight(&msg);
                        in_hand += weight;
                        let handler = handler.clone();
                        let metrics = metrics.clone();
                        let successes = successes.clone();
                        let shutdown = shutdown.clone();
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
                            let held = Held { name, msg: Some(&msg), successes: &successes, metrics: &metrics, shutdown: &shutdown };
                            let result = held.handle(&*handler, input).instrument(span.clone()).await;
                            (msg, span, started, result, weight)
                        }));
                    }
                    Some(Err(e)) if e.kind() == jetstream::consumer::pull::MessagesErrorKind::MissingHeartbeat => {
                        // The server holds no pull request of ours (its
                        // answer that one ran out was lost): the client
                        // would ask again only after `PULL_EXPIRES` + 5 s.
                        debug!(stage = name, "No heartbeat from the pull request; pulling again.");
                        pull = None;
                    }
                    Some(Err(e)) => {
                        debug!(stage = name, error = %e, "Pull request reported an error.");
                    }
                    None => pull = None,
                }
            }
        }
    }
    Ok(())
}

/// A message's handling, retried in place (see the module's doc).
struct Held<'a> {
    name: &'static str,
    /// The pulled message, told "in progress" while it waits; none for a
    /// message taken over (read from the stream).
    msg: Option<&'a jetstream::Message>,
    successes: &'a Tally,
    metrics: &'a StageMetrics,
    shutdown: &'a CancellationToken,
}

impl Held<'_> {
    async fn handle<H: Handler>(
        &self,
        handler: &H,
        input: Input<'_>,
    ) -> Result<Vec<Outgoing>, HandleError> {
        let name = self.name;
        let seq = input.stream_sequence;
        let mut tries = 0u32;
        let tally = self.successes;
        let seen = tally.successes.load(Ordering::Acquire);
        let recovered_seen = tally.recovered.load(Ordering::Acquire);
        let mut first_failure: Option<Instant> = None;
        // When this handling first saw a message that had failed on the
        // same outage pass (the dependency back for others).
        let mut back_since: Option<Instant> = None;
        let mut outage = false;
        loop {
            let again = Input {
                subject: input.subject,
                headers: input.headers,
                payload: input.payload,
                delivered: input.delivered,
                stream_sequence: seq,
            };
            let failure = match handler.handle(again).await {
                Ok(out) => {
                    tally.successes.fetch_add(1, Ordering::AcqRel);
                    if outage {
                        tally.recovered.fetch_add(1, Ordering::AcqRel);
                    }
                    return Ok(out);
                }
                Err(e) if e.is_retry() => e,
                Err(e) => return Err(e),
            };
            let after = failure.retry_after().unwrap_or(Duration::ZERO);
            outage = matches!(failure, HandleError::Unavailable { .. });
            tries += 1;
            if tally.was_let_go(seq) {
                return Err(failure);
            }
            let first = *first_failure.get_or_insert_with(Instant::now);
            let others_pass = tally.successes.load(Ordering::Acquire) > seen;
            let let_go = if outage {
                if back_since.is_none() && tally.recovered.load(Ordering::Acquire) > recovered_seen
                {
                    back_since = Some(Instant::now());
                }
                back_since.is_some_and(|at| at.elapsed() >= HOLD_FOR)
                    || (first.elapsed() >= HOLD_OUTAGE_FOR && others_pass)
            } else {
                first.elapsed() >= HOLD_FOR && others_pass
            };
            if let_go {
                warn!(stage = name, seq, tries, reason = %failure, "A message keeps failing while others pass; it is let go, to be retried after the others.");
                tally.remember_let_go(seq);
                return Err(failure);
            }
            if self.shutdown.is_cancelled() {
                return Err(failure);
            }
            self.metrics.retries.inc();
            let wait = retry_delay(after, i64::from(tries)).min(HOLD_MAX_DELAY);
            if tries == 1 {
                warn!(stage = name, seq, ?wait, reason = %failure, "Will retry the message in place; the ones behind it wait.");
            } else {
                debug!(stage = name, seq, tries, ?wait, reason = %failure, "Will retry the message in place.");
            }
            if let Some(msg) = self.msg {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    debug!(stage = name, seq, error = %e, "In-progress not sent.");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => return Err(failure),
            }
        }
    }
}

/// The outputs of `msg`, whose publish failed with `error`, published
/// again once every input before it is settled (`previous`), until they
/// are stored or the stage stops.
#[allow(clippy::too_many_arguments)]
async fn publish_again(
    js: &jetstream::Context,
    msg: &jetstream::Message,
    outputs: &[Outgoing],
    error: HandleError,
    previous: Option<Settled>,
    shutdown: &CancellationToken,
    name: &'static str,
    metrics: &StageMetrics,
) -> Result<(), HandleError> {
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    if let Some(previous) = previous {
        previous.await.ok();
    }
    match &error {
        // Routine at a store's limit: room is made there, or the sender told.
        HandleError::Retry { reason, .. } if reason == STORE_FULL => {
            debug!(
                stage = name,
                seq, "A store at its limit: publishing the outputs again, in place."
            )
        }
        _ => warn!(stage = name, seq, reason = %error, "Publishing the outputs again, in place."),
    }
    let mut tries = 1i64;
    loop {
        if shutdown.is_cancelled() {
            return Err(error);
        }
        // At once the first time: those before it are stored now.
        let outcome = republish(js, outputs, metrics).await;
        let Err(HandleError::Retry { reason, after }) = &outcome else {
            return outcome;
        };
        metrics.retries.inc();
        let wait = retry_delay(*after, tries).min(HOLD_MAX_DELAY);
        warn!(stage = name, seq, tries, ?wait, %reason, "Will publish the outputs again, in place.");
        if let Err(e) = msg.ack_with(AckKind::Progress).await {
            debug!(stage = name, seq, error = %e, "In-progress not sent.");
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return outcome,
        }
        tries += 1;
    }
}

/// Publishes `outputs` one at a time, each awaiting its ack (a full store
/// handled as in [`await_acks`]).
async fn republish(
    js: &jetstream::Context,
    outputs: &[Outgoing],
    metrics: &StageMetrics,
) -> Result<(), HandleError> {
    for out in outputs {
        match publish_one(js, out).await {
            Ok(()) => {}
            Err(e)
                if crate::store::is_store_subject(&out.subject) && crate::store::is_full(&*e) =>
            {
                store_full(js, out.clone(), metrics).await?;
            }
            Err(e) => {
                return Err(HandleError::Retry {
                    reason: format!("publish not acknowledged: {e}"),
                    after: Duration::from_secs(1),
                })
            }
        }
    }
    Ok(())
}

/// Handles, in stream order, the messages `consumer` has pending (pulled
/// by an instance that may be gone), and stores their outputs, before the
/// stage pulls anything (`StageOptions::take_over_pending`).
async fn take_over_pending<H: Handler>(
    js: &jetstream::Context,
    consumer: &PullConsumer,
    handler: &H,
    options: &StageOptions,
    successes: &Tally,
    shutdown: &CancellationToken,
) {
    use jetstream::stream::RawMessageErrorKind;
    let name = options.name;
    let info = match consumer.get_info().await {
        Ok(info) => info,
        Err(e) => {
            warn!(stage = name, error = %e, "Cannot read the consumer's pending messages; pulling at once.");
            return;
        }
    };
    if info.num_ack_pending == 0 {
        return;
    }
    let (first, last) = take_over_range(
        info.ack_floor.stream_sequence,
        info.delivered.stream_sequence,
    );
    if first > info.ack_floor.stream_sequence + 1 {
        warn!(stage = name, ack_floor = info.ack_floor.stream_sequence, first, "The consumer's ack floor is far behind; only the latest pending messages are taken over (older ones come back after ack_wait).");
    }
    let filter = info.config.filter_subject.clone();
    let stream = match js.get_stream_no_info(&info.stream_name).await {
        Ok(s) => s,
        Err(e) => {
            warn!(stage = name, error = %e, "Cannot read the stream; pulling at once.");
            return;
        }
    };
    info!(stage = name, pending = info.num_ack_pending, first, last, "Handling the consumer's pending messages first, in order (an instance that pulled them may be gone).");
    let started = Instant::now();
    let mut results = futures_util::stream::iter(first..=last)
        .map(|seq| {
            let stream = &stream;
            let filter = &filter;
            async move {
                let msg = loop {
                    match stream.get_raw_message(seq).await {
                        Ok(m) => break m,
                        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return None,
                        Err(e) => {
                            debug!(stage = name, seq, error = %e, "Cannot read a pending message; again.");
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                                () = shutdown.cancelled() => return None,
                            }
                        }
                    }
                };
                if !filter.is_empty() && msg.subject.as_str() != filter.as_str() {
                    return None;
                }
                let input = Input {
                    subject: msg.subject.as_str(),
                    headers: Some(&msg.headers),
                    payload: &msg.payload,
                    delivered: 2,
                    stream_sequence: seq,
                };
                let held = Held { name, msg: None, successes, metrics: &options.metrics, shutdown };
                Some(held.handle(handler, input).await)
            }
        })
        .buffered(64);
    let mut taken = 0u64;
    while let Some(result) = results.next().await {
        // Not found: acked since; a failure: left to its redelivery.
        let Some(Ok(outputs)) = result else { continue };
        let mut outcome = republish(js, &outputs, &options.metrics).await;
        let mut tries = 1i64;
        while let Err(HandleError::Retry { after, .. }) = &outcome {
            let wait = retry_delay(*after, tries).min(HOLD_MAX_DELAY);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            outcome = republish(js, &outputs, &options.metrics).await;
            tries += 1;
        }
        taken += 1;
    }
    info!(
        stage = name,
        taken,
        seconds = started.elapsed().as_secs_f64(),
        "Took over the pending messages; their redeliveries will be acked as duplicates."
    );
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
    /// The acks still to await (all of them, or the last chunk's), each
    /// with the index of its output (to store it again, or tell its
    /// sender, should a recipient's store be full: `store.rs`).
    unawaited: Vec<Unacked>,
}

/// A publish's ack, its output's index, and its admission into a store
/// (dropped once the ack is in).
type Unacked = (
    jetstream::context::PublishAckFuture,
    usize,
    crate::store::Admitted,
);

impl Published {
    fn len(&self) -> usize {
        self.unawaited.len()
    }
}

async fn publish_all(
    js: &jetstream::Context,
    span: &tracing::Span,
    outputs: &[Outgoing],
) -> Result<Published, HandleError> {
    let mut acks = Vec::with_capacity(outputs.len().min(ACK_BUDGET));
    for (i, out) in outputs.iter().enumerate() {
        if acks.len() == ACK_BUDGET {
            await_acks(std::mem::take(&mut acks), outputs).await?;
        }
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
        // A store full of undelivered messages (store.rs): handled as the
        // refusal in `await_acks` is, in input order.
        let admitted = match crate::store::admit(js, &out.subject).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                return Err(HandleError::Retry {
                    reason: STORE_FULL.to_owned(),
                    after: Duration::ZERO,
                })
            }
            Err(e) => {
                return Err(HandleError::Retry {
                    reason: format!("cannot count a store's undelivered messages: {e}"),
                    after: Duration::from_secs(1),
                })
            }
        };
        let publish = jetstream::message::PublishMessage::build()
            .payload(out.payload.clone())
            .headers(headers);
        let ack = js
            .send_publish(out.subject.clone(), publish)
            .await
            .map_err(|e| HandleError::Retry {
                reason: format!("publish failed: {e}"),
                after: Duration::from_secs(1),
            })?;
        acks.push((ack, i, admitted));
    }
    Ok(Published { unawaited: acks })
}

async fn await_acks(acks: Vec<Unacked>, outputs: &[Outgoing]) -> Result<(), HandleError> {
    for (ack, i, _admitted) in acks {
        match ack.await {
            Ok(_) => {}
            // A recipient's store at its count limit: room is made or the
            // sender told (`store_full`), never a retry that would meet the
            // same refusal, but in input order: by `publish_again`, once
            // every input before this one is settled, with nothing after it
            // published meanwhile. Made here, the room went to whichever
            // refused output got there first, and a later message could be
            // stored before an earlier one that was then refused (a soak
            // at 1,000 msgs/s saw 216 out of order at stores' limits).
            Err(e)
                if crate::store::is_store_subject(&outputs[i].subject)
                    && crate::store::is_full(&e) =>
            {
                return Err(HandleError::Retry {
                    reason: STORE_FULL.to_owned(),
                    after: Duration::ZERO,
                });
            }
            Err(e) => {
                return Err(HandleError::Retry {
                    reason: format!("publish not acknowledged: {e}"),
                    after: Duration::from_secs(1),
                })
            }
        }
    }
    Ok(())
}

/// Why outputs are published again when a recipient's store refused one
/// for its count limit (see `await_acks`).
const STORE_FULL: &str = "a recipient's store is at its count limit";

/// `out` was refused by its recipient's full store (docs/adr/0027): the
/// store's undelivered messages are counted again (the recipient may have
/// read meanwhile) and, if there is room, it is stored; if there is none,
/// its sender gets `FAILED`/`RECIPIENT_STORE_FULL`
/// (stored the same way), and a receipt or notice is dropped with a
/// warning. `Err` (retry the input) only when JetStream does not answer.
async fn store_full(
    js: &jetstream::Context,
    out: Outgoing,
    metrics: &StageMetrics,
) -> Result<(), HandleError> {
    let retry = |e: String| HandleError::Retry {
        reason: format!("a full store: {e}"),
        after: Duration::from_secs(1),
    };
    let mut out = out;
    // At most twice: the message, then the receipt telling its sender.
    for attempt in 0..2 {
        let tell = crate::store::full_store_receipt(&out, None);
        // A message from a sender looks at the cursors every time; a
        // receipt or notice may go by a recent "no room" (store.rs).
        let room = if tell.is_some() {
            crate::store::room_now(js, &out.subject).await
        } else {
            crate::store::room(js, &out.subject).await
        }
        .map_err(|e| retry(e.to_string()))?;
        // Without room, `publish_one` refuses it at once (the count just
        // made is remembered).
        match publish_one(js, &out).await {
            Ok(()) => {
                debug!(subject = %out.subject, room, "Stored into a store that was full.");
                return Ok(());
            }
            Err(e) if crate::store::is_full(&*e) => {}
            Err(e) => return Err(retry(e.to_string())),
        }
        if attempt == 0 {
            metrics.store_full.inc();
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
    let Some(_admitted) = crate::store::admit(js, &out.subject).await? else {
        return Err(Box::new(crate::store::Full));
    };
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
    stopping: bool,
) {
    let (seq, delivered) = msg
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 1));
    let kind = match outcome {
        Ok(()) => AckKind::Ack,
        Err(HandleError::Retry { reason, after } | HandleError::Unavailable { reason, after }) => {
            metrics.retries.inc();
            if stopping {
                // Another instance takes it now, not after a delay.
                debug!(stage = name, seq, %reason, "Stopping: the message goes back at once.");
                AckKind::Nak(None)
            } else {
                let after = retry_delay(after, delivered);
                warn!(stage = name, seq, delivered, ?after, %reason, "Will retry the message.");
                AckKind::Nak(Some(after))
            }
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
    fn a_take_over_looks_at_the_latest_pending_sequences() {
        assert_eq!(take_over_range(100, 180), (101, 180));
        assert_eq!(take_over_range(0, TAKE_OVER_MAX), (1, TAKE_OVER_MAX));
        // An ack floor stuck far behind: the latest TAKE_OVER_MAX.
        let (first, last) = take_over_range(112_509, 300_000);
        assert_eq!(last, 300_000);
        assert_eq!(last - first + 1, TAKE_OVER_MAX);
    }

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
