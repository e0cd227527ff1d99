//! Journal message ids (`MESSAGE_ID=`) of the events an operator may need explained; the
//! explanations are in dist/picortex.catalog, installed to /usr/lib/systemd/catalog/, so
//! `journalctl -x` shows them. tracing-journald prefixes every field of an event (PICORTEX_…)
//! and cannot run twice on one subscriber (its layers share a span-extension slot), so an event
//! gets its id from its target instead: `tracing::warn!(target: TURN_FAILED.0, …)` is written
//! by [`JournalLayer`], which adds `MESSAGE_ID=` and keeps the spans' fields (`PICORTEX_CHAT`,
//! `PICORTEX_TURN`); the ordinary journald layer leaves those events out (main.rs). Before
//! logging is set up, [`send`] writes one entry itself.

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The configuration or a credential is wrong: the gateway refused to start or to reload.
pub const CONFIG_INVALID: &str = "5a0b2f8e7c3d4b6a9e1f0c2d3b4a5968";

/// (tracing target, MESSAGE_ID) of each catalogued event.
pub type Entry = (&'static str, &'static str);
/// A turn ended without an answer (or could not start); the reason is in the message.
pub const TURN_FAILED: Entry = ("catalog::turn_failed", "8d1c5e2a4f7b4c0e9a3d6b1f2e4c7a90");
/// A chat waits for the owner's decision (quarantine, SPEC Q1).
pub const CHAT_QUARANTINED: Entry = (
    "catalog::chat_quarantined",
    "c3e7a1b59d2f4e8a8b0c6d4f1a2e3b57",
);
/// The owner (or a rule) decided about a chat: allowed (held messages released) or blocked.
pub const CHAT_DECIDED: Entry = ("catalog::chat_decided", "1f4b8e2c6a9d4d3b8e7f0a5c2b1d9e64");
/// Every catalogued event that goes through tracing.
pub const ENTRIES: &[Entry] = &[TURN_FAILED, CHAT_QUARANTINED, CHAT_DECIDED];

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// syslog priorities.
pub const ERR: u8 = 3;
pub const WARNING: u8 = 4;
pub const INFO: u8 = 6;

/// Whether the target is a catalogued event's.
pub fn is_catalogued(target: &str) -> bool {
    target.starts_with("catalog::")
}

/// The journal layer of catalogued events (see the module comment).
pub struct JournalLayer;

/// A span's fields as this layer records them (its own extension type).
struct SpanFields(Vec<(String, String)>);

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut v = String::new();
        let _ = write!(v, "{value:?}");
        self.put(field, v);
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            let name: String = field
                .name()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            self.fields.push((format!("PICORTEX_{name}"), value));
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for JournalLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(f.fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        values.record(&mut f);
        if let Some(span) = ctx.span(id) {
            if let Some(sf) = span.extensions_mut().get_mut::<SpanFields>() {
                sf.0.extend(f.fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let target = event.metadata().target();
        let Some(&(_, id)) = ENTRIES.iter().find(|e| e.0 == target) else {
            return;
        };
        let mut f = Fields::default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(sf) = span.extensions().get::<SpanFields>() {
                    f.fields.extend(sf.0.iter().cloned());
                }
            }
        }
        event.record(&mut f);
        let priority = match *event.metadata().level() {
            Level::ERROR => ERR,
            Level::WARN => WARNING,
            _ => INFO,
        };
        let fields: Vec<(&str, &str)> = f
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        send(priority, id, &f.message, &fields);
    }
}

/// One journal entry with `MESSAGE_ID`; `false` when there is no journal (then the caller
/// prints the message itself).
pub fn send(priority: u8, message_id: &str, message: &str, fields: &[(&str, &str)]) -> bool {
    if std::env::var_os("JOURNAL_STREAM").is_none() && std::env::var_os("INVOCATION_ID").is_none() {
        return false;
    }
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    let mut buf = Vec::new();
    let mut put = |k: &str, v: &str| {
        // The length-prefixed form takes any value, newlines included.
        buf.extend_from_slice(k.as_bytes());
        buf.push(b'\n');
        buf.extend_from_slice(&(v.len() as u64).to_le_bytes());
        buf.extend_from_slice(v.as_bytes());
        buf.push(b'\n');
    };
    put("MESSAGE", message);
    put("MESSAGE_ID", message_id);
    put("PRIORITY", &priority.to_string());
    put("SYSLOG_IDENTIFIER", "picortexd");
    for (k, v) in fields {
        put(k, v);
    }
    sock.send_to(&buf, JOURNAL_SOCKET).is_ok()
}

#[cfg(test)]
mod tests {
    /// Every id is explained in the catalog file that `make install` ships.
    #[test]
    fn every_id_is_in_the_catalog_file() {
        let cat = include_str!("../../dist/picortex.catalog");
        for id in super::ENTRIES
            .iter()
            .map(|e| e.1)
            .chain([super::CONFIG_INVALID])
        {
            assert_eq!(id.len(), 32);
            assert!(
                cat.contains(&format!("-- {id}\n")),
                "{id} not in dist/picortex.catalog"
            );
        }
    }
}
