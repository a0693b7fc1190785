//! W3C trace context across the layer: the caller's call, the layer's
//! `apitoken.authenticate` span, and the `VerifyApiToken` call it makes.
//!
//! With the `opentelemetry` feature (on by default) and a
//! `tracing-opentelemetry` layer installed in the service:
//!
//! - the `apitoken.authenticate` span is a child of the service's current
//!   span; if that carries no trace (the service does not extract incoming
//!   context itself), of the caller's `traceparent`;
//! - the call to apitoken carries the authenticate span as its parent
//!   (`traceparent` with that span's id), so apitoken's span nests under it.
//!
//! Without a trace (no such layer, or the feature off), the caller's
//! `traceparent`/`tracestate` are passed on unchanged.

use tonic::metadata::{MetadataMap, MetadataValue};

/// W3C trace context headers passed from the incoming call to apitoken.
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Makes `span` a child of the caller's `traceparent` when the service's
/// own context carries no trace (only when the span is recorded at all).
pub(crate) fn link_to_caller(span: &tracing::Span, headers: &http::HeaderMap) {
    #[cfg(feature = "opentelemetry")]
    otel::link_to_caller(span, headers);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, headers);
}

/// Sets the trace context of the call to apitoken: the current span's, or
/// else the caller's headers as they came.
pub(crate) fn propagate(metadata: &mut MetadataMap, incoming: &http::HeaderMap) {
    #[cfg(feature = "opentelemetry")]
    if let Some(traceparent) = otel::current_traceparent() {
        metadata.insert("traceparent", traceparent);
        forward(metadata, incoming, "tracestate");
        return;
    }
    for header in TRACE_HEADERS {
        forward(metadata, incoming, header);
    }
}

fn forward(metadata: &mut MetadataMap, incoming: &http::HeaderMap, header: &'static str) {
    if let Some(value) = incoming
        .get(header)
        .and_then(|value| MetadataValue::try_from(value.as_bytes()).ok())
    {
        metadata.insert(header, value);
    }
}

#[cfg(feature = "opentelemetry")]
mod otel {
    //! The OpenTelemetry side, through `tracing-opentelemetry`.

    use opentelemetry::{
        Context,
        trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
    };
    use tonic::metadata::{Ascii, MetadataValue};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The span context of a W3C `traceparent` (version 00).
    fn parse(traceparent: &str) -> Option<SpanContext> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let trace = TraceId::from_hex(trace).ok()?;
        let span = SpanId::from_hex(span).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        let context = SpanContext::new(
            trace,
            span,
            TraceFlags::new(flags),
            true,
            TraceState::default(),
        );
        context.is_valid().then_some(context)
    }

    pub(super) fn link_to_caller(span: &tracing::Span, headers: &http::HeaderMap) {
        if span.is_disabled() {
            return;
        }
        let Some(caller) = headers
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .and_then(parse)
        else {
            return;
        };
        if tracing::Span::current()
            .context()
            .span()
            .span_context()
            .is_valid()
        {
            // The service's own span is in a trace: ours nests under it.
            return;
        }
        let _ = span.set_parent(Context::new().with_remote_span_context(caller));
    }

    pub(super) fn current_traceparent() -> Option<MetadataValue<Ascii>> {
        let context = tracing::Span::current().context();
        let span = context.span();
        let span_context = span.span_context();
        if !span_context.is_valid() {
            return None;
        }
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
        .parse()
        .ok()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn traceparents_parse_strictly() {
            let context = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
            assert_eq!(
                context.trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            assert!(context.is_sampled());
            for bad in [
                "",
                "garbage",
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-zzf067aa0ba902b7-01",
            ] {
                assert!(parse(bad).is_none(), "{bad}");
            }
        }
    }
}
