//! How Vigil's diagnostics (its own tracing logs on standard error) are written when
//! `[log] format = "json"`: one flat JSON object per line, as log pipelines expect.
//!
//! Every line has `timestamp` (RFC 3339, UTC, microseconds), `level` (`INFO`, `WARN`, ...),
//! `target` (the module that logged) and `message`, then the event's own fields at the top
//! level beside them, never nested under `fields`. The fields of the spans the event happened
//! in are at the top level too: `request_id` and `conn` on everything logged while a request
//! is handled, so one `request_id` finds both a request's decision line and its diagnostics.
//! When an event and one of its spans name the same field, the event's value is kept.
//!
//! Values keep their JSON type: numbers and booleans as such, strings as plain strings.
//! A field recorded with `?` is written as its `Debug` text (`Some(..)`, a header value in
//! quotes), so record strings as `&str` and addresses with `%`.

use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON line format; use it with [`JsonFields`] as the field formatter, which keeps each
/// span's fields as a JSON object this format can merge.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<S> FormatEvent<S, JsonFields> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    line.extend(fields);
                }
            }
        }
        let meta = event.metadata();
        let mut fields = Fields {
            line: &mut line,
            target: None,
        };
        event.record(&mut fields);
        let target = fields.target.take();
        line.insert(
            "timestamp".into(),
            humantime::format_rfc3339_micros(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert(
            "target".into(),
            target.unwrap_or_else(|| meta.target().to_owned()).into(),
        );
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Records an event's fields into the line. Events forwarded from the `log` crate carry
/// their origin as `log.*` fields: `log.target` becomes the line's `target`, the rest
/// (module path, file, line) is left out, as for Vigil's own events.
struct Fields<'a> {
    line: &'a mut Map<String, Value>,
    target: Option<String>,
}

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if let Some(log) = name.strip_prefix("log.") {
            if log == "target" {
                self.target = value.as_str().map(str::to_owned);
            }
            return;
        }
        self.line.insert(name.to_owned(), value);
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, crate::error::chain(value).into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

/// Whether diagnostics in text format are coloured: only when standard error is a terminal,
/// and never when `NO_COLOR` is set to anything but the empty string (<https://no-color.org>).
pub fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(bytes);
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn fields_are_flat_and_span_fields_are_at_the_top_level() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(Json)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "abc-1", conn = 7u64);
            let _in = span.enter();
            let addr: std::net::SocketAddr = "127.0.0.1:9901".parse().unwrap();
            tracing::warn!(admin = %addr, ok = true, "something happened");
            tracing::info!(conn = 8u64, "inner wins");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["message"], "something happened");
        assert_eq!(first["admin"], "127.0.0.1:9901");
        assert_eq!(first["ok"], true);
        assert_eq!(first["request_id"], "abc-1");
        assert_eq!(first["conn"], 7);
        assert_eq!(first["level"], "WARN");
        assert!(first.get("fields").is_none() && first.get("span").is_none());
        assert_eq!(lines[1]["conn"], 8);
    }
}
