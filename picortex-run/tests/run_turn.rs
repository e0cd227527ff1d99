//! `run_turn` end to end against the real claude-standin binary, in a scratch home. The
//! self-checks (chat user, 0700 home as cwd) cannot pass on a developer machine, so the library
//! function is driven directly with an `Identity` for the current user; `binary.rs` shows the
//! binary itself refusing here.

use picortex_proto::ids::ChatTag;
use picortex_proto::turn::{Outcome, TurnRequest, TurnResult};
use picortex_run::{run_turn, AgentConfig, Identity};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SID: &str = "c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10";
const TURN: &str = "0123456789abcdef0123456789abcdef";

/// The stand-in next to this test's own binary (`target/debug/claude-standin`), built if
/// missing. `None` only if it cannot be had — and then the test fails: it never skips itself.
fn standin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let debug_dir = exe.parent()?.parent()?.to_owned(); // target/debug/deps/<test> → target/debug
    let candidate = debug_dir.join("claude-standin");
    if candidate.is_file() {
        return Some(candidate);
    }
    eprintln!("building claude-standin for the end-to-end tests…");
    let mut child = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "claude-standin"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    candidate.is_file().then_some(candidate)
}

macro_rules! standin_or_fail {
    () => {
        match standin() {
            Some(p) => p,
            None => panic!(
                "claude-standin could not be built; run `cargo build -p claude-standin` and look"
            ),
        }
    };
}

struct Chat {
    home: tempfile::TempDir,
    identity: Identity,
    config: AgentConfig,
}

impl Chat {
    fn new(standin: &Path) -> Self {
        let home = tempfile::tempdir().unwrap();
        let uid = nix::unistd::getuid();
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map_or_else(|| "nobody".into(), |u| u.name);
        let identity = Identity {
            user,
            uid: uid.as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            tag: ChatTag::parse("deadbeef").unwrap(),
            home: home.path().to_owned(),
        };
        let config = AgentConfig {
            command: standin.to_string_lossy().into_owned(),
            ..AgentConfig::default()
        };
        Chat {
            home,
            identity,
            config,
        }
    }

    fn turn(&self, resume: bool, prompt: &str) -> TurnResult {
        self.turn_with(
            &self.config,
            TurnRequest {
                resume,
                prompt: prompt.into(),
                ..request()
            },
        )
    }

    fn turn_with(&self, config: &AgentConfig, req: TurnRequest) -> TurnResult {
        let r = run_turn(config, &req, &self.identity);
        assert_eq!(r.turn_id, TURN);
        r
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.home.path().join(rel)
    }
}

fn request() -> TurnRequest {
    TurnRequest {
        turn_id: TURN.into(),
        chat_id: "4c6113a3-cb58-46e5-a29c-326444779872".into(),
        session_id: SID.into(),
        resume: false,
        prompt: "hello".into(),
        permission_mode: "default".into(),
        append_system_prompt: None,
        kind: Default::default(),
        model: None,
    }
}

fn text(r: &TurnResult) -> &str {
    r.text
        .as_deref()
        .unwrap_or_else(|| panic!("no text: {r:?}"))
}

#[test]
fn first_turn_then_resume_keeps_the_conversation() {
    let s = standin_or_fail!();
    let chat = Chat::new(&s);
    let r = chat.turn(false, "hello there");
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(
        text(&r),
        format!("standin: you said \"hello there\" (turn 1 of session {SID})")
    );
    assert_eq!((r.session_id.as_deref(), r.new_session), (Some(SID), false));
    assert_eq!(
        (r.exit_code, r.signal, r.num_turns),
        (Some(0), None, Some(1))
    );
    assert!(r.cost_usd.unwrap() > 0.0);
    assert!(r.usage.as_ref().unwrap().output_tokens > 0);

    // Seeded by picortex-run, then bumped by the agent on its start.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(chat.path(".claude/.claude.json")).unwrap()).unwrap();
    assert_eq!(state["hasCompletedOnboarding"], true);
    assert_eq!(state["numStartups"], 1);

    let r = chat.turn(true, "and again");
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(
        text(&r),
        format!("standin: you said \"and again\" (turn 2 of session {SID}) — before that you said \"hello there\"")
    );
}

