//! The two documents that cross a turn unit's boundary. The gateway writes a `TurnRequest` into a
//! sealed memfd that becomes the unit's stdin (or, for a unit started ahead of its turn, into a
//! pipe whose write end it keeps until the turn comes); `picortex-run` writes exactly one `TurnResult` line
//! to its stdout, which is a file the gateway created in its own state directory and handed over
//! as a file descriptor. Neither ever passes through the chat's home or the unit's environment.
//!
//! Everything `picortex-run` writes is untrusted input for the gateway: the chat user controls the
//! process that writes it. Parse with limits and treat unknown values as failures.

use serde::{Deserialize, Serialize};

/// The largest request picortex-run will read from stdin.
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;
/// The largest result file the gateway will read.
pub const MAX_RESULT_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TurnRequest {
    /// 32 hex; must equal the `--turn` argument picortex-run was started with.
    pub turn_id: String,
    pub chat_id: String,
    /// The chat's agent session (a UUID).
    pub session_id: String,
    /// false: first turn of this session (`--session-id`); true: `--resume`.
    pub resume: bool,
    /// The text the agent is asked to answer. Goes to the agent's stdin, which is then closed.
    pub prompt: String,
    /// `--permission-mode` for the agent, pinned on every turn (resume does not restore it).
    pub permission_mode: String,
    /// Text appended to the agent's system prompt (`--append-system-prompt`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_system_prompt: Option<String>,
    /// What the turn is for; an answer unless said otherwise.
    #[serde(default, skip_serializing_if = "TurnKind::is_answer")]
    pub kind: TurnKind,
    /// `--model` for this turn, overriding `[agent] model` (the discriminator's small model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// What a turn is for (SPEC A3).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TurnKind {
    /// Answer the prompt in the chat's agent session.
    #[default]
    Answer,
    /// Say whether the bot should answer at all: the chat's discriminator prompt
    /// (`~/.picortex/prompts/discriminator.md`) over the message, with the request's model, in
    /// a throwaway session (nothing persisted, the chat's session untouched). The result's text
    /// carries a score between 0 and 1.
    Discriminate,
}

impl TurnKind {
    pub fn is_answer(&self) -> bool {
        *self == TurnKind::Answer
    }
}

/// How a turn ended, as picortex-run saw it. The gateway combines it with the unit's own
/// `Result` (timeout, oom-kill, signal) when picortex-run could not write one.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The agent answered (`is_error: false`, non-empty `result`).
    Ok,
    /// The agent ran and reported `is_error: true` (rate limit, auth, budget…).
    AgentError,
    /// The agent printed nothing (the CLI's silent-exit failure mode).
    EmptyOutput,
    /// The agent printed something that is not a result document.
    BadOutput,
    /// The agent process was killed by the kernel's OOM killer.
    OutOfMemory,
    /// The agent exited or died without a result for another reason.
    AgentFailed,
    /// picortex-run refused to run the agent (wrong user, wrong place, bad request).
    Refused,
    /// A unit started ahead of its turn (a spare) ended without receiving a request: its stdin
    /// closed empty. Nothing ran; the gateway starts the turn again if one was meant for it.
    NoRequest,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TurnResult {
    pub turn_id: String,
    pub outcome: Outcome,
    /// The reply text (Ok) or the agent's own error text (AgentError).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The session the agent actually used; differs from the request when picortex-run had to
    /// start a new session because the old one was gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// true when the requested session could not be resumed and a new one was started.
    #[serde(default)]
    pub new_session: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_turns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// A short, operator-facing reason when the outcome is not Ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TurnResult {
    pub fn failure(turn_id: &str, outcome: Outcome, error: impl Into<String>) -> Self {
        Self {
            turn_id: turn_id.to_owned(),
            outcome,
            text: None,
            session_id: None,
            new_session: false,
            cost_usd: None,
            usage: None,
            duration_ms: None,
            num_turns: None,
            exit_code: None,
            signal: None,
            error: Some(error.into()),
        }
    }
}
