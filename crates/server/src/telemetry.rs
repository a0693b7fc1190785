//! Logging and tracing.
//!
//! Logs: human-readable lines on standard error (standard output is kept for
//! the secret printed by `bootstrap`), filtered by `APITOKEN_LOG` (or
//! `RUST_LOG`), default `info,sqlx=warn,sea_orm=warn`.
//!
//! Traces: with an OTLP endpoint, every span (one per gRPC call, named after
//! the method, child of the caller's W3C `traceparent`) is exported over
//! OTLP/gRPC, batched, and flushed at shutdown. Spans carry method names and
//! token names, never secrets.

use opentelemetry::{
    global,
    propagation::{Extractor, TextMapCompositePropagator},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// The service name in exported traces.
pub const SERVICE_NAME: &str = "apitoken-server";

/// What must live as long as the process traces.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops trace export.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("apitoken-server: flushing traces failed: {error}");
        }
    }
}

fn filter() -> EnvFilter {
    std::env::var("APITOKEN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new("info,sqlx=warn,sea_orm=warn"))
}

/// Installs the global subscriber: logs, and traces when `otlp_endpoint`
/// (e.g. `http://otel-collector:4317`) is given. Needs a Tokio runtime.
pub fn init(otlp_endpoint: Option<&str>) -> Result<Telemetry, String> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter());
    let Some(endpoint) = otlp_endpoint else {
        let _ = tracing_subscriber::registry().with(logs).try_init();
        return Ok(Telemetry::default());
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|error| format!("cannot set up OTLP export to {endpoint}: {error}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
        .build();
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![Box::new(
        TraceContextPropagator::new(),
    )]));
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE_NAME))
        .with_filter(filter());
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Reads W3C trace context from request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of one gRPC call: named after the method, a child of the
/// caller's `traceparent` when tracing is on.
pub fn request_span(request: &http::Request<()>) -> Span {
    let method = request.uri().path();
    let span = tracing::info_span!("grpc", otel.name = %method, otel.kind = "server", rpc.method = %method);
    let parent = global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    let _ = span.set_parent(parent);
    span
}
