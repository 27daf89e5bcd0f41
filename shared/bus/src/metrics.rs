//! Metrics of a pipeline stage: `interop_<service>_<noun>_<unit>`.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio_util::sync::CancellationToken;
use tracing::error;

use interop_telemetry::metrics::{latency_histogram, Metrics};

/// Counters of one stage, shared by its tasks.
#[derive(Clone)]
pub struct StageMetrics {
    /// Messages taken from the stage's consumer.
    pub messages_in: Counter,
    /// Messages published (stored) by the stage.
    pub messages_out: Counter,
    /// Messages handed back for a later retry (a dependency was down).
    pub retries: Counter,
    /// Messages seen more than once (delivered > 1).
    pub redeliveries: Counter,
    /// Messages given up on: terminated, or past max deliveries.
    pub dead_lettered: Counter,
    /// Outputs not stored because the recipient's store was full of
    /// undelivered messages (the sender told, or a receipt dropped).
    pub store_full: Counter,
    /// Time from taking a message to acking it.
    pub handle_seconds: Histogram,
    /// Messages waiting in the stream for this consumer (consumer lag).
    pub consumer_pending: Gauge,
    /// Messages delivered to the stage and not yet acked.
    pub consumer_ack_pending: Gauge,
}

impl StageMetrics {
    /// Registers the metrics of `service` (e.g. `spam-scoring`).
    pub fn register(metrics: &Metrics, service: &str) -> Self {
        let p = format!("interop_{}", service.replace('-', "_"));
        let m = Self {
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            retries: Counter::default(),
            redeliveries: Counter::default(),
            dead_lettered: Counter::default(),
            store_full: Counter::default(),
            handle_seconds: latency_histogram(),
            consumer_pending: Gauge::default(),
            consumer_ack_pending: Gauge::default(),
        };
        metrics.register(
            &format!("{p}_messages_in"),
            "Messages taken from the stage's consumer.",
            m.messages_in.clone(),
        );
        metrics.register(
            &format!("{p}_messages_out"),
            "Messages the stage published.",
            m.messages_out.clone(),
        );
        metrics.register(
            &format!("{p}_retries"),
            "Messages handed back for a later retry.",
            m.retries.clone(),
        );
        metrics.register(
            &format!("{p}_redeliveries"),
            "Messages delivered more than once.",
            m.redeliveries.clone(),
        );
        metrics.register(
            &format!("{p}_dead_lettered"),
            "Messages given up on (dead letters).",
            m.dead_lettered.clone(),
        );
        metrics.register(
            &format!("{p}_store_full"),
            "Outputs not stored: the recipient's store was full of undelivered messages (the sender told, or a receipt dropped).",
            m.store_full.clone(),
        );
        metrics.register(
            &format!("{p}_handle_seconds"),
            "Time from taking a message to acking it.",
            m.handle_seconds.clone(),
        );
        metrics.register(
            &format!("{p}_consumer_pending_messages"),
            "Messages waiting for this stage (consumer lag).",
            m.consumer_pending.clone(),
        );
        metrics.register(
            &format!("{p}_consumer_ack_pending_messages"),
            "Messages in progress, not yet acked.",
            m.consumer_ack_pending.clone(),
        );
        m
    }

    /// Polls the consumer's lag every `every` and listens for the server's
    /// MAX_DELIVERIES advisories, until `shutdown`.
    pub fn watch(
        &self,
        client: async_nats::Client,
        mut consumer: PullConsumer,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let info = consumer.cached_info();
        let advisory = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
            info.stream_name, info.name
        );
        let m = self.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let Ok(mut sub) = client.subscribe(advisory).await else {
                return;
            };
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    msg = sub.next() => {
                        let Some(msg) = msg else { return };
                        m.dead_lettered.inc();
                        // The advisory names the stream sequence; no content.
                        let detail = String::from_utf8_lossy(&msg.payload);
                        error!(advisory = %detail, "A message reached its maximum deliveries and was dead-lettered.");
                    }
                }
            }
        });
        let m = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        if let Ok(info) = consumer.info().await {
                            m.consumer_pending.set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                            m.consumer_ack_pending.set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
                        }
                    }
                }
            }
        });
    }
}
