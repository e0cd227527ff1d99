//! Journal set-up and the audit record every privileged call ends with (SPEC P4): who called, for
//! which chat, what was asked, and how it ended, as structured `PICORTEX_*` fields.

use tracing_subscriber::prelude::*;

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PICORTEX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match tracing_journald::layer() {
        Ok(j) => {
            let j = j
                .with_syslog_identifier("picortex-provision".into())
                .with_field_prefix(Some("PICORTEX".into()));
            tracing_subscriber::registry().with(filter).with(j).init();
        }
        Err(_) => {
            tracing_subscriber::registry()
                .with(filter)
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                .init();
        }
    }
}

/// Who made a call, as the bus and polkit saw it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub bus_name: String,
    pub uid: Option<u32>,
}

/// One audit record. `outcome` is "ok", "refused" (polkit said no) or "failed".
pub fn record(op: &str, caller: &Caller, chat: &str, turn: &str, outcome: &str, detail: &str) {
    let uid = caller.uid.map(i64::from).unwrap_or(-1);
    match outcome {
        "ok" => tracing::info!(
            audit = true, op, caller = %caller.bus_name, caller_uid = uid, chat, turn, outcome, detail,
            "{op} by uid {uid} ({}): {outcome}{}{detail}", caller.bus_name, sep(detail)
        ),
        _ => tracing::warn!(
            audit = true, op, caller = %caller.bus_name, caller_uid = uid, chat, turn, outcome, detail,
            "{op} by uid {uid} ({}): {outcome}{}{detail}", caller.bus_name, sep(detail)
        ),
    }
}

fn sep(detail: &str) -> &'static str {
    if detail.is_empty() {
        ""
    } else {
        ": "
    }
}
