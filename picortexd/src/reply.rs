//! What the chat is told when a turn ends (SPEC T4): the agent's answer, or one short, specific,
//! honest sentence about what went wrong. The stored `outcome` names the case for operators.

use picortex_proto::turn::{Outcome, TurnResult};

use crate::bus::UnitEnd;
use crate::config::Config;
use crate::outcome::TurnOutcome as O;

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub outcome: O,
    pub text: String,
    /// For the log: why it was not an answer.
    pub error: Option<String>,
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GB", bytes >> 30)
    } else {
        format!("{} MB", bytes >> 20)
    }
}

fn minutes(secs: u64) -> String {
    if secs >= 120 {
        format!("{} minutes", secs / 60)
    } else {
        format!("{secs} seconds")
    }
}

/// The reply for a failure that has no agent output to go on.
pub fn for_failure(outcome: O, cfg: &Config) -> String {
    match outcome {
        O::Timeout => format!("That took too long (over {}), so I stopped it. Try a smaller request?", minutes(cfg.turns.runtime_max_s)),
        O::OutOfMemory => format!("I ran out of memory (this chat's limit is {}) and had to stop. Try a smaller request?", human_size(cfg.memory_max_bytes())),
        O::HelperUnavailable | O::HelperDenied => "I can't start work right now: my system helper isn't available. The operator has been told.".into(),
        O::UnitFailedToStart => "I couldn't start the agent for this chat. The operator has been told.".into(),
        O::BudgetExhausted => "This chat has used up today's budget for the AI, so I'll pause until midnight UTC.".into(),
        O::Interrupted => "I was interrupted (the server restarted) before I could finish that. Please send it again.".into(),
        O::EmptyOutput => "The agent finished without an answer. Please try again.".into(),
        O::BadOutput => "The agent's answer came back garbled, so I dropped it. Please try again.".into(),
        O::Refused => "I couldn't run the agent for this chat (a setup problem). The operator has been told.".into(),
        O::AgentFailed => "The agent stopped unexpectedly before answering. Please try again.".into(),
        O::DiskFull => "This chat's storage is full (it has used all of its disk quota), so the agent can't work here. The operator has been told.".into(),
        _ => "Something went wrong on my side and I couldn't answer. The operator has been told.".into(),
    }
}

/// Say what an agent error means in a sentence, without passing on raw internals.
fn agent_error_text(text: &str) -> String {
    let l = text.to_lowercase();
    if l.contains("overloaded") || l.contains("529") {
        // The real CLI, after its retries: "API Error: Repeated 529 Overloaded errors…".
        "The AI service is overloaded right now. Try again in a few minutes.".into()
    } else if l.contains("rate limit") || l.contains("429") || l.contains("session limit") {
        "The AI service is rate-limiting me right now. Try again in a few minutes.".into()
    } else if l.contains("connection to the api was lost")
        || l.contains("econnreset")
        || l.contains("internal server error")
        || l.contains("api error: 5")
    {
        // "API Error: 500 Internal server error…", "API Error: Connection to the API was lost
        // (ECONNRESET)…": the service failed mid-answer, after the CLI's own retries.
        "The AI service failed while answering (a server or connection error). Please try again."
            .into()
    } else if l.contains("not logged in")
        || l.contains("invalid api key")
        || l.contains("login expired")
        || l.contains("apikeyhelper")
        || l.contains("authentication")
    {
        "I can't reach the AI service: my credentials were refused. The operator has to fix that."
            .into()
    } else if l.contains("budget") || l.contains("credit") || l.contains("billing") {
        "I've hit my spending limit, so I can't answer until it's raised.".into()
    } else {
        let short: String = text.chars().take(200).collect();
        format!("The agent reported an error: {short}")
    }
}

