//! The real binary on a machine where it is not a chat user's unit (a developer's, CI's, or
//! root's): it must refuse, write one `refused` result line and never start the agent.

use picortex_proto::turn::{Outcome, TurnRequest, TurnResult};
use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_picortex-run");
const TURN: &str = "0123456789abcdef0123456789abcdef";

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let _ = pipe.write_all(stdin);
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn only_result(o: &Output) -> TurnResult {
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert_eq!(
        out.lines().count(),
        1,
        "exactly one line on stdout: {out:?}"
    );
    assert!(out.ends_with('\n'));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn refuses_here_and_never_starts_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("agent-ran");
    let agent = dir.path().join("agent");
    std::fs::write(&agent, format!("#!/bin/sh\ntouch '{}'\n", marker.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("picortexd.toml");
    std::fs::write(
        &config,
        format!("[agent]\ncommand = \"{}\"\n", agent.display()),
    )
    .unwrap();

    let req = TurnRequest {
        turn_id: TURN.into(),
        chat_id: "4c6113a3-cb58-46e5-a29c-326444779872".into(),
        session_id: "c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10".into(),
        resume: false,
        prompt: "hello".into(),
        permission_mode: "default".into(),
        append_system_prompt: None,
        kind: Default::default(),
        model: None,
    };
    let o = run(
        &["--turn", TURN, "--config", config.to_str().unwrap()],
        &serde_json::to_vec(&req).unwrap(),
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = only_result(&o);
    assert_eq!((r.turn_id.as_str(), r.outcome), (TURN, Outcome::Refused));
    let error = r.error.unwrap();
    if nix::unistd::getuid().is_root() {
        assert!(error.contains("refusing to run as root"), "{error}");
    } else {
        assert!(
            error.contains("not a chat user") || error.contains("home"),
            "{error}"
        );
    }
    assert!(!marker.exists(), "the agent must not run");
}

#[test]
fn bad_arguments_are_refused_with_a_result() {
    for args in [
        &[][..],
        &["--turn"],
        &["--turn", "NOT-A-TURN"],
        &["--turn", TURN, "--shell", "x"],
    ] {
        let o = run(args, b"");
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let r = only_result(&o);
        assert_eq!(r.outcome, Outcome::Refused, "{args:?}");
        assert!(r.error.is_some());
    }
}

/// A unit without `StandardError=` has stderr duplicated from stdout, the result file. Nothing
/// but the one result line may reach that file: not picortex-run's own log lines (which go to
/// stderr where there is no journal, as here), not anything a child writes to its stderr.
#[test]
fn stderr_that_is_the_result_file_carries_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("result.json");
    let file = std::fs::File::create(&path).unwrap();
    let o = Command::new(BIN)
        .args(["--turn", "NOT-A-TURN"])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    assert_eq!(o.code(), Some(2));
    let out = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        out.lines().count(),
        1,
        "exactly one line in the result file: {out:?}"
    );
    let r: TurnResult = serde_json::from_str(&out).unwrap();
    assert_eq!(r.outcome, Outcome::Refused);
}
