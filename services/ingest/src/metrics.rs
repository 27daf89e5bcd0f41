//! ingest's metrics: `interop_ingest_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use interop_proto::v1::{server_frame, ServerFrame};
use interop_telemetry::metrics::{latency_histogram, Metrics};

/// A reject code, e.g. `REJECT_CODE_TOO_LONG` (a fixed set: bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone)]
pub struct IngestMetrics {
    pub connections: Gauge,
    pub accepted: Counter,
    pub rejected: Family<CodeLabel, Counter>,
    pub consent_updates: Counter,
    pub store_seconds: Histogram,
    pub batch_messages: Histogram,
    pub transactions: Counter,
    pub transaction_items: Counter,
    pub redis_checks: Counter,
    pub redis_refused_at_once: Counter,
    pub send_check_batches: Counter,
}

impl IngestMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self {
            connections: Gauge::default(),
            accepted: Counter::default(),
            rejected: Family::default(),
            consent_updates: Counter::default(),
            store_seconds: latency_histogram(),
            batch_messages: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            transactions: Counter::default(),
            transaction_items: Counter::default(),
            redis_checks: Counter::default(),
            redis_refused_at_once: Counter::default(),
            send_check_batches: Counter::default(),
        };
        metrics.register(
            "interop_ingest_connections",
            "Open provider connections.",
            m.connections.clone(),
        );
        metrics.register(
            "interop_ingest_accepted",
            "Messages accepted (stored).",
            m.accepted.clone(),
        );
        metrics.register(
            "interop_ingest_rejected",
            "Frames rejected, by code.",
            m.rejected.clone(),
        );
        metrics.register(
            "interop_ingest_consent_updates",
            "Consent changes stored.",
            m.consent_updates.clone(),
        );
        metrics.register(
            "interop_ingest_store_seconds",
            "Time from handing a send to the publishing task to JetStream's ack of the stream message holding it.",
            m.store_seconds.clone(),
        );
        metrics.register(
            "interop_ingest_batch_messages",
            "Sends per message published to the accepted stream (docs/adr/0019).",
            m.batch_messages.clone(),
        );
        metrics.register(
            "interop_ingest_transactions",
            "Transactions answered (provider sessions; each item's answer is counted as if it came alone).",
            m.transactions.clone(),
        );
        metrics.register(
            "interop_ingest_transaction_items",
            "Items of the transactions answered.",
            m.transaction_items.clone(),
        );
        metrics.register(
            "interop_ingest_redis_checks",
            "Redis round trips for sends' checks (rate limits, consent, idempotency claims): one for the lone sends of a provider that waited together, one for all the one-to-one sends of a transaction.",
            m.redis_checks.clone(),
        );
        metrics.register(
            "interop_ingest_redis_refused_at_once",
            "Round trips of send checks not made because Redis was out (the breaker open: their sends refused UNAVAILABLE at once; one probe every 250 ms).",
            m.redis_refused_at_once.clone(),
        );
        metrics.register(
            "interop_ingest_send_check_batches",
            "Round trips of lone sends' Redis checks, each for the sends of one provider that waited together (compare with interop_ingest_accepted_total).",
            m.send_check_batches.clone(),
        );
        m
    }

    /// Counts an answer on its way to a provider (a transaction's, and
    /// each of its items').
    pub fn count(&self, frame: &ServerFrame) {
        match &frame.frame {
            Some(server_frame::Frame::TransactionResult(t)) => {
                self.transactions.inc();
                self.transaction_items.inc_by(t.results.len() as u64);
                for result in &t.results {
                    self.count(result);
                }
            }
            Some(server_frame::Frame::Accepted(_)) => {
                self.accepted.inc();
            }
            Some(server_frame::Frame::Rejected(r)) => {
                self.rejected
                    .get_or_create(&CodeLabel {
                        code: r.code().as_str_name(),
                    })
                    .inc();
            }
            Some(server_frame::Frame::ConsentUpdated(_)) => {
                self.consent_updates.inc();
            }
            _ => {}
        }
    }
}
