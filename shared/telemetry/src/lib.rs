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
    /// The collector's CA file cannot be used.
    #[error("OTLP CA file {path}: {message}")]
    CaFile { path: String, message: String },
    /// A CA file for an `http://` collector: a setting that cannot take
    /// effect (the connection would not be encrypted).
    #[error("OTLP CA file given for {0:?}, which is not https")]
    CaWithoutHttps(String),
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
    /// No export (and no trace context on the bus) when `None`. An
    /// `https://` collector is verified against the system's roots and
    /// [`Self::otlp_ca_file`].
    pub otlp_endpoint: Option<String>,
    /// A PEM bundle of CAs the collector's certificate may chain to, beside
    /// the system's (`OTEL_EXPORTER_OTLP_CERTIFICATE`); only for https.
    pub otlp_ca_file: Option<std::path::PathBuf>,
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
            otlp_ca_file: None,
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
            let provider = tracer_provider(
                options.service,
                endpoint,
                options.otlp_ca_file.as_deref(),
                options.sample_ratio,
            )?;
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

/// How long one export may take before it is given up (the batch is
/// dropped, as the SDK does for any failed export).
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The TLS client for an `https` collector: the system's roots and the CAs
/// in `ca_file`, on rustls with ring.
fn tls_client(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, TelemetryError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    // Roots the system has; none is fine when a CA file is given.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let bad = |message: String| TelemetryError::CaFile {
            path: path.display().to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TelemetryError::Exporter(e.to_string()))
    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

fn tracer_provider(
    service: &'static str,
    endpoint: &str,
    ca_file: Option<&std::path::Path>,
    ratio: f64,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::trace::{
        span_processor_with_async_runtime::BatchSpanProcessor, Sampler,
    };
    let https = endpoint.starts_with("https://");
    if ca_file.is_some() && !https {
        return Err(TelemetryError::CaWithoutHttps(endpoint.to_owned()));
    }
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url);
    let builder = if https {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_client(ca_file)?)
            .https_only()
            .enable_http1()
            .build();
        builder.with_http_client(opentelemetry_http::hyper::HyperClient::new(
            connector,
            EXPORT_TIMEOUT,
            None,
        ))
    } else {
        builder
    };
    let exporter = builder
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

    /// An OTLP/HTTP collector behind TLS with a certificate from a CA made
    /// here: the names of the spans it received.
    async fn https_collector() -> (String, std::path::PathBuf, tempfile::TempDir, Spans) {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message as _;
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &rcgen::Issuer::new(ca, ca_key))
            .unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca_cert.pem()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let spans: Spans = Spans::default();
        let s = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let s = s.clone();
                async move {
                    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    for rs in req.resource_spans {
                        for ss in rs.scope_spans {
                            for span in ss.spans {
                                s.lock().unwrap().push(span.name);
                            }
                        }
                    }
                    ""
                }
            }),
        );
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://localhost:{}", tcp.local_addr().unwrap().port());
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server)),
        };
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, ca_path, dir, spans)
    }

    type Spans = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

    struct TlsListener {
        tcp: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    }

    impl axum::serve::Listener for TlsListener {
        type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((tcp, addr)) = self.tcp.accept().await else {
                    continue;
                };
                // A client that does not trust the certificate fails here.
                if let Ok(tls) = self.acceptor.accept(tcp).await {
                    return (tls, addr);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.tcp.local_addr()
        }
    }

    /// Exports one span named `name` through a provider for `endpoint`.
    async fn export_one(endpoint: &str, ca: Option<&std::path::Path>, name: &'static str) {
        use opentelemetry::trace::{Tracer as _, TracerProvider as _};
        let provider = tracer_provider("test", endpoint, ca, 1.0).unwrap();
        provider.tracer("test").in_span(name, |_| {});
        // The batch processor exports on its runtime; flush off this one.
        tokio::task::spawn_blocking(move || {
            provider.force_flush().ok();
            provider.shutdown().ok();
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_reach_an_https_collector_that_the_ca_file_vouches_for() {
        let (url, ca, _dir, spans) = https_collector().await;
        export_one(&url, Some(&ca), "over-tls").await;
        assert_eq!(*spans.lock().unwrap(), vec!["over-tls".to_owned()]);
        // Without the CA the collector's certificate is not trusted: the
        // export fails (the SDK drops the batch; the service goes on).
        export_one(&url, None, "untrusted").await;
        assert_eq!(*spans.lock().unwrap(), vec!["over-tls".to_owned()]);
    }

    #[test]
    fn a_ca_file_that_cannot_be_used_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        for (endpoint, ca) in [
            ("https://collector:4318", dir.path().join("missing.pem")),
            ("https://collector:4318", empty),
        ] {
            let e = tracer_provider("test", endpoint, Some(&ca), 1.0).unwrap_err();
            assert!(matches!(e, TelemetryError::CaFile { .. }), "{e}");
        }
        let e = tracer_provider(
            "test",
            "http://collector:4318",
            Some(&dir.path().join("x")),
            1.0,
        )
        .unwrap_err();
        assert!(matches!(e, TelemetryError::CaWithoutHttps(_)), "{e}");
    }
}
