//! Runs the built stand-in the way picortex-run does (clean environment, prompt on stdin, cwd =
//! the chat's home) and checks the contract of research/claude-cli.md.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_claude-standin");
const SID: &str = "c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10";

/// A scratch home with `.claude/.claude.json` seeded, removed on drop.
struct Home(PathBuf);

impl Home {
    fn new(seed: bool) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "claude-standin-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(".claude")).unwrap();
        if seed {
            std::fs::write(
                dir.join(".claude/.claude.json"),
                r#"{"hasCompletedOnboarding": true}"#,
            )
            .unwrap();
        }
        Home(dir)
    }
    fn config(&self) -> PathBuf {
        self.0.join(".claude")
    }
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run_in(&self.0, &self.config(), args, stdin)
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_in(cwd: &Path, config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("HOME", cwd)
        .env("CLAUDE_CONFIG_DIR", config)
        .env("PATH", "/usr/bin:/bin")
        .current_dir(cwd)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        None => {
            cmd.stdin(Stdio::null());
            cmd.output().unwrap()
        }
        Some(text) => {
            cmd.stdin(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            let mut pipe = child.stdin.take().unwrap();
            let text = text.to_owned();
            let writer = std::thread::spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            });
            let out = child.wait_with_output().unwrap();
            writer.join().unwrap();
            out
        }
    }
}

const JSON: [&str; 6] = [
    "-p",
    "--output-format",
    "json",
    "--disable-slash-commands",
    "--permission-mode",
    "default",
];

fn json_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    JSON.iter().copied().chain(extra.iter().copied()).collect()
}

fn stdout_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn continuity_across_two_turns() {
    let h = Home::new(true);
    let first = h.run(&json_args(&["--session-id", SID]), Some("hello there"));
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let r = stdout_json(&first);
    assert_eq!(r["type"], "result");
    assert_eq!(r["subtype"], "success");
    assert_eq!(r["is_error"], false);
    assert_eq!(r["session_id"], SID);
    assert_eq!(r["num_turns"], 1);
    assert_eq!(
        r["result"],
        format!("standin: you said \"hello there\" (turn 1 of session {SID})")
    );
    for field in [
        "uuid",
        "duration_ms",
        "duration_api_ms",
        "stop_reason",
        "total_cost_usd",
        "usage",
        "modelUsage",
        "permission_denials",
        "terminal_reason",
    ] {
        assert!(r.get(field).is_some(), "missing {field}");
    }
    assert!(r["total_cost_usd"].as_f64().unwrap() > 0.0);

    let transcript = h.config().join("projects").join(
        h.0.to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>(),
    );
    let lines = std::fs::read_to_string(transcript.join(format!("{SID}.jsonl"))).unwrap();
    assert_eq!(
        lines.lines().count(),
        2,
        "one line per user/assistant message"
    );

    let second = h.run(&json_args(&["--resume", SID]), Some("and again"));
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    let r = stdout_json(&second);
    assert_eq!(
        r["result"],
        format!("standin: you said \"and again\" (turn 2 of session {SID}) — before that you said \"hello there\"")
    );
}

#[test]
fn session_id_reuse_is_refused() {
    let h = Home::new(true);
    assert!(h
        .run(&json_args(&["--session-id", SID]), Some("one"))
        .status
        .success());
    let again = h.run(&json_args(&["--session-id", SID]), Some("two"));
    assert_eq!(again.status.code(), Some(1));
    assert!(again.stdout.is_empty());
    assert_eq!(
        stderr(&again).trim(),
        format!("Error: Session ID {SID} is already in use.")
    );
}

#[test]
fn unknown_resume_is_an_error_result() {
    let h = Home::new(true);
    let o = h.run(&json_args(&["--resume", SID]), Some("hi"));
    assert_eq!(o.status.code(), Some(1));
    let r = stdout_json(&o);
    assert_eq!(r["subtype"], "error_during_execution");
    assert_eq!(r["is_error"], true);
    assert_eq!(r["num_turns"], 0);
    assert_eq!(r["session_id"], SID);
    assert_eq!(
        r["errors"][0],
        format!("No conversation found with session ID: {SID}")
    );
    assert!(r.get("result").is_none());
}