#[test]
fn the_agent_sees_only_the_built_environment_and_runs_in_the_home() {
    let s = standin_or_fail!();
    let chat = Chat::new(&s);
    let r = chat.turn(false, "hi #env #cwd");
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    let expected = "ANTHROPIC_BASE_URL,CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC,CLAUDE_CODE_DISABLE_TERMINAL_TITLE,CLAUDE_CONFIG_DIR,\
DISABLE_AUTOUPDATER,DISABLE_ERROR_REPORTING,DISABLE_TELEMETRY,HOME,HTTPS_PROXY,HTTP_PROXY,LANG,LOGNAME,NO_PROXY,PATH,SHELL,TMPDIR,USER,\
http_proxy,https_proxy,no_proxy";
    let t = text(&r);
    assert!(t.contains(&format!("env={expected}")), "{t}");
    assert!(
        t.contains(&format!("cwd={}", chat.home.path().display())),
        "{t}"
    );
}

#[test]
fn argv_carries_model_system_prompt_extra_args_and_session() {
    let s = standin_or_fail!();
    let chat = Chat::new(&s);
    let config = AgentConfig {
        extra_args: vec!["--max-turns".into(), "5".into()],
        model: Some("haiku".into()),
        ..chat.config.clone()
    };
    let req = TurnRequest {
        prompt: "hi #argv #system #model".into(),
        permission_mode: "dontAsk".into(),
        append_system_prompt: Some("You are in a group chat.".into()),
        ..request()
    };
    let r = chat.turn_with(&config, req);
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    let t = text(&r);
    let argv = format!(
        "argv=-p --output-format json --disable-slash-commands --permission-mode dontAsk --model haiku \
--append-system-prompt You are in a group chat. --max-turns 5 --session-id {SID} --mcp-config "
    );
    assert!(t.contains(&argv), "{t}");
    // The consent tools (SPEC C2): picortex-run's own MCP server, and only its tools allowed.
    assert!(
        t.contains("--strict-mcp-config --allowedTools mcp__picortex__request_access,mcp__picortex__import_file |"),
        "{t}"
    );
    assert!(t.contains("system=\"You are in a group chat.\""), "{t}");
    assert!(t.contains("model=haiku"), "{t}");
}

#[test]
fn resuming_a_missing_session_starts_a_new_one() {
    let s = standin_or_fail!();
    let chat = Chat::new(&s);
    let r = chat.turn(true, "where were we");
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert!(r.new_session);
    let new = r.session_id.clone().unwrap();
    assert_ne!(new, SID);
    assert_eq!(
        text(&r),
        format!("standin: you said \"where were we\" (turn 1 of session {new})")
    );
}

#[test]
fn a_taken_session_id_is_resumed_instead() {
    let s = standin_or_fail!();
    let chat = Chat::new(&s);
    assert_eq!(chat.turn(false, "one").outcome, Outcome::Ok);
    // The gateway lost track (e.g. it crashed before storing the first result) and asks for a
    // first turn again.
    let r = chat.turn(false, "two");
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert!(!r.new_session);
    assert_eq!(r.session_id.as_deref(), Some(SID));
    assert!(text(&r).contains("(turn 2 of session"), "{r:?}");
}

#[test]
fn a_crashed_first_turn_is_reported_and_the_next_one_recovers() {
    let s = standin_or_fail!();
    let chat = Chat::new(&s);
    let r = chat.turn(false, "hi #crash");
    assert_eq!(
        (r.outcome, r.signal, r.exit_code),
        (Outcome::AgentFailed, Some(6), None),
        "{r:?}"
    );
    assert!(r.error.as_deref().unwrap().contains("signal 6"));
    let r = chat.turn(false, "hi again");
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
}

