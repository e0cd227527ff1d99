//! One turn: seed the onboarding flag, run the agent once, recover a session once if the CLI
//! says the session is missing or taken, and turn what happened into a `TurnResult`. The
//! decision parts ([`classify`], [`recovery`], [`result_line`]) are pure.

use crate::agent::{
    build_argv, build_env, display_argv, oauth_token_fd, passthrough_env, run_agent, SessionArg,
    MAX_AGENT_STDOUT,
};
use crate::audit;
use crate::config::{resolve_command, AgentConfig, AGENT_PATH};
use crate::oom;
use crate::output::{parse_output, AgentOutput};
use crate::preflight::Identity;
use crate::seed::seed_home;
use picortex_proto::ids::{TurnId, OAUTH_CREDENTIAL, TURN_CONFIG_DIR};
use picortex_proto::turn::{
    Outcome, TurnKind, TurnRequest, TurnResult, MAX_RESULT_BYTES, MAX_RESULT_ERROR_BYTES,
    MAX_RESULT_TEXT_BYTES,
};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Instant;

/// The CLI's answer to `--resume` of a transcript it cannot find (research/claude-cli.md §2).
pub const NO_CONVERSATION: &str = "No conversation found with session ID";
/// The CLI's answer to `--session-id` of a transcript that exists: `Error: Session ID <id> is
/// already in use.`
pub const ALREADY_IN_USE: &str = "is already in use";
/// Operator-facing errors are kept short.
const MAX_ERROR_CHARS: usize = 1000;

/// What one run of the agent came to.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub session: SessionArg,
    pub output: AgentOutput,
    pub stdout_overflow: bool,
    pub stderr_tail: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The cgroup's OOM-kill counter went up while the agent ran.
    pub oom_killed: bool,
    pub wall_ms: u64,
}

impl Attempt {
    fn answered(&self) -> bool {
        matches!(&self.output, AgentOutput::Result(r) if !r.is_error)
    }
}

/// The one retry the CLI's session errors call for, if any: `--resume` of a missing session →
/// a new session; `--session-id` of an existing one → `--resume` it.
pub fn recovery(a: &Attempt) -> Option<SessionArg> {
    if a.signal.is_some() || a.answered() {
        return None;
    }
    match &a.session {
        SessionArg::Resume(_) => {
            let said = matches!(&a.output, AgentOutput::Result(r) if r.mentions(NO_CONVERSATION))
                || a.stderr_tail.contains(NO_CONVERSATION);
            said.then(|| SessionArg::New(uuid::Uuid::new_v4().to_string()))
        }
        SessionArg::New(id) => {
            let said = a
                .stderr_tail
                .lines()
                .any(|l| l.contains(ALREADY_IN_USE) && l.contains(id.as_str()));
            said.then(|| SessionArg::Resume(id.clone()))
        }
    }
}

fn last_line(s: &str) -> &str {
    s.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut c: String = s.chars().take(n).collect();
        c.push('…');
        c
    }
}

/// Turn an attempt into a result. Branches on `is_error`, never on the exit code alone; a
/// signal decides before anything the agent printed.
pub fn classify(turn_id: &str, a: &Attempt) -> TurnResult {
    let mut r = TurnResult::failure(turn_id, Outcome::AgentFailed, "");
    r.session_id = Some(a.session.id().to_owned());
    r.exit_code = a.exit_code;
    r.signal = a.signal;
    r.duration_ms = Some(a.wall_ms);
    let stderr_hint = || match last_line(&a.stderr_tail) {
        "" => String::new(),
        l => format!(": {}", clip(l, 300)),
    };
    let (outcome, error): (Outcome, Option<String>) = if let Some(sig) = a.signal {
        if a.oom_killed {
            (
                Outcome::OutOfMemory,
                Some(format!("agent killed by the OOM killer (signal {sig})")),
            )
        } else {
            (
                Outcome::AgentFailed,
                Some(format!("agent killed by signal {sig}{}", stderr_hint())),
            )
        }
    } else if a.stdout_overflow {
        (
            Outcome::BadOutput,
            Some(format!("agent printed more than {MAX_AGENT_STDOUT} bytes")),
        )
    } else {
        match &a.output {
            AgentOutput::Result(ar) => {
                r.cost_usd = ar.total_cost_usd;
                r.usage = ar.usage.clone();
                r.num_turns = ar.num_turns;
                if ar.duration_ms.is_some() {
                    r.duration_ms = ar.duration_ms;
                }
                if ar.is_error {
                    r.text = Some(ar.error_text());
                    let sub = ar.subtype.as_deref().unwrap_or("?");
                    (
                        Outcome::AgentError,
                        Some(format!(
                            "agent reported an error ({sub}): {}",
                            clip(&ar.error_text(), 300)
                        )),
                    )
                } else {
                    match ar.result.as_deref() {
                        Some(t) if !t.trim().is_empty() => {
                            r.text = Some(t.to_owned());
                            (Outcome::Ok, None)
                        }
                        _ => (
                            Outcome::EmptyOutput,
                            Some("agent result has no text".to_owned()),
                        ),
                    }
                }
            }
            AgentOutput::Empty => match a.exit_code {
                Some(0) => (
                    Outcome::EmptyOutput,
                    Some(
                        "agent exited 0 without output (see claude-cli.md §6.2: onboarding state)"
                            .to_owned(),
                    ),
                ),
                Some(c) => (
                    Outcome::AgentFailed,
                    Some(format!("agent exited {c} without output{}", stderr_hint())),
                ),
                None => (
                    Outcome::AgentFailed,
                    Some("agent ended without output".to_owned()),
                ),
            },
            AgentOutput::Bad(why) => {
                let code = a
                    .exit_code
                    .map_or_else(String::new, |c| format!(" (exit {c})"));
                (
                    Outcome::BadOutput,
                    Some(format!("agent output is not a result: {why}{code}")),
                )
            }
        }
    };
    r.outcome = outcome;
    r.error = error.map(|e| clip(&e, MAX_ERROR_CHARS));
    r
}

