//! Prometheus metrics on the admin port (`GET /metrics`, text format), with
//! the `prometheus-client` crate.
//!
//! Names are `interop_<service>_<noun>_<unit>`; counters end in `_total`.
//! Labels have bounded cardinality: a stage, a reject code, a result; never a
//! user, provider-chosen string or message id.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

/// The registry of one process. Services register at start-up; the admin
/// port encodes it on each scrape.
#[derive(Default)]
pub struct Metrics {
    registry: Mutex<Registry>,
}

impl Metrics {
    /// Registers `metric` as `name` (without the `_total` suffix for
    /// counters: the encoder adds it).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Ok(mut r) = self.registry.lock() {
            r.register(name, help, metric);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            // Writing into a String cannot fail.
            encode(&mut out, &r).ok();
        }
        out
    }
}

/// Buckets for processing times: 100 µs to ~3.3 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Code {
        code: &'static str,
    }

    #[test]
    fn encodes_registered_metrics() {
        let m = Metrics::default();
        let c = Counter::<u64>::default();
        let f = Family::<Code, Counter>::default();
        let h = latency_histogram();
        m.register("interop_test_frames", "Frames.", c.clone());
        m.register("interop_test_rejected", "Rejections by code.", f.clone());
        m.register("interop_test_handle_seconds", "Handling time.", h.clone());
        c.inc_by(3);
        f.get_or_create(&Code { code: "TOO_LONG" }).inc();
        h.observe(0.002);
        let text = m.encode();
        assert!(text.contains("interop_test_frames_total 3"), "{text}");
        assert!(
            text.contains("interop_test_rejected_total{code=\"TOO_LONG\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("interop_test_handle_seconds_count 1"),
            "{text}"
        );
    }
}