#[test]
fn agent_errors_are_told_whatever_the_exit_code() {
    let s = standin_or_fail!();
    let chat = Chat::new(&s);
    for (prompt, code) in [
        ("#is_error=API Error: Rate limit reached", 1),
        ("#is_error=API Error: Rate limit reached\n#exit=0", 0),
    ] {
        let r = chat.turn(true, prompt);
        // The resume found no session, so the retry ran with a new one and hit the same error.
        assert_eq!(r.outcome, Outcome::AgentError, "{r:?}");
        assert_eq!(text(&r), "API Error: Rate limit reached");
        assert_eq!(r.exit_code, Some(code));
    }
    let config = AgentConfig {
        extra_args: vec!["--max-turns".into(), "2".into()],
        ..chat.config.clone()
    };
    let r = chat.turn_with(
        &config,
        TurnRequest {
            prompt: "#turns=3".into(),
            ..request()
        },
    );
    assert_eq!(r.outcome, Outcome::AgentError, "{r:?}");
    assert_eq!(text(&r), "Reached maximum number of turns (2)");
}

#[test]
fn silence_garbage_and_failures() {
    let s = standin_or_fail!();
    let chat = Chat::new(&s);
    let r = chat.turn(false, "#empty");
    assert_eq!(
        (r.outcome, r.exit_code),
        (Outcome::EmptyOutput, Some(0)),
        "{r:?}"
    );
    let r = chat.turn(false, "#garbage");
    assert_eq!(r.outcome, Outcome::BadOutput, "{r:?}");
    let r = chat.turn(true, "#fail");
    assert_eq!(
        (r.outcome, r.exit_code),
        (Outcome::AgentFailed, Some(1)),
        "{r:?}"
    );
    assert!(
        r.error.as_deref().unwrap().contains("failing as asked"),
        "{r:?}"
    );
}

#[test]
fn verbose_arrays_are_read() {
    let s = standin_or_fail!();
    let chat = Chat::new(&s);
    let r = chat.turn(false, "hi #array");
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    let config = AgentConfig {
        extra_args: vec!["--verbose".into()],
        ..chat.config.clone()
    };
    let r = chat.turn_with(
        &config,
        TurnRequest {
            resume: true,
            ..request()
        },
    );
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert!(text(&r).contains("(turn 2 of session"));
}

#[test]
fn a_large_prompt_goes_through_the_pipe() {
    let s = standin_or_fail!();
    let chat = Chat::new(&s);
    let prompt = "word ".repeat(180_000); // 900 KB, far beyond a pipe buffer
    let r = chat.turn(false, &prompt);
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.error);
    assert!(text(&r).len() > prompt.len());
}

#[test]
fn the_onboarding_state_is_merged_and_symlinks_refused() {
    let s = standin_or_fail!();
    let chat = Chat::new(&s);
    std::fs::create_dir(chat.path(".claude")).unwrap();
    std::fs::write(
        chat.path(".claude/.claude.json"),
        r#"{"numStartups": 41, "theme": "dark"}"#,
    )
    .unwrap();
    assert_eq!(chat.turn(false, "hi").outcome, Outcome::Ok);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(chat.path(".claude/.claude.json")).unwrap()).unwrap();
    assert_eq!(
        (state["numStartups"].as_u64(), state["theme"].as_str()),
        (Some(42), Some("dark"))
    );

    let chat = Chat::new(&s);
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), chat.path(".claude")).unwrap();
    let r = chat.turn(false, "hi");
    assert_eq!(r.outcome, Outcome::Refused, "{r:?}");
    assert!(r.error.as_deref().unwrap().contains("symlink"));
    assert!(std::fs::read_dir(elsewhere.path())
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn a_missing_agent_is_a_failure_not_a_panic() {
    let s = standin_or_fail!();
    let chat = Chat::new(&s);
    let config = AgentConfig {
        command: "no-such-agent-picortex".into(),
        ..AgentConfig::default()
    };
    let r = chat.turn_with(&config, request());
    assert_eq!(r.outcome, Outcome::AgentFailed);
    assert!(r.error.as_deref().unwrap().contains("not found"), "{r:?}");
}
