//! The two documents that cross a turn unit's boundary. The gateway writes a `TurnRequest` into a
//! sealed memfd that becomes the unit's stdin (or, for a unit started ahead of its turn, into a
//! pipe whose write end it keeps until the turn comes); `picortex-run` writes exactly one `TurnResult` line
//! to its stdout, which is a file the gateway created in its own state directory and handed over
//! as a file descriptor. Neither ever passes through the chat's home or the unit's environment.
//!
//! Everything `picortex-run` writes is untrusted input for the gateway: the chat user controls the
//! process that writes it. Parse with limits and treat unknown values as failures: the gateway
//! reads a result only through [`parse_result_document`] (one line, one document, every value
//! bounded by [`TurnResult::validate`]).

use crate::ids::{is_session_id, TurnId};
use serde::{Deserialize, Serialize};

/// The largest request picortex-run will read from stdin.
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;
/// The largest result file the gateway will read.
pub const MAX_RESULT_BYTES: u64 = 4 << 20;
/// The longest reply text a result may carry (picortex-run shortens a longer one).
pub const MAX_RESULT_TEXT_BYTES: usize = 1 << 20;
/// The longest operator-facing error a result may carry.
pub const MAX_RESULT_ERROR_BYTES: usize = 8 << 10;
/// The most one turn may say it cost. No single agent run costs this much; a larger figure is a
/// lie that would distort the chat's daily budget.
pub const MAX_TURN_COST_USD: f64 = 1000.0;
/// The most tokens of any one kind a turn may report.
pub const MAX_TURN_TOKENS: u64 = 1_000_000_000;
/// The longest a turn may say it took: the longest RuntimeMaxSec the helper accepts.
pub const MAX_TURN_DURATION_MS: u64 = 24 * 3600 * 1000;
/// The most agent turns one run may report.
pub const MAX_TURN_NUM_TURNS: u64 = 1_000_000;

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
    /// The agent failed and the chat's home is at its disk quota (picortex-run tried a write
    /// there and got EDQUOT or ENOSPC): the likely cause, and one only the operator can lift.
    DiskFull,
    /// picortex-run refused to run the agent (wrong user, wrong place, bad request).
    Refused,
    /// A unit started ahead of its turn (a spare) ended without receiving a request: its stdin
    /// closed empty. Nothing ran; the gateway starts the turn again if one was meant for it.
    NoRequest,
    /// The unit's sandbox no longer held when its turn came: its view of the user database was
    /// replaced by the real one (useradd or userdel renamed /etc/passwd or /etc/group after the
    /// unit started, which detaches the view). Nothing ran; the gateway starts the turn again
    /// in a fresh unit.
    StaleSandbox,
}

