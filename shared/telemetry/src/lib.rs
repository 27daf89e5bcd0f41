//! Logging and tracing set-up shared by every binary.
//!
//! Logs go to stderr through `tracing-subscriber`: human-readable by default,
//! one JSON object per line with `--log-format json`. The filter comes from
//! `INTEROP_LOG` (e.g. `info`, `interop_ingest=debug`). The W3C trace-context
//! propagator is installed so trace ids ride in NATS headers.
//!
//! Log lines never carry message bodies, media, tokens or full phone numbers:
//! addresses are logged through `Address::redacted`.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

pub mod metrics;

use std::str::FromStr;

use opentelemetry_sdk::propagation::TraceContextPropagator;

use opentelemetry::trace::TracerProvider as _;
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
    #[error("cannot set up the OTLP exporter: {0}")]
    Exporter(String),
    #[error("invalid log filter {filter:?}: {message}")]
    BadFilter { filter: String, message: String },
    /// The exporter has no TLS client yet: an `https` collector would fail
    /// every export, so it is refused at start instead.
    #[error("OTLP endpoint {0:?}: https is not supported yet; export over http to a collector beside the service (an agent or sidecar) that forwards over TLS")]
    HttpsEndpoint(String),
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

/// What [`init`] sets up.
pub struct Options {
    pub service: &'static str,
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `interop_ingest=debug,info`.
    pub filter: String,
    /// Base URL of an OTLP/HTTP collector (`OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// e.g. `http://otel-collector:4318`); traces go to `<base>/v1/traces`.
    /// No export (and no trace context on the bus) when `None`.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces to record, 0.0 to 1.0 (children follow their
    /// parent's decision).
    pub sample_ratio: f64,
    /// Where log lines go; stderr when `None` (tests capture them here).
    pub writer: Option<tracing_subscriber::fmt::writer::BoxMakeWriter>,
}

impl Options {
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            format: LogFormat::Text,
            filter: "info".into(),
            otlp_endpoint: None,
            sample_ratio: 1.0,
            writer: None,
        }
    }
}

/// Keeps telemetry running; drop it last, after the service stopped, to
/// flush spans still buffered.
#[must_use = "dropping the guard stops telemetry"]
pub struct Guard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            // Nothing useful to do if the collector is gone at exit.
            p.shutdown().ok();
        }
    }
}

impl Guard {
    /// Exports buffered spans now.
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            p.force_flush().ok();
        }
    }
}

/// Installs the global subscriber, the W3C propagator and, when an OTLP
/// endpoint is set, the span exporter. Must run inside a Tokio runtime when
/// exporting. A second call in the same process keeps the first subscriber.
pub fn init(options: Options) -> Result<Guard, TelemetryError> {
    let env_filter =
        EnvFilter::try_new(&options.filter).map_err(|e| TelemetryError::BadFilter {
            filter: options.filter.clone(),
            message: e.to_string(),
        })?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let writer = options
        .writer
        .unwrap_or_else(|| tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr));
    let fmt = match options.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_target(false)
            .with_filter(env_filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_current_span(false)
            .with_filter(env_filter)
            .boxed(),
    };
    let (provider, otel) = match options.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(endpoint) => {
            let provider = tracer_provider(options.service, endpoint, options.sample_ratio)?;
            let tracer = provider.tracer(options.service);
            // Spans are exported at INFO whatever the log filter says.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
                .boxed();
            (Some(provider), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .ok();
    tracing::debug!(service = options.service, "Telemetry initialised.");
    Ok(Guard { provider })
}

fn tracer_provider(
    service: &'static str,
    endpoint: &str,
    ratio: f64,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::trace::{
        span_processor_with_async_runtime::BatchSpanProcessor, Sampler,
    };
    if endpoint.starts_with("https://") {
        return Err(TelemetryError::HttpsEndpoint(endpoint.to_owned()));
    }
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio.clamp(0.0, 1.0),
        ))))
        .with_resource(resource)
        .build())
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

    #[test]
    fn an_https_collector_is_refused_at_start_not_at_each_export() {
        let e = tracer_provider("test", "https://collector:4318", 1.0).unwrap_err();
        assert!(matches!(e, TelemetryError::HttpsEndpoint(_)), "{e}");
    }
}