pub fn compose(end: Option<&UnitEnd>, result: Option<&TurnResult>, cfg: &Config) -> Reply {
    let unit_result = end.map(|e| e.result.as_str()).unwrap_or("");
    let fail = |outcome: O, error: String| Reply {
        outcome,
        text: for_failure(outcome, cfg),
        error: Some(error),
    };
    if unit_result == "timeout" {
        return fail(
            O::Timeout,
            format!("unit exceeded RuntimeMaxSec={}", cfg.turns.runtime_max_s),
        );
    }
    if unit_result == "oom-kill" || result.is_some_and(|r| r.outcome == Outcome::OutOfMemory) {
        return fail(
            O::OutOfMemory,
            "killed by the kernel OOM killer at the chat's MemoryMax".into(),
        );
    }
    let Some(r) = result else {
        return match end {
            // picortex-run itself never ran (exec failure, user missing, …).
            Some(e) if e.exec_main_code == 1 && e.exec_main_status >= 200 => fail(
                O::UnitFailedToStart,
                format!(
                    "unit {} with status {} (systemd could not start picortex-run)",
                    e.result, e.exec_main_status
                ),
            ),
            Some(e) => fail(
                O::AgentFailed,
                format!(
                    "no result; unit {} (code {}, status {})",
                    e.result, e.exec_main_code, e.exec_main_status
                ),
            ),
            None => fail(O::Interrupted, "no unit and no result".into()),
        };
    };
    let mut reply = match r.outcome {
        Outcome::Ok => match r.text.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => Reply {
                outcome: O::Ok,
                text: t.to_owned(),
                error: None,
            },
            _ => fail(O::EmptyOutput, "agent answered with empty text".into()),
        },
        Outcome::AgentError => {
            let t = r
                .text
                .clone()
                .or_else(|| r.error.clone())
                .unwrap_or_default();
            Reply {
                outcome: O::AgentError,
                text: agent_error_text(&t),
                error: Some(t),
            }
        }
        Outcome::EmptyOutput => fail(
            O::EmptyOutput,
            r.error
                .clone()
                .unwrap_or_else(|| "agent printed nothing".into()),
        ),
        Outcome::BadOutput => fail(O::BadOutput, r.error.clone().unwrap_or_default()),
        Outcome::Refused => fail(O::Refused, r.error.clone().unwrap_or_default()),
        // Handled before composing (the turn is started again); never a reply on its own.
        Outcome::NoRequest => fail(O::Interrupted, "a spare unit got no request".into()),
        Outcome::StaleSandbox => fail(O::Refused, r.error.clone().unwrap_or_default()),
        Outcome::AgentFailed => fail(O::AgentFailed, r.error.clone().unwrap_or_default()),
        Outcome::DiskFull => fail(O::DiskFull, r.error.clone().unwrap_or_default()),
        Outcome::OutOfMemory => fail(O::OutOfMemory, r.error.clone().unwrap_or_default()),
    };
    if r.new_session && reply.outcome == O::Ok {
        reply.text = format!(
            "(I had lost our earlier conversation, so I started a fresh one.)\n\n{}",
            reply.text
        );
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::parse("", "t").unwrap()
    }
    fn end(result: &str, code: i32, status: i32) -> UnitEnd {
        UnitEnd {
            active_state: "failed".into(),
            result: result.into(),
            exec_main_code: code,
            exec_main_status: status,
        }
    }
    fn res(outcome: Outcome, text: Option<&str>) -> TurnResult {
        let mut r = TurnResult::failure("t", outcome, "e");
        r.text = text.map(str::to_owned);
        r
    }

    #[test]
    fn answers_pass_through() {
        let r = compose(
            Some(&end("success", 1, 0)),
            Some(&res(Outcome::Ok, Some(" hi "))),
            &cfg(),
        );
        assert_eq!((r.outcome, r.text.as_str()), (O::Ok, "hi"));
    }

    #[test]
    fn each_failure_has_its_own_words() {
        let c = cfg();
        let cases = [
            (
                compose(Some(&end("timeout", 2, 15)), None, &c),
                "timeout",
                "too long",
            ),
            (
                compose(Some(&end("oom-kill", 2, 9)), None, &c),
                "out_of_memory",
                "memory",
            ),
            (
                compose(
                    Some(&end("signal", 2, 9)),
                    Some(&res(Outcome::OutOfMemory, None)),
                    &c,
                ),
                "out_of_memory",
                "1 GB",
            ),
            (
                compose(Some(&end("exit-code", 1, 217)), None, &c),
                "unit_failed_to_start",
                "couldn't start",
            ),
            (
                compose(
                    Some(&end("success", 1, 0)),
                    Some(&res(Outcome::EmptyOutput, None)),
                    &c,
                ),
                "empty_output",
                "without an answer",
            ),
            (
                compose(
                    Some(&end("success", 1, 0)),
                    Some(&res(
                        Outcome::AgentError,
                        Some("API Error: Rate limit reached"),
                    )),
                    &c,
                ),
                "agent_error",
                "rate-limiting",
            ),
            (
                compose(
                    Some(&end("success", 1, 0)),
                    Some(&res(
                        Outcome::AgentError,
                        Some("Invalid API key · Fix external API key"),
                    )),
                    &c,
                ),
                "agent_error",
                "credentials",
            ),
            (compose(None, None, &c), "interrupted", "interrupted"),
        ];
        // What the real CLI (2.1.330) says after its retries, as tests/real_cli.rs sees it.
        for (said, words) in [
            (
                "API Error: Repeated 529 Overloaded errors. The API is at capacity",
                "overloaded",
            ),
            (
                "API Error: Request rejected (429) · Number of request tokens",
                "rate-limiting",
            ),
            (
                "API Error: 500 Internal server error. This is a server-side issue",
                "failed while answering",
            ),
            (
                "API Error: Connection to the API was lost (ECONNRESET).",
                "failed while answering",
            ),
        ] {
            let r = compose(
                Some(&end("success", 1, 0)),
                Some(&res(Outcome::AgentError, Some(said))),
                &c,
            );
            assert!(r.text.contains(words), "{said}: {:?}", r.text);
        }
        for (r, outcome, words) in cases {
            assert_eq!(r.outcome.as_str(), outcome);
            assert!(r.text.contains(words), "{outcome}: {:?}", r.text);
        }
    }

    #[test]
    fn a_new_session_is_told_once() {
        let mut r = res(Outcome::Ok, Some("answer"));
        r.new_session = true;
        let out = compose(Some(&end("success", 1, 0)), Some(&r), &cfg());
        assert!(out.text.starts_with("(I had lost our earlier conversation"));
        assert!(out.text.ends_with("answer"));
    }
}
