//! `--log-format json`: one JSON object a line.
//!
//! Fields, in this order: `timestamp` (RFC 3339, UTC, microseconds),
//! `level` (`INFO`, ...), `target` (the module), `message`, then the
//! event's own fields, then the fields of every span the event is in (outer
//! first; an event's own field wins over a span's of the same name), and
//! `span` (the innermost span's name). A gRPC call's lines all carry its
//! `method`, `request_id` and `trace_id`. Values are JSON strings, numbers
//! or booleans; strings are escaped by serde_json, so a caller's text
//! cannot break a line or forge a field.

use std::fmt;

use serde_json::{Map, Value};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, format::Writer},
    registry::LookupSpan,
};

/// The JSON line formatter (span fields must be recorded with
/// `tracing_subscriber::fmt::format::JsonFields`).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

/// Collects an event's fields.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::from(metadata.level().as_str()));
        line.insert("target".into(), Value::from(metadata.target()));
        let mut own = Map::new();
        event.record(&mut Fields(&mut own));
        line.insert(
            "message".into(),
            own.remove("message").unwrap_or(Value::from("")),
        );
        line.extend(own);
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                innermost = Some(span.name());
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) else {
                    continue;
                };
                for (name, value) in fields {
                    // otel.* fields are for the trace exporter.
                    if !name.starts_with("otel.") {
                        line.entry(name).or_insert(value);
                    }
                }
            }
            if let Some(name) = innermost {
                line.insert("span".into(), Value::from(name));
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}