#[test]
fn missing_onboarding_exits_silently_and_state_is_rewritten() {
    let h = Home::new(false);
    let o = h.run(&json_args(&["--session-id", SID]), Some("hi"));
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty() && o.stderr.is_empty());
    let state: Value =
        serde_json::from_slice(&std::fs::read(h.config().join(".claude.json")).unwrap()).unwrap();
    assert_eq!(state["numStartups"], 1);

    // Seeded: the counter keeps counting and the turn runs.
    std::fs::write(
        h.config().join(".claude.json"),
        r#"{"hasCompletedOnboarding":true,"numStartups":7,"x":1}"#,
    )
    .unwrap();
    assert!(h
        .run(&json_args(&["--session-id", SID]), Some("hi"))
        .status
        .success());
    let state: Value =
        serde_json::from_slice(&std::fs::read(h.config().join(".claude.json")).unwrap()).unwrap();
    assert_eq!(state["numStartups"], 8);
    assert_eq!(state["x"], 1);
}

#[test]
fn without_config_dir_state_lives_in_home() {
    let h = Home::new(false);
    std::fs::write(
        h.0.join(".claude.json"),
        r#"{"hasCompletedOnboarding":true}"#,
    )
    .unwrap();
    let o = Command::new(BIN)
        .env_clear()
        .env("HOME", &h.0)
        .current_dir(&h.0)
        .args(json_args(&["hi"]))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout_json(&o)["is_error"], false);
}

#[test]
fn verbose_json_is_an_array_with_the_result_last() {
    let h = Home::new(true);
    for extra in [vec!["--verbose"], vec![]] {
        let prompt = if extra.is_empty() { "hi #array" } else { "hi" };
        let o = h.run(&json_args(&extra), Some(prompt));
        assert!(o.status.success());
        let v = stdout_json(&o);
        let arr = v.as_array().expect("array");
        assert_eq!(arr[0]["type"], "system");
        assert_eq!(arr[0]["subtype"], "init");
        assert_eq!(arr.last().unwrap()["type"], "result");
    }
}

#[test]
fn stream_json_needs_verbose() {
    let h = Home::new(true);
    let o = h.run(&["-p", "--output-format", "stream-json", "hi"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert_eq!(
        stderr(&o).trim(),
        "Error: When using --print, --output-format=stream-json requires --verbose"
    );
    let o = h.run(
        &["-p", "--output-format", "stream-json", "--verbose", "hi"],
        None,
    );
    assert!(o.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.first().unwrap()["subtype"], "init");
    assert_eq!(lines.last().unwrap()["type"], "result");
}

#[test]
fn argument_errors() {
    let h = Home::new(true);
    let cases: [(&[&str], &str); 5] = [
        (&["-p", "--bogus", "hi"], "error: unknown option '--bogus'"),
        (
            &["-p", "--session-id", "nope", "hi"],
            "Error: Invalid session ID. Must be a valid UUID.",
        ),
        (
            &["-p", "--permission-mode", "yolo", "hi"],
            "argument 'yolo' is invalid",
        ),
        (
            &["-p", "--output-format", "xml", "hi"],
            "argument 'xml' is invalid",
        ),
        (
            &["-p", "--settings", "{not json", "hi"],
            "Invalid JSON provided to --settings",
        ),
    ];
    for (args, expect) in cases {
        let o = h.run(args, None);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
        assert!(stderr(&o).contains(expect), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn missing_or_blank_prompt() {
    let h = Home::new(true);
    let o = h.run(&["-p"], None);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim(),
        "Error: Input must be provided either through stdin or as a prompt argument when using --print"
    );
    let o = h.run(&["-p"], Some("  \n\t "));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("Error: Input contained only whitespace"));
}

#[test]
fn unwritable_state_fails_the_run() {
    use std::os::unix::fs::PermissionsExt;
    let h = Home::new(true);
    let privileged = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("CapEff:") && !l.ends_with("0000000000000000"))
        })
        .unwrap_or(false);
    if privileged {
        // Permissions do not stop root: make the rename fail instead (a directory is in the way).
        std::fs::remove_file(h.config().join(".claude.json")).unwrap();
        std::fs::create_dir(h.config().join(".claude.json")).unwrap();
    } else {
        std::fs::set_permissions(h.config(), std::fs::Permissions::from_mode(0o500)).unwrap();
    }
    let o = h.run(&json_args(&[]), Some("hi"));
    std::fs::set_permissions(h.config(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert!(stderr(&o).contains("failed to write"), "{}", stderr(&o));
}

#[test]
fn failure_knobs() {
    let h = Home::new(true);

    let o = h.run(&json_args(&[]), Some("hi #fail"));
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert!(!o.stderr.is_empty());

    let o = h.run(
        &json_args(&[]),
        Some("hi #is_error=API Error: Rate limit reached"),
    );
    assert_eq!(o.status.code(), Some(1));
    let r = stdout_json(&o);
    assert_eq!(
        (r["subtype"].as_str(), r["is_error"].as_bool()),
        (Some("success"), Some(true))
    );
    assert_eq!(r["result"], "API Error: Rate limit reached");

    let o = h.run(
        &json_args(&[]),
        Some("#is_error=API Error: Rate limit reached\n#exit=0"),
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "issue #79500: is_error with exit 0"
    );
    assert_eq!(stdout_json(&o)["is_error"], true);

    let o = h.run(&json_args(&[]), Some("hi #empty"));
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty() && o.stderr.is_empty());

    let o = h.run(&json_args(&[]), Some("hi #garbage"));
    assert_eq!(o.status.code(), Some(0));
    assert!(serde_json::from_slice::<Value>(&o.stdout).is_err());

    let o = h.run(&json_args(&[]), Some("hi #crash"));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(6), "abort");

    let o = h.run(&json_args(&["--max-turns", "2"]), Some("hi #turns=3"));
    assert_eq!(o.status.code(), Some(1));
    let r = stdout_json(&o);
    assert_eq!(r["subtype"], "error_max_turns");
    assert_eq!(r["errors"][0], "Reached maximum number of turns (2)");
}

