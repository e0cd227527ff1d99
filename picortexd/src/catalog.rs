//! Journal message ids (`MESSAGE_ID=`) of the events an operator may need explained; the
//! explanations are in dist/picortex.catalog, installed to /usr/lib/systemd/catalog/, so
//! `journalctl -x` shows them. tracing-journald prefixes every field it sends (PICORTEX_…), so
//! these events are sent with [`send`], which writes the journal's native protocol itself.

use std::os::unix::net::UnixDatagram;

/// The configuration or a credential is wrong: the gateway refused to start or to reload.
pub const CONFIG_INVALID: &str = "5a0b2f8e7c3d4b6a9e1f0c2d3b4a5968";

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