impl Outcome {
    /// Its name, as in the result document and the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::AgentError => "agent_error",
            Outcome::EmptyOutput => "empty_output",
            Outcome::BadOutput => "bad_output",
            Outcome::OutOfMemory => "out_of_memory",
            Outcome::AgentFailed => "agent_failed",
            Outcome::DiskFull => "disk_full",
            Outcome::Refused => "refused",
            Outcome::NoRequest => "no_request",
            Outcome::StaleSandbox => "stale_sandbox",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
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

/// The directory of a chat's home whose files are sent to the chat after a turn (media out):
/// the agent writes them, picortex-run reports that there are some (`TurnResult::outbox`), the
/// helper collects them as root.
pub const OUTBOX_DIR: &str = "outbox";

/// The one document picortex-run writes. The gateway accepts it only through
/// [`parse_result_document`]: one line, known fields, every value within [`TurnResult::validate`]'s bounds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
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
    /// Whether the chat's `outbox/` (`OUTBOX_DIR`) held anything when picortex-run was done:
    /// the gateway asks the helper to collect it only then. A turn that says no while it has
    /// files only puts its own files off to a later turn.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outbox: bool,
    // --- consent (SPEC C2, C3) ---
    /// What the agent asked the owner for through picortex-run's MCP tools during this turn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<crate::consent::AccessRequest>,
    // --- end consent ---
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
            outbox: false,
            requests: Vec::new(),
        }
    }

    /// Every value within its bounds: the turn id well-formed, the session id a UUID, the cost
    /// finite and in `0..=MAX_TURN_COST_USD`, token counts, duration and turn count bounded,
    /// text and error bounded in bytes, a signal a signal number.
    pub fn validate(&self) -> Result<(), ResultError> {
        let bad = |what: String| Err(ResultError::OutOfBounds(what));
        if TurnId::parse(&self.turn_id).is_err() {
            return bad(format!("turn id {:?}", clip(&self.turn_id)));
        }
        if let Some(s) = self.session_id.as_deref().filter(|s| !is_session_id(s)) {
            return bad(format!("session id {:?} is not a UUID", clip(s)));
        }
        if let Some(c) = self.cost_usd {
            if !(c.is_finite() && (0.0..=MAX_TURN_COST_USD).contains(&c)) {
                return bad(format!("cost_usd {c} outside 0..={MAX_TURN_COST_USD}"));
            }
        }
        if let Some(u) = &self.usage {
            for (k, n) in [
                ("input_tokens", u.input_tokens),
                ("output_tokens", u.output_tokens),
                ("cache_read_input_tokens", u.cache_read_input_tokens),
                ("cache_creation_input_tokens", u.cache_creation_input_tokens),
            ] {
                if n > MAX_TURN_TOKENS {
                    return bad(format!("{k} {n} above {MAX_TURN_TOKENS}"));
                }
            }
        }
        if let Some(d) = self.duration_ms.filter(|d| *d > MAX_TURN_DURATION_MS) {
            return bad(format!("duration_ms {d} above {MAX_TURN_DURATION_MS}"));
        }
        if let Some(n) = self.num_turns.filter(|n| *n > MAX_TURN_NUM_TURNS) {
            return bad(format!("num_turns {n} above {MAX_TURN_NUM_TURNS}"));
        }
        if let Some(s) = self.signal.filter(|s| !(1..=64).contains(s)) {
            return bad(format!("signal {s}"));
        }
        if let Some(t) = self
            .text
            .as_deref()
            .filter(|t| t.len() > MAX_RESULT_TEXT_BYTES)
        {
            return bad(format!(
                "text of {} bytes above {MAX_RESULT_TEXT_BYTES}",
                t.len()
            ));
        }
        if let Some(e) = self
            .error
            .as_deref()
            .filter(|e| e.len() > MAX_RESULT_ERROR_BYTES)
        {
            return bad(format!(
                "error of {} bytes above {MAX_RESULT_ERROR_BYTES}",
                e.len()
            ));
        }
        // consent: a bounded number of well-formed requests
        if self.requests.len() > crate::consent::MAX_REQUESTS_PER_TURN {
            return bad(format!(
                "{} access requests, more than {}",
                self.requests.len(),
                crate::consent::MAX_REQUESTS_PER_TURN
            ));
        }
        for r in &self.requests {
            r.validate()
                .map_err(|e| ResultError::OutOfBounds(format!("access request: {e}")))?;
        }
        Ok(())
    }
}

/// Why a result document was not accepted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResultError {
    #[error("result document is larger than {MAX_RESULT_BYTES} bytes")]
    TooLarge,
    #[error("result document is not UTF-8")]
    NotUtf8,
    #[error("result document is not one line ending in a newline ({0} lines)")]
    NotOneLine(usize),
    #[error("result document is not a turn result: {0}")]
    Malformed(String),
    #[error("result document is for turn {0:?}")]
    OtherTurn(String),
    #[error("result document out of bounds: {0}")]
    OutOfBounds(String),
}