/// The one line picortex-run writes: the result as JSON, checked as the gateway will check it
/// (`TurnResult::validate`). The reply and error are shortened to their limits, and the reply
/// again if the whole line would not fit [`MAX_RESULT_BYTES`]; a result still out of bounds (an
/// agent that reports an absurd cost, say) is written as `bad_output` instead, so the gateway and
/// the journal agree on why the turn failed.
pub fn result_line(r: &TurnResult) -> String {
    let mut r = r.clone();
    if let Some(t) = &mut r.text {
        shorten(t, MAX_RESULT_TEXT_BYTES);
    }
    if let Some(e) = &mut r.error {
        shorten(e, MAX_RESULT_ERROR_BYTES);
    }
    // A refusal of a malformed --turn keeps its reason: the gateway refuses it by its turn id
    // whatever it says.
    if TurnId::parse(&r.turn_id).is_ok() {
        if let Err(e) = r.validate() {
            r = TurnResult::failure(&r.turn_id, Outcome::BadOutput, clip(&e.to_string(), 300));
        }
    }
    loop {
        let line = serde_json::to_string(&r).unwrap_or_else(|e| {
            format!(r#"{{"turn_id":{},"outcome":"bad_output","error":"cannot encode the result: {e}"}}"#, json_str(&r.turn_id))
        });
        if (line.len() as u64) < MAX_RESULT_BYTES {
            return line + "\n";
        }
        match &mut r.text {
            Some(t) if t.len() > 64 => {
                let mut cut = t.len() / 2;
                while !t.is_char_boundary(cut) {
                    cut -= 1;
                }
                t.truncate(cut);
                t.push_str(TRUNCATED);
            }
            _ => {
                r.text = None;
                r.error = Some("result too large".to_owned());
            }
        }
    }
}

const TRUNCATED: &str = " …[truncated]";

/// Cut `t` to at most `max` bytes, on a character boundary, marking the cut.
fn shorten(t: &mut String, max: usize) {
    if t.len() <= max {
        return;
    }
    let mut cut = max.saturating_sub(TRUNCATED.len());
    while !t.is_char_boundary(cut) {
        cut -= 1;
    }
    t.truncate(cut);
    t.push_str(TRUNCATED);
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn run_once(
    program: &Path,
    config: &AgentConfig,
    req: &TurnRequest,
    id: &Identity,
    env: &[(String, String)],
    session: SessionArg,
) -> Result<Attempt, String> {
    let mut argv = build_argv(config, req, &session);
    // consent (SPEC C2): the agent's way to ask the owner, see `mcp`
    argv.extend(crate::mcp::agent_args(req, &id.home));
    let before = oom::oom_kill_count();
    let started = Instant::now();
    // A subscription token goes to the agent as an inherited descriptor, opened afresh for each
    // run (the CLI consumes it) and closed here once the agent has it.
    let oauth = oauth_token_fd(TURN_CONFIG_DIR)
        .map_err(|e| format!("cannot open the {OAUTH_CREDENTIAL} credential: {e}"))?;
    let mut env = env.to_vec();
    if let Some((_, var)) = &oauth {
        env.push(var.clone());
    }
    let capture = run_agent(program, &argv, &env, &id.home, &req.prompt)
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    drop(oauth);
    let wall_ms = started.elapsed().as_millis() as u64;
    let signal = capture.status.signal();
    let output = parse_output(&capture.stdout);
    if let AgentOutput::Result(r) = &output {
        if r.session_id.as_deref().is_some_and(|s| s != session.id()) {
            tracing::warn!(turn = %req.turn_id, session = %session.id(), "agent reported another session id: {:?}", r.session_id);
        }
    }
    Ok(Attempt {
        oom_killed: signal.is_some() && oom::oom_killed(before, oom::oom_kill_count()),
        session,
        output,
        stdout_overflow: capture.stdout_overflow,
        stderr_tail: capture.stderr_tail,
        exit_code: capture.status.code(),
        signal,
        wall_ms,
    })
}

/// Run one turn for `request` as `identity` (whose home is the working directory) and say how
/// it went. Never panics on agent behaviour; every failure is an outcome. Logs the audit entries
/// for the start and the end of the turn.
pub fn run_turn(config: &AgentConfig, request: &TurnRequest, identity: &Identity) -> TurnResult {
    let started = Instant::now();
    if request.kind == TurnKind::Discriminate {
        let asked = match crate::discriminate::instructions(&identity.home) {
            Ok(i) => crate::discriminate::request(request, &i),
            Err(e) => {
                let r = TurnResult::failure(
                    &request.turn_id,
                    Outcome::Refused,
                    format!("discriminator prompt: {e}"),
                );
                audit::turn_finished(request, identity, &r, started.elapsed());
                return r;
            }
        };
        let session = SessionArg::New(asked.session_id.clone());
        audit::turn_started(
            &asked,
            identity,
            &display_argv(&build_argv(config, &asked, &session)),
        );
        let mut result = execute_once(config, &asked, identity, session);
        // The gateway knows nothing of the throwaway session; report the chat's own.
        result.session_id = None;
        audit::turn_finished(request, identity, &result, started.elapsed());
        return result;
    }
    let first = if request.resume {
        SessionArg::Resume(request.session_id.clone())
    } else {
        SessionArg::New(request.session_id.clone())
    };
    audit::turn_started(
        request,
        identity,
        &display_argv(&build_argv(config, request, &first)),
    );
    // consent (SPEC C2): a fresh file for what the agent asks through the MCP tools, in the
    // ~/.tmp that seeding makes (a failure to seed is reported by `execute`, which seeds again)
    let _ = seed_home(&identity.home);
    if let Err(e) = crate::mcp::prepare(&identity.home, &request.turn_id) {
        tracing::warn!(turn = %request.turn_id, "cannot prepare the access-request file; the agent cannot ask the owner this turn: {e}");
    }
    let mut result = execute(config, request, identity, first);
    result.requests = crate::mcp::collect(&identity.home, &request.turn_id);
    audit::turn_finished(request, identity, &result, started.elapsed());
    result
}

/// One run of the agent, no session recovery (the discriminator's throwaway session).
fn execute_once(
    config: &AgentConfig,
    req: &TurnRequest,
    id: &Identity,
    session: SessionArg,
) -> TurnResult {
    if let Err(e) = seed_home(&id.home) {
        return TurnResult::failure(
            &req.turn_id,
            Outcome::Refused,
            format!("cannot seed the agent's onboarding state: {e}"),
        );
    }
    let program = match resolve_command(&config.command, AGENT_PATH) {
        Ok(p) => p,
        Err(e) => return TurnResult::failure(&req.turn_id, Outcome::AgentFailed, e.to_string()),
    };
    let env = build_env(id, &passthrough_env(config));
    match run_once(&program, config, req, id, &env, session) {
        Ok(a) => classify(&req.turn_id, &a),
        Err(e) => TurnResult::failure(
            &req.turn_id,
            Outcome::AgentFailed,
            clip(&e, MAX_ERROR_CHARS),
        ),
    }
}

fn execute(
    config: &AgentConfig,
    req: &TurnRequest,
    id: &Identity,
    first: SessionArg,
) -> TurnResult {
    let fail = |outcome, msg: String| {
        let mut r = TurnResult::failure(&req.turn_id, outcome, clip(&msg, MAX_ERROR_CHARS));
        r.session_id = Some(req.session_id.clone());
        r
    };
    if let Err(e) = seed_home(&id.home) {
        return fail(
            Outcome::Refused,
            format!("cannot seed the agent's onboarding state: {e}"),
        );
    }
    let program = match resolve_command(&config.command, AGENT_PATH) {
        Ok(p) => p,
        Err(e) => return fail(Outcome::AgentFailed, e.to_string()),
    };
    let env = build_env(id, &passthrough_env(config));
    let attempt = match run_once(&program, config, req, id, &env, first) {
        Ok(a) => a,
        Err(e) => return fail(Outcome::AgentFailed, e),
    };
    let Some(next) = recovery(&attempt) else {
        return classify(&req.turn_id, &attempt);
    };
    let reason = match &next {
        SessionArg::New(_) => "session not found; starting a new one",
        SessionArg::Resume(_) => "session already exists; resuming it",
    };
    audit::session_recovery(
        req,
        id,
        reason,
        &display_argv(&build_argv(config, req, &next)),
        next.id(),
    );
    let new_session = !next.is_resume();
    let first_cost = match &attempt.output {
        AgentOutput::Result(r) => r.total_cost_usd,
        _ => None,
    };
    let mut r = match run_once(&program, config, req, id, &env, next.clone()) {
        Ok(second) => classify(&req.turn_id, &second),
        Err(e) => {
            let mut r = fail(Outcome::AgentFailed, e);
            r.session_id = Some(next.id().to_owned());
            r
        }
    };
    r.new_session = new_session;
    if let Some(c) = first_cost.filter(|c| *c > 0.0) {
        r.cost_usd = Some(r.cost_usd.unwrap_or(0.0) + c);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::AgentResult;

    const SID: &str = "c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10";
    const TURN: &str = "0123456789abcdef0123456789abcdef";

    fn attempt(output: AgentOutput) -> Attempt {
        Attempt {
            session: SessionArg::New(SID.into()),
            output,
            stdout_overflow: false,
            stderr_tail: String::new(),
            exit_code: Some(0),
            signal: None,
            oom_killed: false,
            wall_ms: 12,
        }
    }

    fn ok_result(text: &str) -> AgentOutput {
        AgentOutput::Result(AgentResult {
            is_error: false,
            subtype: Some("success".into()),
            result: Some(text.into()),
            session_id: Some(SID.into()),
            total_cost_usd: Some(0.0046),
            duration_ms: Some(1946),
            num_turns: Some(1),
            ..Default::default()
        })
    }

    #[test]
    fn success() {
        let r = classify(TURN, &attempt(ok_result("Paris.")));
        assert_eq!(r.outcome, Outcome::Ok);
        assert_eq!(r.text.as_deref(), Some("Paris."));
        assert_eq!(r.session_id.as_deref(), Some(SID));
        assert_eq!(
            (r.cost_usd, r.duration_ms, r.num_turns, r.exit_code),
            (Some(0.0046), Some(1946), Some(1), Some(0))
        );
        assert_eq!(r.error, None);
    }

    #[test]
    fn is_error_wins_over_the_exit_code() {
        let out = AgentOutput::Result(AgentResult {
            is_error: true,
            subtype: Some("success".into()),
            result: Some("API Error: Rate limit reached".into()),
            ..Default::default()
        });
        for code in [0, 1] {
            let r = classify(
                TURN,
                &Attempt {
                    exit_code: Some(code),
                    ..attempt(out.clone())
                },
            );
            assert_eq!(r.outcome, Outcome::AgentError);
            assert_eq!(r.text.as_deref(), Some("API Error: Rate limit reached"));
        }
        let out = AgentOutput::Result(AgentResult {
            is_error: true,
            subtype: Some("error_max_turns".into()),
            errors: vec!["Reached maximum number of turns (2)".into(), "x".into()],
            ..Default::default()
        });
        let r = classify(TURN, &attempt(out));
        assert_eq!(
            r.text.as_deref(),
            Some("Reached maximum number of turns (2); x")
        );
        assert!(r.error.unwrap().contains("error_max_turns"));
    }

    #[test]
    fn empty_and_bad_output() {
        let r = classify(TURN, &attempt(AgentOutput::Empty));
        assert_eq!(r.outcome, Outcome::EmptyOutput);
        let r = classify(
            TURN,
            &Attempt {
                exit_code: Some(1),
                stderr_tail: "boom\nError: it broke\n".into(),
                ..attempt(AgentOutput::Empty)
            },
        );
        assert_eq!(r.outcome, Outcome::AgentFailed);
        assert_eq!(
            r.error.as_deref(),
            Some("agent exited 1 without output: Error: it broke")
        );
        let r = classify(TURN, &attempt(ok_result("  ")));
        assert_eq!(r.outcome, Outcome::EmptyOutput);
        let r = classify(
            TURN,
            &attempt(AgentOutput::Bad("output is not JSON".into())),
        );
        assert_eq!(r.outcome, Outcome::BadOutput);
        let r = classify(
            TURN,
            &Attempt {
                stdout_overflow: true,
                ..attempt(ok_result("x"))
            },
        );
        assert_eq!(r.outcome, Outcome::BadOutput);
    }

    #[test]
    fn signals_and_oom() {
        let killed = Attempt {
            exit_code: None,
            signal: Some(9),
            ..attempt(AgentOutput::Empty)
        };
        let r = classify(TURN, &killed);
        assert_eq!(
            (r.outcome, r.signal, r.exit_code),
            (Outcome::AgentFailed, Some(9), None)
        );
        let r = classify(
            TURN,
            &Attempt {
                oom_killed: true,
                ..killed.clone()
            },
        );
        assert_eq!(r.outcome, Outcome::OutOfMemory);
        // A signal decides even if something was printed first.
        let r = classify(
            TURN,
            &Attempt {
                signal: Some(6),
                exit_code: None,
                ..attempt(ok_result("x"))
            },
        );
        assert_eq!(r.outcome, Outcome::AgentFailed);
    }

    #[test]
    fn recovery_rules() {
        let missing = AgentOutput::Result(AgentResult {
            is_error: true,
            subtype: Some("error_during_execution".into()),
            errors: vec![format!("No conversation found with session ID: {SID}")],
            ..Default::default()
        });
        let resumed = Attempt {
            session: SessionArg::Resume(SID.into()),
            exit_code: Some(1),
            ..attempt(missing.clone())
        };
        match recovery(&resumed) {
            Some(SessionArg::New(new)) => {
                assert_ne!(new, SID);
                assert!(crate::request::is_session_id(&new));
            }
            other => panic!("{other:?}"),
        }
        // Text mode says it on stderr.
        let text = Attempt {
            session: SessionArg::Resume(SID.into()),
            stderr_tail: format!("No conversation found with session ID: {SID}\n"),
            ..attempt(AgentOutput::Empty)
        };
        assert!(matches!(recovery(&text), Some(SessionArg::New(_))));

        let taken = Attempt {
            exit_code: Some(1),
            stderr_tail: format!("Error: Session ID {SID} is already in use.\n"),
            ..attempt(AgentOutput::Empty)
        };
        assert_eq!(recovery(&taken), Some(SessionArg::Resume(SID.into())));

        // No recovery for anything else, nor for a `--session-id` run told "not found".
        assert_eq!(recovery(&attempt(ok_result("fine"))), None);
        assert_eq!(
            recovery(&Attempt {
                exit_code: Some(1),
                ..attempt(missing)
            }),
            None
        );
        assert_eq!(
            recovery(&Attempt {
                signal: Some(9),
                ..taken
            }),
            None
        );
        let other_id = Attempt {
            stderr_tail:
                "Error: Session ID 00000000-0000-0000-0000-000000000000 is already in use.".into(),
            ..attempt(AgentOutput::Empty)
        };
        assert_eq!(recovery(&other_id), None);
    }

    #[test]
    fn result_lines_fit_the_gateways_limit() {
        let mut r = classify(TURN, &attempt(ok_result("short")));
        let line = result_line(&r);
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let back: TurnResult = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);

        r.text = Some("é\u{1}".repeat(3 << 20));
        let line = result_line(&r);
        assert!((line.len() as u64) < MAX_RESULT_BYTES);
        let back: TurnResult = serde_json::from_str(&line).unwrap();
        let text = back.text.unwrap();
        assert!(text.ends_with("…[truncated]"));
        assert!(text.len() <= MAX_RESULT_TEXT_BYTES);

        r.text = Some("a".repeat(MAX_RESULT_TEXT_BYTES + 100));
        let back: TurnResult = serde_json::from_str(&result_line(&r)).unwrap();
        assert_eq!(back.outcome, Outcome::Ok);
        back.validate().unwrap();
        assert_eq!(back.text.unwrap().len(), MAX_RESULT_TEXT_BYTES);
    }

    #[test]
    fn a_result_the_gateway_would_refuse_is_written_as_bad_output() {
        let mut r = classify(TURN, &attempt(ok_result("fine")));
        r.cost_usd = Some(1e12);
        let back: TurnResult = serde_json::from_str(&result_line(&r)).unwrap();
        assert_eq!(back.outcome, Outcome::BadOutput);
        back.validate().unwrap();
        assert_eq!((back.text, back.cost_usd), (None, None));
        assert!(back.error.unwrap().contains("cost_usd"));
        // Every line it writes for a well-formed turn id passes the gateway's reader.
        let doc = result_line(&r);
        assert!(
            picortex_proto::turn::parse_result_document(doc.as_bytes(), TURN)
                .unwrap()
                .is_some()
        );
    }
}
