//! W3C trace context in NATS headers: injected on publish from the current
//! `tracing` span, extracted on consume into the handler's span, so one
//! message is one trace across the services.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's trace context (`traceparent`, `tracestate`)
/// into `headers`. Does nothing when no OpenTelemetry layer is installed.
pub fn inject_current(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers));
    });
}

/// Makes `span` a child of the trace context carried in `headers`, if any.
pub fn set_parent_from(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else { return };
    let cx =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    // Fails only when the span is disabled; then there is nothing to link.
    span.set_parent(cx).ok();
}

/// The current span's trace context as W3C fields (empty when no
/// OpenTelemetry layer is installed), for carrying it inside a message body.
pub fn current_fields() -> std::collections::HashMap<String, String> {
    let cx = tracing::Span::current().context();
    let mut fields = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut fields));
    fields
}

/// Makes `span` a child of the trace context in `fields`, if any.
pub fn set_parent_from_fields(
    span: &tracing::Span,
    fields: &std::collections::HashMap<String, String>,
) {
    if fields.is_empty() {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(fields));
    span.set_parent(cx).ok();
}
