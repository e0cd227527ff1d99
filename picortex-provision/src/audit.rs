//! Journal set-up and the audit record every privileged call ends with (SPEC P4): who called, for
//! which chat, what was asked, and how it ended, as structured `PICORTEX_*` fields.

use tracing_subscriber::prelude::*;

/// The journal catalog's id for a refused call (dist/picortex.catalog, `journalctl -x`); the
/// refusal is logged with this target, and a journald layer of its own adds `MESSAGE_ID=`
/// (tracing-journald prefixes every event field).
const REFUSED: (&str, &str) = ("catalog::refused", "2b9d6f0e3a1c4e5f9d8a7b6c5e4f3a21");

pub fn init() {
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PICORTEX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let layer = || {
        tracing_journald::layer().map(|j| {
            j.with_syslog_identifier("picortex-provision".into())
                .with_field_prefix(Some("PICORTEX".into()))
                .with_priority_mappings(tracing_journald::PriorityMappings {
                    info: tracing_journald::Priority::Informational,
                    debug: tracing_journald::Priority::Debug,
                    ..tracing_journald::PriorityMappings::new()
                })
        })
    };
    match layer() {
        Ok(j) => {
            let plain = j.with_filter(filter_fn(|m| m.target() != REFUSED.0));
            let refused = layer().ok().map(|l| {
                l.with_custom_fields([("MESSAGE_ID", REFUSED.1)])
                    // Events only: a second tracing-journald layer that saw spans would store its
                    // span fields in the same extension slot as the first (a panic). The audit
                    // record carries all its fields itself.
                    .with_filter(filter_fn(|m| m.target() == REFUSED.0))
            });
            tracing_subscriber::registry()
                .with(filter)
                .with(plain)
                .with(refused)
                .init();
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
        "refused" => tracing::warn!(
            target: REFUSED.0,
            audit = true, op, caller = %caller.bus_name, caller_uid = uid, chat, turn, outcome, detail,
            "{op} by uid {uid} ({}): {outcome}{}{detail}", caller.bus_name, sep(detail)
        ),
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