#[test]
fn reporting_knobs() {
    let h = Home::new(true);
    let o = h.run(
        &json_args(&["--model", "haiku", "--append-system-prompt", "be brief"]),
        Some("hi #env #cwd #argv #system #model #sleep=0.05 #eatmem=8"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout_json(&o)["result"].as_str().unwrap().to_owned();
    assert!(text.contains("env=CLAUDE_CONFIG_DIR,HOME,PATH |"), "{text}");
    assert!(text.contains(&format!("cwd={}", h.0.display())), "{text}");
    assert!(text.contains("argv=-p --output-format json --disable-slash-commands --permission-mode default --model haiku --append-system-prompt be brief"), "{text}");
    assert!(text.contains("system=\"be brief\""), "{text}");
    assert!(text.contains("model=haiku"), "{text}");
    assert!(text.contains("ate 8 MiB"), "{text}");
    let r = stdout_json(&o);
    assert!(r["duration_ms"].as_u64().unwrap() >= 50);
    assert!(r["modelUsage"].get("haiku").is_some());
}

#[test]
fn auth_knob_and_api_key_helper() {
    let h = Home::new(true);
    let o = h.run(&json_args(&[]), Some("hi #auth"));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout_json(&o)["result"],
        "Not logged in · Please run /login"
    );

    let settings = r#"{"apiKeyHelper": "echo sk-test-abcd1234"}"#;
    let o = h.run(&json_args(&["--settings", settings]), Some("hi #auth"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout_json(&o)["result"]
        .as_str()
        .unwrap()
        .contains("auth=apiKeyHelper:…1234"));

    let o = h.run(
        &json_args(&["--settings", r#"{"apiKeyHelper": "exit 3"}"#]),
        Some("hi"),
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout_json(&o)["result"],
        "Your apiKeyHelper script is failing"
    );
}

#[test]
fn crashed_first_turn_leaves_a_transcript_that_blocks_session_id() {
    let h = Home::new(true);
    let o = h.run(&json_args(&["--session-id", SID]), Some("hi #crash"));
    assert!(!o.status.success());
    let again = h.run(&json_args(&["--session-id", SID]), Some("hi"));
    assert!(stderr(&again).contains("is already in use"));
    let resumed = h.run(&json_args(&["--resume", SID]), Some("hi"));
    assert!(resumed.status.success());
    assert!(stdout_json(&resumed)["result"]
        .as_str()
        .unwrap()
        .contains("(turn 2 of session"));
}

#[test]
fn text_output_and_positional_prompt() {
    let h = Home::new(true);
    let o = h.run(&["-p", "--", "--looks-like-a-flag"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("standin: you said \"--looks-like-a-flag\" (turn 1 of session "));
}
