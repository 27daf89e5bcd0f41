//! Logging and tracing set-up shared by every binary.
//!
//! Logs go to stderr through `tracing-subscriber`: human-readable by default,
//! one JSON object per line with `--log-format json`. The filter comes from
//! `INTEROP_LOG` (e.g. `info`, `interop_ingest=debug`). The W3C trace-context
//! propagator is installed so trace ids ride in NATS headers.
//!
//! Log lines never carry message bodies, media, tokens or full phone numbers:
//! addresses are logged through `Address::redacted`.

use std::str::FromStr;

use opentelemetry_sdk::propagation::TraceContextPropagator;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("unknown log format {0:?}: expected `text` or `json`")]
    UnknownFormat(String),
    #[error("invalid log filter {filter:?}: {message}")]
    BadFilter { filter: String, message: String },
}

impl FromStr for LogFormat {
    type Err = TelemetryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(TelemetryError::UnknownFormat(other.to_owned())),
        }
    }
}

/// Keeps telemetry running; drop it last, after the service stopped, to
/// flush what is buffered.
#[must_use = "dropping the guard stops telemetry"]
pub struct Guard {
    _private: (),
}

/// Installs the global subscriber and propagator. A second call in the same
/// process (tests running several services) keeps the first subscriber.
pub fn init(
    service: &'static str,
    format: LogFormat,
    filter: &str,
) -> Result<Guard, TelemetryError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|e| TelemetryError::BadFilter {
        filter: filter.to_owned(),
        message: e.to_string(),
    })?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(false)
            .boxed(),
    };
    // Already initialised in this process: keep the first one.
    tracing_subscriber::registry()
        .with(env_filter)
        .with(fmt)
        .try_init()
        .ok();
    tracing::debug!(service, "Telemetry initialised.");
    Ok(Guard { _private: () })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use std::collections::HashMap;

    #[test]
    fn traceparent_round_trips() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
        let mut carrier: HashMap<String, String> = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        assert_eq!(
            carrier["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let back = TraceContextPropagator::new().extract(&carrier);
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
        let mut bad: HashMap<String, String> = HashMap::new();
        bad.insert("traceparent".into(), "garbage".into());
        assert!(!TraceContextPropagator::new()
            .extract(&bad)
            .span()
            .span_context()
            .is_valid());
    }

    #[test]
    fn log_format_parses() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