/// The gateway's reading of a result file: `Ok(None)` when it is empty (picortex-run never wrote
/// one), else exactly one newline-terminated line holding one [`TurnResult`] for `turn_id` that
/// passes [`TurnResult::validate`]. Anything else, including a second line before or after a
/// valid one, is refused: the file's writer is untrusted, and a forged line must not be chosen
/// over, or instead of, the real one.
pub fn parse_result_document(
    bytes: &[u8],
    turn_id: &str,
) -> Result<Option<TurnResult>, ResultError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() as u64 > MAX_RESULT_BYTES {
        return Err(ResultError::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ResultError::NotUtf8)?;
    let lines = text.split_inclusive('\n').count();
    let Some(line) = text
        .strip_suffix('\n')
        .filter(|l| lines == 1 && !l.contains('\r'))
    else {
        return Err(ResultError::NotOneLine(lines));
    };
    let r: TurnResult =
        serde_json::from_str(line).map_err(|e| ResultError::Malformed(clip(&e.to_string())))?;
    if r.turn_id != turn_id {
        return Err(ResultError::OtherTurn(clip(&r.turn_id)));
    }
    r.validate()?;
    Ok(Some(r))
}

/// Hostile values are quoted in errors, never at length.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_are_the_documents() {
        for o in [
            Outcome::Ok,
            Outcome::AgentError,
            Outcome::EmptyOutput,
            Outcome::BadOutput,
            Outcome::OutOfMemory,
            Outcome::AgentFailed,
            Outcome::DiskFull,
            Outcome::Refused,
            Outcome::NoRequest,
            Outcome::StaleSandbox,
        ] {
            assert_eq!(
                serde_json::to_string(&o).unwrap(),
                format!("\"{}\"", o.as_str())
            );
        }
    }

    const TURN: &str = "0123456789abcdef0123456789abcdef";
    const SID: &str = "c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10";

    fn ok() -> TurnResult {
        TurnResult {
            turn_id: TURN.into(),
            outcome: Outcome::Ok,
            text: Some("hello".into()),
            session_id: Some(SID.into()),
            new_session: false,
            cost_usd: Some(0.0123),
            usage: Some(Usage {
                input_tokens: 10,
                output_tokens: 20,
                ..Usage::default()
            }),
            duration_ms: Some(1500),
            num_turns: Some(1),
            exit_code: Some(0),
            signal: None,
            error: None,
            outbox: true,
            requests: Vec::new(),
        }
    }

    fn doc(r: &TurnResult) -> Vec<u8> {
        let mut v = serde_json::to_vec(r).unwrap();
        v.push(b'\n');
        v
    }

    #[test]
    fn a_real_result_is_valid() {
        ok().validate().unwrap();
        TurnResult::failure(TURN, Outcome::Refused, "no")
            .validate()
            .unwrap();
        let max = TurnResult {
            cost_usd: Some(MAX_TURN_COST_USD),
            text: Some("x".repeat(MAX_RESULT_TEXT_BYTES)),
            duration_ms: Some(MAX_TURN_DURATION_MS),
            signal: Some(9),
            ..ok()
        };
        max.validate().unwrap();
    }

    #[test]
    fn values_out_of_bounds_are_refused() {
        let cases: Vec<(&str, TurnResult)> = vec![
            (
                "negative cost",
                TurnResult {
                    cost_usd: Some(-1000.0),
                    ..ok()
                },
            ),
            (
                "slightly negative cost",
                TurnResult {
                    cost_usd: Some(-1e-9),
                    ..ok()
                },
            ),
            (
                "huge cost",
                TurnResult {
                    cost_usd: Some(MAX_TURN_COST_USD + 0.01),
                    ..ok()
                },
            ),
            (
                "infinite cost",
                TurnResult {
                    cost_usd: Some(f64::INFINITY),
                    ..ok()
                },
            ),
            (
                "NaN cost",
                TurnResult {
                    cost_usd: Some(f64::NAN),
                    ..ok()
                },
            ),
            (
                "session not a uuid",
                TurnResult {
                    session_id: Some("../../etc".into()),
                    ..ok()
                },
            ),
            (
                "turn id",
                TurnResult {
                    turn_id: "x".into(),
                    ..ok()
                },
            ),
            (
                "tokens",
                TurnResult {
                    usage: Some(Usage {
                        cache_read_input_tokens: MAX_TURN_TOKENS + 1,
                        ..Usage::default()
                    }),
                    ..ok()
                },
            ),
            (
                "duration",
                TurnResult {
                    duration_ms: Some(MAX_TURN_DURATION_MS + 1),
                    ..ok()
                },
            ),
            (
                "num_turns",
                TurnResult {
                    num_turns: Some(u64::MAX),
                    ..ok()
                },
            ),
            (
                "signal",
                TurnResult {
                    signal: Some(-1),
                    ..ok()
                },
            ),
            (
                "text",
                TurnResult {
                    text: Some("x".repeat(MAX_RESULT_TEXT_BYTES + 1)),
                    ..ok()
                },
            ),
            (
                "error",
                TurnResult {
                    error: Some("e".repeat(MAX_RESULT_ERROR_BYTES + 1)),
                    ..ok()
                },
            ),
        ];
        for (what, r) in cases {
            assert!(
                matches!(r.validate(), Err(ResultError::OutOfBounds(_))),
                "{what} accepted"
            );
        }
    }

    #[test]
    fn access_requests_are_bounded_like_the_rest() {
        use crate::consent::{AccessRequest, MAX_REQUESTS_PER_TURN};
        let req = |w: &str| AccessRequest::Read {
            what: w.into(),
            why: "x".into(),
        };
        let ok_one = TurnResult {
            requests: vec![req("notes/a.md")],
            ..ok()
        };
        assert_eq!(
            parse_result_document(&doc(&ok_one), TURN).unwrap(),
            Some(ok_one)
        );
        for bad in [
            vec![req("/etc/shadow")],
            vec![req("../x")],
            (0..=MAX_REQUESTS_PER_TURN)
                .map(|i| req(&format!("f{i}")))
                .collect(),
        ] {
            let r = TurnResult {
                requests: bad,
                ..ok()
            };
            assert!(
                matches!(
                    parse_result_document(&doc(&r), TURN),
                    Err(ResultError::OutOfBounds(_))
                ),
                "{r:?}"
            );
        }
    }

    #[test]
    fn the_reader_takes_exactly_one_line() {
        let one = doc(&ok());
        assert_eq!(parse_result_document(&one, TURN).unwrap(), Some(ok()));
        assert_eq!(parse_result_document(b"", TURN).unwrap(), None);

        // A forged line before or after the real one: neither is chosen.
        let forged = TurnResult {
            text: Some("FORGED".into()),
            cost_usd: Some(0.0),
            ..ok()
        };
        for two in [
            [doc(&forged), one.clone()].concat(),
            [one.clone(), doc(&forged)].concat(),
            [one.clone(), b"\n".to_vec()].concat(),
            [b"\n".to_vec(), one.clone()].concat(),
        ] {
            assert!(
                matches!(
                    parse_result_document(&two, TURN),
                    Err(ResultError::NotOneLine(_))
                ),
                "{}",
                String::from_utf8_lossy(&two)
            );
        }
        // Not newline-terminated, CR, whitespace, garbage, bytes.
        let unterminated = &one[..one.len() - 1];
        for bad in [
            unterminated.to_vec(),
            [unterminated, b"\r\n"].concat(),
            b"\n".to_vec(),
            b"   \n".to_vec(),
            b"not json\n".to_vec(),
            b"[]\n".to_vec(),
            vec![0xff, b'\n'],
        ] {
            assert!(parse_result_document(&bad, TURN).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_reader_refuses_other_turns_unknown_fields_and_bad_values() {
        let one = doc(&ok());
        assert!(matches!(
            parse_result_document(&one, "ffffffffffffffffffffffffffffffff"),
            Err(ResultError::OtherTurn(_))
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&one).unwrap();
        v["extra"] = serde_json::json!(1);
        let extra = format!("{v}\n");
        assert!(matches!(
            parse_result_document(extra.as_bytes(), TURN),
            Err(ResultError::Malformed(_))
        ));
        let neg = doc(&TurnResult {
            cost_usd: Some(-1000.0),
            ..ok()
        });
        assert!(matches!(
            parse_result_document(&neg, TURN),
            Err(ResultError::OutOfBounds(_))
        ));
        let big = vec![b' '; MAX_RESULT_BYTES as usize + 1];
        assert_eq!(
            parse_result_document(&big, TURN),
            Err(ResultError::TooLarge)
        );
    }
}
