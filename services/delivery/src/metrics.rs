//! delivery's metrics: `interop_delivery_*`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use interop_telemetry::metrics::{latency_histogram, Metrics};

#[derive(Clone)]
pub struct DeliveryMetrics {
    /// Open recipient sessions.
    pub sessions: Gauge,
    /// Deliver frames sent (including redeliveries to a new session).
    pub delivered: Counter,
    /// Deliveries acknowledged by a device.
    pub acked: Counter,
    /// `delivered` receipts written into senders' stores.
    pub receipts: Counter,
    /// Receipts dropped because the sender's store is full of messages
    /// their apps never took (docs/adr/0027).
    pub receipts_dropped_store_full: Counter,
    /// Time from ingest accepting a message to its delivery to a device.
    pub end_to_end_seconds: Histogram,
    /// Times a session stopped reading its store at the un-acked limit.
    pub pauses: Counter,
    /// Ephemeral events (typing) pushed to sessions.
    pub ephemeral: Counter,
    /// `expired` receipts written by the expiry sweeper.
    pub expired: Counter,
    /// Stored messages not shown because the user no longer admits the
    /// sender (opted out, provider removed, declined, blocked).
    pub withheld: Counter,
    /// Store consumers opened (at connect with a backlog, after a gap, after a pause).
    pub consumers_opened: Counter,
    /// Stored messages read from the store's leader because a store
    /// consumer (on a replica behind the leader) had nothing to give.
    pub read_from_leader: Counter,
    /// Stored messages taken live, as the store republished them, without
    /// a consumer (docs/adr/0016).
    pub live: Counter,
    /// Times sessions were told to look at their store again: delivery
    /// reconnected to NATS, a subscription fell behind, or the store
    /// elected a leader.
    pub look_again: Counter,
    /// Stored messages pushed without the consent re-check: taken live, and
    /// accepted after the last change the session heard of (docs/adr/0018).
    pub unchecked: Counter,
    /// Consent re-checks that could not get an answer (Redis or the
    /// user-state stream unavailable or slow) and were tried again: the
    /// message waits, it is never shown unchecked.
    pub recheck_unavailable: Counter,
    pub provider_sessions: Gauge,
    pub provider_partitions: Gauge,
    pub provider_batches: Counter,
    pub provider_leases_lost: Counter,
}

impl DeliveryMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self {
            sessions: Gauge::default(),
            delivered: Counter::default(),
            acked: Counter::default(),
            receipts: Counter::default(),
            receipts_dropped_store_full: Counter::default(),
            end_to_end_seconds: latency_histogram(),
            pauses: Counter::default(),
            ephemeral: Counter::default(),
            expired: Counter::default(),
            consumers_opened: Counter::default(),
            read_from_leader: Counter::default(),
            live: Counter::default(),
            look_again: Counter::default(),
            withheld: Counter::default(),
            unchecked: Counter::default(),
            recheck_unavailable: Counter::default(),
            provider_sessions: Gauge::default(),
            provider_partitions: Gauge::default(),
            provider_batches: Counter::default(),
            provider_leases_lost: Counter::default(),
        };
        metrics.register(
            "interop_delivery_provider_sessions",
            "Open provider sessions (server to server) on this replica.",
            m.provider_sessions.clone(),
        );
        metrics.register(
            "interop_delivery_provider_partitions",
            "Partitions owned by this replica's provider sessions.",
            m.provider_partitions.clone(),
        );
        metrics.register(
            "interop_delivery_provider_batches",
            "DeliverBatch frames pushed to provider sessions.",
            m.provider_batches.clone(),
        );
        metrics.register(
            "interop_delivery_provider_leases_lost",
            "Partition leases a provider session lost because it did not renew them in time (another session took the partition).",
            m.provider_leases_lost.clone(),
        );
        metrics.register(
            "interop_delivery_recheck_unavailable",
            "Consent re-checks that got no answer in time and were tried again (the message waits; alert on a steady rate).",
            m.recheck_unavailable.clone(),
        );
        metrics.register(
            "interop_delivery_unchecked",
            "Stored messages pushed without a consent re-check (taken live, nothing changed since they were accepted).",
            m.unchecked.clone(),
        );
        metrics.register(
            "interop_delivery_withheld",
            "Stored messages not shown because the user no longer admits the sender.",
            m.withheld.clone(),
        );
        metrics.register(
            "interop_delivery_consumers_opened",
            "Store consumers opened by sessions.",
            m.consumers_opened.clone(),
        );
        metrics.register(
            "interop_delivery_read_from_leader",
            "Stored messages read from the store's leader because a store consumer, on a replica behind it, had nothing to give.",
            m.read_from_leader.clone(),
        );
        metrics.register(
            "interop_delivery_live",
            "Stored messages taken live as the store republished them, without a consumer.",
            m.live.clone(),
        );
        metrics.register(
            "interop_delivery_look_again",
            "Times sessions were told to look at their store again (NATS reconnect, a subscription that fell behind, store leader elected).",
            m.look_again.clone(),
        );
        metrics.register(
            "interop_delivery_pauses",
            "Times a session stopped reading at the un-acked limit.",
            m.pauses.clone(),
        );
        metrics.register(
            "interop_delivery_ephemeral",
            "Ephemeral events (typing) pushed to sessions.",
            m.ephemeral.clone(),
        );
        metrics.register(
            "interop_delivery_expired",
            "Expired receipts written for messages that aged out undelivered.",
            m.expired.clone(),
        );
        metrics.register(
            "interop_delivery_sessions",
            "Open recipient sessions.",
            m.sessions.clone(),
        );
        metrics.register(
            "interop_delivery_delivered",
            "Messages pushed to devices.",
            m.delivered.clone(),
        );
        metrics.register(
            "interop_delivery_acked",
            "Deliveries acknowledged by devices.",
            m.acked.clone(),
        );
        metrics.register(
            "interop_delivery_receipts",
            "Delivered receipts written.",
            m.receipts.clone(),
        );
        metrics.register(
            "interop_delivery_receipts_dropped_store_full",
            "Receipts dropped: the sender's store is full of messages their apps never took.",
            m.receipts_dropped_store_full.clone(),
        );
        metrics.register(
            "interop_delivery_end_to_end_seconds",
            "Time from acceptance at ingest to the push to a device.",
            m.end_to_end_seconds.clone(),
        );
        m
    }
}
