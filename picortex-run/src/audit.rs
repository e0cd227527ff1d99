//! The audit trail: structured journal entries at the start and end of every turn (and one for
//! a refusal or a session recovery), with `PICORTEX_`-prefixed fields, so
//! `journalctl PICORTEX_CHAT=<chat id>` shows the turn beside the gateway's own entries.
//! Without a journal socket (a developer machine) the entries go to stderr as text; the result
//! file is never stdout or stderr by then (see `channel`), so it never carries logs.

use crate::preflight::Identity;
use picortex_proto::turn::{Outcome, TurnRequest, TurnResult};
use std::time::Duration;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::prelude::*;

pub const SYSLOG_IDENTIFIER: &str = "picortex-run";
pub const FIELD_PREFIX: &str = "PICORTEX";

/// Install the journald layer (`SYSLOG_IDENTIFIER=picortex-run`, fields `PICORTEX_*`), or a
/// plain stderr logger when there is no journal. Calling it twice is harmless.
pub fn init() {
    match tracing_journald::layer() {
        Ok(layer) => {
            let layer = layer
                .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned())
                .with_field_prefix(Some(FIELD_PREFIX.to_owned()));
            let _ = tracing_subscriber::registry()
                .with(LevelFilter::INFO)
                .with(layer)
                .try_init();
        }
        Err(_) => {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_max_level(LevelFilter::INFO)
                .try_init();
        }
    }
}

/// Before the agent runs. `agent` is the argv (the prompt is never in it).
pub fn turn_started(req: &TurnRequest, id: &Identity, agent: &str) {
    tracing::info!(
        turn = %req.turn_id,
        chat = %req.chat_id,
        user = %id.user,
        uid = id.uid,
        session = %req.session_id,
        resume = req.resume,
        agent = %agent,
        "turn started"
    );
}

/// The first run could not use the session as asked; the second (and last) run will.
pub fn session_recovery(
    req: &TurnRequest,
    id: &Identity,
    reason: &str,
    agent: &str,
    session: &str,
) {
    tracing::warn!(
        turn = %req.turn_id,
        chat = %req.chat_id,
        user = %id.user,
        uid = id.uid,
        session = %session,
        agent = %agent,
        reason = %reason,
        "retrying the turn with another session flag"
    );
}

/// After the turn, whatever its outcome.
pub fn turn_finished(req: &TurnRequest, id: &Identity, r: &TurnResult, elapsed: Duration) {
    let outcome = r.outcome.as_str();
    let exit = r
        .exit_code
        .map_or_else(|| "-".to_owned(), |c| c.to_string());
    let signal = r.signal.map_or_else(|| "-".to_owned(), |s| s.to_string());
    let session = r.session_id.as_deref().unwrap_or(&req.session_id);
    let error = r.error.as_deref().unwrap_or("");
    let cost = r.cost_usd.unwrap_or(0.0);
    let ms = elapsed.as_millis() as u64;
    if r.outcome == Outcome::Ok {
        tracing::info!(
            turn = %req.turn_id, chat = %req.chat_id, user = %id.user, uid = id.uid,
            session = %session, new_session = r.new_session, outcome, exit = %exit, signal = %signal,
            duration_ms = ms, cost_usd = cost,
            "turn finished: {outcome}"
        );
    } else {
        tracing::warn!(
            turn = %req.turn_id, chat = %req.chat_id, user = %id.user, uid = id.uid,
            session = %session, new_session = r.new_session, outcome, exit = %exit, signal = %signal,
            duration_ms = ms, cost_usd = cost, error = %error,
            "turn finished: {outcome}: {error}"
        );
    }
}

/// picortex-run would not run the agent. Whatever is known of who asked is recorded.
pub fn turn_refused(turn: &str, chat: Option<&str>, reason: &str) {
    let uid = nix::unistd::getuid().as_raw();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| "?".to_owned(), |u| u.name);
    tracing::warn!(
        turn = %turn,
        chat = %chat.unwrap_or("-"),
        user = %user,
        uid,
        outcome = "refused",
        error = %reason,
        "turn refused: {reason}"
    );
}
