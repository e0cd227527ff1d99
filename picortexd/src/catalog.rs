//! Journal message ids (`MESSAGE_ID=`) of the events an operator may need explained; the
//! explanations are in dist/picortex.catalog, installed to /usr/lib/systemd/catalog/, so
//! `journalctl -x` shows them. tracing-journald prefixes every field of an event (PICORTEX_…),
//! so an event gets its id from its target instead: `tracing::warn!(target: TURN_FAILED.0, …)`
//! goes to a journald layer of its own that adds `MESSAGE_ID=` (main.rs), keeping the span's
//! `PICORTEX_CHAT`/`PICORTEX_TURN`. Before logging is set up, [`send`] writes one entry itself.

use std::os::unix::net::UnixDatagram;

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
