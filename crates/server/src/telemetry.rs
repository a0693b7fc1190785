//! Logging and tracing.
//!
//! Logs: lines on standard error (standard output is kept for the secret
//! printed by `bootstrap`), filtered by `APITOKEN_LOG` (or `RUST_LOG`),
//! default `info,sqlx=warn,sea_orm=warn`. `--log-format text` (the default)
//! writes human-readable lines, in colour only on a terminal;
//! `--log-format json` writes one JSON object a line ([`json`]) with stable
//! field names: `timestamp`, `level`, `target`, `message`, the event's own
//! fields, and those of the spans it is in — for a gRPC call `method`,
//! `request_id` and `trace_id`, on every line the call logs.
//!
//! Request ids: the caller's `x-request-id` when it is 1 to 64 characters of
//! `[A-Za-z0-9._:-]`, else one the server makes ([`ServerRequestId`]); the
//! reply carries it back in `x-request-id`, and audit entries record it.
//!
//! Traces: with an OTLP endpoint, every span (one per gRPC call, named after
//! the method, child of the caller's W3C `traceparent`) is exported over
//! OTLP/gRPC, batched, and flushed at shutdown. Spans carry method names and
//! token names, never secrets.

pub mod json;

use std::sync::{
    Arc, LazyLock,
    atomic::{AtomicU64, Ordering},
};

use opentelemetry::{
    global,
    propagation::{Extractor, TextMapCompositePropagator},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

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

/// The log layer for `format`.
fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::JsonLines)
            .with_filter(filter())
            .boxed(),
    }
}

/// Installs the global subscriber: logs in `format`, and traces when
/// `otlp_endpoint` (e.g. `http://otel-collector:4317`) is given. Needs a
/// Tokio runtime.
pub fn init(otlp_endpoint: Option<&str>, format: LogFormat) -> Result<Telemetry, String> {
    let logs = log_layer(format);
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

/// The id the server gives a request whose caller sent no usable
/// `x-request-id` (a request extension: audit entries use it too).
#[derive(Debug, Clone)]
pub struct ServerRequestId(pub Arc<str>);

/// A fresh request id: this process's random prefix and a counter, so ids
/// are unique across replicas and cost no random draw per call.
fn next_request_id() -> String {
    static PREFIX: LazyLock<u64> = LazyLock::new(rand::random);
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}-{n:x}", *PREFIX)
}

/// The span of one gRPC call, and the request id the server made for it
/// (if the caller sent none usable; the caller's own is kept otherwise).
/// The span is named after the method, carries `method`, `request_id` and
/// `trace_id`, and is a child of the caller's `traceparent` when tracing is
/// on.
pub fn request_span(headers: &http::HeaderMap, method: &str) -> (Span, Option<ServerRequestId>) {
    let caller_id = headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| crate::audit::is_request_id(id));
    let made = match caller_id {
        Some(_) => None,
        None => Some(ServerRequestId(next_request_id().into())),
    };
    let request_id = caller_id.unwrap_or_else(|| made.as_ref().map_or("", |id| &id.0));
    let span = tracing::info_span!(
        "grpc",
        otel.name = %method,
        otel.kind = "server",
        method = %method,
        request_id = %request_id,
        trace_id = Empty,
    );
    let caller_trace = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(crate::audit::trace_id);
    if !span.is_disabled() {
        let parent = global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(headers))
        });
        let _ = span.set_parent(parent);
        match caller_trace {
            Some(trace) => {
                span.record("trace_id", trace.as_str());
            }
            None => {
                // A new trace (OTLP on): its id, if the tracer made one.
                use opentelemetry::trace::TraceContextExt as _;
                let context = span.context();
                let trace = context.span().span_context().trace_id();
                if trace != opentelemetry::trace::TraceId::INVALID {
                    span.record("trace_id", tracing::field::display(trace));
                }
            }
        }
    }
    (span, made)
}
