//! The agent's command line, environment and process: a fixed argv (no shell), an environment
//! built from nothing, the prompt written to a pipe that is then closed (an open stdin can hang
//! `claude -p`, research/claude-cli.md §1), stdout captured with a cap, stderr passed on to the
//! journal while its tail is kept for the session-recovery checks.

use crate::config::{AgentConfig, AGENT_PATH};
use crate::preflight::Identity;
use picortex_proto::ids::{API_KEY_CREDENTIAL, OAUTH_CREDENTIAL, TURN_CONFIG_DIR};
use picortex_proto::turn::{TurnKind, TurnRequest};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

/// Agent stdout beyond this is discarded and the turn reported as bad output.
pub const MAX_AGENT_STDOUT: usize = 16 << 20;
/// How much of the agent's stderr is kept (it is all forwarded to the journal).
pub const STDERR_TAIL_BYTES: usize = 64 << 10;

/// How the agent is told which session to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionArg {
    /// First turn of a session: `--session-id <uuid>`.
    New(String),
    /// A later turn: `--resume <uuid>`.
    Resume(String),
}

impl SessionArg {
    pub fn id(&self) -> &str {
        match self {
            SessionArg::New(s) | SessionArg::Resume(s) => s,
        }
    }
    pub fn is_resume(&self) -> bool {
        matches!(self, SessionArg::Resume(_))
    }
}

/// `<command> -p --output-format json --disable-slash-commands --permission-mode <mode>
/// [--model M] [--append-system-prompt S] <extra_args…> (--session-id|--resume) <uuid>`.
/// The prompt is not in it: it goes to stdin.
pub fn build_argv(config: &AgentConfig, req: &TurnRequest, session: &SessionArg) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        config.command.clone(),
        "-p".into(),
        "--output-format".into(),
        "json".into(),
        "--disable-slash-commands".into(),
        "--permission-mode".into(),
        req.permission_mode.clone(),
    ];
    if let Some(m) = req.model.as_ref().or(config.model.as_ref()) {
        argv.extend(["--model".into(), m.clone()]);
    }
    if req.kind == TurnKind::Discriminate {
        // A throwaway question: no transcript, nothing to resume, the chat's session untouched.
        argv.push("--no-session-persistence".into());
    }
    if let Some(s) = &req.append_system_prompt {
        argv.extend(["--append-system-prompt".into(), s.clone()]);
    }
    argv.extend(config.extra_args.iter().cloned());
    if let Some(settings) = credential_settings(TURN_CONFIG_DIR) {
        argv.extend(["--settings".into(), settings]);
    }
    match session {
        SessionArg::New(id) => argv.extend(["--session-id".into(), id.clone()]),
        SessionArg::Resume(id) => argv.extend(["--resume".into(), id.clone()]),
    }
    argv
}

/// `--settings` for the agent when the turn has the API key (SPEC T2): in a turn, the helper's
/// view of `/etc/picortex` (`TURN_CONFIG_DIR`) holds its placeholder
/// (`picortex_proto::egress`; picortex-egress puts the real key in each request), readable by
/// the chat's user alone; the CLI's `apiKeyHelper` reads it from there when it needs it, so
/// not even the placeholder is in an environment, an argv, or a file in the chat's home.
pub fn credential_settings(dir: &str) -> Option<String> {
    let safe = dir.starts_with('/')
        && dir
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-@".contains(&b));
    let path = format!("{dir}/{API_KEY_CREDENTIAL}");
    if !safe || !std::path::Path::new(&path).is_file() {
        return None;
    }
    Some(serde_json::json!({ "apiKeyHelper": key_helper(&path) }).to_string())
}

/// The `apiKeyHelper` command (run by `/bin/sh -c` once per agent process) that prints the key
/// in `path` (a path of safe characters): with the shell's own `read` and `printf`, no program
/// started besides the shell; it fails when the file cannot be read.
fn key_helper(path: &str) -> String {
    format!("test -r '{path}' && {{ read -r k < '{path}'; printf '%s' \"$k\"; }}")
}

/// Variables the agent gets besides picortex-run's own: the operator's `[agent] env`
/// (validated against `picortex_proto::agent_env` when loaded), but for `ANTHROPIC_BASE_URL`,
/// which is where picortex-egress forwards to (the agent's is the relay, `relay::agent_env`).
/// Nothing of picortex-run's own environment is passed through.
pub fn passthrough_env(config: &AgentConfig) -> Vec<(String, String)> {
    config
        .env
        .iter()
        .filter(|(k, v)| picortex_proto::agent_env::check(k, v).is_ok())
        .filter(|(k, _)| k.as_str() != "ANTHROPIC_BASE_URL")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// How the CLI is told which inherited descriptor holds that token.
pub const OAUTH_FD_ENV: &str = "CLAUDE_CODE_OAUTH_TOKEN_FILE_DESCRIPTOR";

/// The subscription token for one run of the agent, when the turn unit was given one: the
/// credential opened read-only and made inheritable, and the variable naming its descriptor.
/// The token itself is never in an environment, an argv or the chat's home; the agent reads it
/// from the descriptor (which the caller keeps open until the agent has started, then closes).
pub fn oauth_token_fd(
    dir: &str,
) -> std::io::Result<Option<(std::os::fd::OwnedFd, (String, String))>> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    if !dir.starts_with('/') {
        return Ok(None);
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(Path::new(dir).join(OAUTH_CREDENTIAL))
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let fd: std::os::fd::OwnedFd = file.into();
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::empty())).map_err(std::io::Error::from)?;
    let n = fd.as_raw_fd().to_string();
    Ok(Some((fd, (OAUTH_FD_ENV.to_owned(), n))))
}

/// The agent's whole environment. Nothing is inherited (no `CLAUDECODE`,
/// `CLAUDE_CODE_ENTRYPOINT`, proxies or keys from the unit), except `passthrough`.
pub fn build_env(identity: &Identity, passthrough: &[(String, String)]) -> Vec<(String, String)> {
    let home = identity.home.to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = [
        ("HOME", home.clone()),
        ("USER", identity.user.clone()),
        ("LOGNAME", identity.user.clone()),
        ("PATH", AGENT_PATH.to_owned()),
        ("LANG", "C.UTF-8".to_owned()),
        ("SHELL", "/bin/sh".to_owned()),
        ("TMPDIR", format!("{home}/{}", crate::seed::TMP_DIR_NAME)),
        ("CLAUDE_CONFIG_DIR", format!("{home}/.claude")),
        ("DISABLE_AUTOUPDATER", "1".to_owned()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
        ("DISABLE_TELEMETRY", "1".to_owned()),
        ("DISABLE_ERROR_REPORTING", "1".to_owned()),
        ("CLAUDE_CODE_DISABLE_TERMINAL_TITLE", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(crate::relay::agent_env());
    env.extend(passthrough.iter().cloned());
    env
}

/// The argv as one line for the audit log, quoted so it reads back unambiguously.
pub fn display_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one run of the agent left behind.
#[derive(Debug)]
pub struct Capture {
    pub stdout: Vec<u8>,
    /// stdout was longer than [`MAX_AGENT_STDOUT`]; the rest was discarded.
    pub stdout_overflow: bool,
    /// The last [`STDERR_TAIL_BYTES`] of stderr.
    pub stderr_tail: String,
    pub status: ExitStatus,
}

/// Run `program` with `argv[1..]` (`argv[0]` is what the agent sees as its name), the given
/// environment only, in `cwd`, with `prompt` on stdin.
pub fn run_agent(
    program: &Path,
    argv: &[String],
    env: &[(String, String)],
    cwd: &Path,
    prompt: &str,
) -> std::io::Result<Capture> {
    let mut cmd = Command::new(program);
    if let Some(name) = argv.first() {
        cmd.arg0(name);
    }
    cmd.args(argv.iter().skip(1))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    std::thread::scope(|s| {
        // The prompt is written from its own thread so a prompt larger than the pipe buffer
        // cannot deadlock against an agent that is busy filling its stdout; dropping the pipe
        // closes it. An agent that exits without reading gives EPIPE, which is fine.
        if let Some(mut pipe) = stdin {
            s.spawn(move || {
                let _ = pipe.write_all(prompt.as_bytes());
            });
        }
        let tail = s.spawn(move || stderr.map(tee_stderr).unwrap_or_default());
        let (out, overflow) = stdout.map(read_capped).unwrap_or_default();
        let status = child.wait()?;
        let stderr_tail = tail.join().unwrap_or_default();
        Ok(Capture {
            stdout: out,
            stdout_overflow: overflow,
            stderr_tail,
            status,
        })
    })
}

fn read_capped(mut r: impl Read) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut overflow = false;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = MAX_AGENT_STDOUT.saturating_sub(out.len());
                if n > room {
                    overflow = true;
                }
                out.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (out, overflow)
}

/// Copy the agent's stderr to ours (the journal) as it comes, keeping the tail.
fn tee_stderr(mut r: impl Read) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8 << 10];
    let mut ours = std::io::stderr();
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let _ = ours.write_all(&buf[..n]);
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL_BYTES {
                    tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_api_key_reaches_the_agent_only_through_the_turns_view() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_owned();
        assert_eq!(credential_settings(&d), None, "no credential, no settings");
        std::fs::write(dir.path().join(API_KEY_CREDENTIAL), "sk-test").unwrap();
        let s = credential_settings(&d).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            v["apiKeyHelper"],
            key_helper(&format!("{d}/{API_KEY_CREDENTIAL}"))
        );
        // The helper prints the key, without the file's newline, and fails without the file.
        std::fs::write(dir.path().join(API_KEY_CREDENTIAL), "sk-test\n").unwrap();
        let helper = v["apiKeyHelper"].as_str().unwrap();
        let out = Command::new("/bin/sh")
            .args(["-c", helper])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"sk-test");
        std::fs::write(dir.path().join(API_KEY_CREDENTIAL), "sk-no-newline").unwrap();
        let out = Command::new("/bin/sh")
            .args(["-c", helper])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"sk-no-newline");
        std::fs::remove_file(dir.path().join(API_KEY_CREDENTIAL)).unwrap();
        let out = Command::new("/bin/sh")
            .args(["-c", helper])
            .output()
            .unwrap();
        assert!(!out.status.success() && out.stdout.is_empty());
        assert!(!s.contains("sk-test"), "the key itself must not be in argv");
        assert_eq!(credential_settings("relative/dir"), None);
        assert_eq!(credential_settings("/tmp/it's"), None);
    }
    use super::*;
    use picortex_proto::ids::ChatTag;
    use std::path::PathBuf;

    fn req() -> TurnRequest {
        TurnRequest {
            turn_id: "0123456789abcdef0123456789abcdef".into(),
            chat_id: "c1".into(),
            session_id: "c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10".into(),
            resume: true,
            prompt: "the prompt".into(),
            permission_mode: "dontAsk".into(),
            append_system_prompt: None,
            kind: Default::default(),
            model: None,
        }
    }

    fn identity() -> Identity {
        Identity {
            user: "chat-deadbeef".into(),
            uid: 60100,
            gid: 60100,
            tag: ChatTag::parse("deadbeef").unwrap(),
            home: PathBuf::from("/var/lib/picortex/chats/deadbeef"),
        }
    }

    const SID: &str = "c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10";

    #[test]
    fn minimal_argv() {
        let argv = build_argv(
            &AgentConfig::default(),
            &req(),
            &SessionArg::New(SID.into()),
        );
        assert_eq!(
            argv,
            [
                "claude",
                "-p",
                "--output-format",
                "json",
                "--disable-slash-commands",
                "--permission-mode",
                "dontAsk",
                "--session-id",
                SID
            ]
        );
        assert!(
            !argv.iter().any(|a| a.contains("the prompt")),
            "the prompt goes to stdin"
        );
    }

    #[test]
    fn full_argv_orders_model_system_prompt_extra_args_then_session() {
        let config = AgentConfig {
            command: "/usr/bin/claude".into(),
            extra_args: vec!["--max-turns".into(), "8".into()],
            model: Some("sonnet".into()),
            env: Default::default(),
        };
        let r = TurnRequest {
            append_system_prompt: Some("-be brief".into()),
            ..req()
        };
        let argv = build_argv(&config, &r, &SessionArg::Resume(SID.into()));
        assert_eq!(
            argv,
            [
                "/usr/bin/claude",
                "-p",
                "--output-format",
                "json",
                "--disable-slash-commands",
                "--permission-mode",
                "dontAsk",
                "--model",
                "sonnet",
                "--append-system-prompt",
                "-be brief",
                "--max-turns",
                "8",
                "--resume",
                SID
            ]
        );
        assert_eq!(
            display_argv(&argv[..3]),
            "/usr/bin/claude -p --output-format"
        );
        assert_eq!(
            display_argv(&["a b".into(), "it's".into(), "".into()]),
            r"'a b' 'it'\''s' ''"
        );
    }

    #[test]
    fn the_subscription_token_is_handed_over_as_an_inherited_descriptor() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_owned();
        assert!(oauth_token_fd(&d).unwrap().is_none());
        assert!(oauth_token_fd("relative").unwrap().is_none());
        std::fs::write(dir.path().join(OAUTH_CREDENTIAL), "sk-ant-oat01-x").unwrap();
        let (fd, (k, v)) = oauth_token_fd(&d).unwrap().unwrap();
        assert_eq!(k, OAUTH_FD_ENV);
        assert_eq!(v, fd.as_raw_fd().to_string());
        // The agent (here a shell) reads the token through the descriptor it inherited.
        let c = run_agent(
            Path::new("/bin/sh"),
            &["sh".into(), "-c".into(), format!("cat <&{v}")],
            &[(k, v)],
            dir.path(),
            "",
        )
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&c.stdout), "sk-ant-oat01-x");
        // A symlink in the credential's place is not followed.
        let d2 = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            dir.path().join(OAUTH_CREDENTIAL),
            d2.path().join(OAUTH_CREDENTIAL),
        )
        .unwrap();
        assert!(oauth_token_fd(d2.path().to_str().unwrap()).is_err());
    }

    #[test]
    fn deployment_env_is_passed_only_from_the_list() {
        let mut config = AgentConfig::default();
        config
            .env
            .insert("ANTHROPIC_BASE_URL".into(), "http://198.51.100.1".into());
        config.env.insert("LD_PRELOAD".into(), "/x.so".into());
        config.env.insert("AWS_REGION".into(), "eu-west-1".into());
        let env = passthrough_env(&config);
        assert_eq!(env, [("AWS_REGION".into(), "eu-west-1".into())]);
        // The operator's API URL is picortex-egress's upstream; the agent's is the relay.
        let all = build_env(&identity(), &env);
        let base: Vec<_> = all
            .iter()
            .filter(|(k, _)| k == "ANTHROPIC_BASE_URL")
            .collect();
        assert_eq!(base.len(), 1);
        assert_eq!(base[0].1, picortex_proto::egress::relay_url());
    }

    #[test]
    fn environment_is_exactly_the_list() {
        let env = build_env(&identity(), &[]);
        let mut names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "ANTHROPIC_BASE_URL",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
                "CLAUDE_CODE_DISABLE_TERMINAL_TITLE",
                "CLAUDE_CONFIG_DIR",
                "DISABLE_AUTOUPDATER",
                "DISABLE_ERROR_REPORTING",
                "DISABLE_TELEMETRY",
                "HOME",
                "HTTPS_PROXY",
                "HTTP_PROXY",
                "LANG",
                "LOGNAME",
                "NO_PROXY",
                "PATH",
                "SHELL",
                "TMPDIR",
                "USER",
                "http_proxy",
                "https_proxy",
                "no_proxy"
            ]
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HOME"), Some("/var/lib/picortex/chats/deadbeef"));
        assert_eq!(
            get("CLAUDE_CONFIG_DIR"),
            Some("/var/lib/picortex/chats/deadbeef/.claude")
        );
        assert_eq!(get("USER"), Some("chat-deadbeef"));
        assert_eq!(get("PATH"), Some("/usr/local/bin:/usr/bin:/bin"));
        let with = build_env(&identity(), &[("ANTHROPIC_MODEL".into(), "sonnet".into())]);
        assert_eq!(with.len(), env.len() + 1);
    }

    #[test]
    fn runs_with_a_closed_stdin_and_a_clean_environment() {
        // `cat` reads the prompt to EOF: it only exits because the pipe is closed.
        let dir = std::env::temp_dir();
        let big = "x".repeat(1 << 20);
        let c = run_agent(Path::new("/bin/cat"), &["cat".into()], &[], &dir, &big).unwrap();
        assert!(c.status.success());
        assert_eq!(c.stdout.len(), big.len());

        let c = run_agent(
            Path::new("/bin/sh"),
            &[
                "sh".into(),
                "-c".into(),
                "env; echo oops >&2; exit 3".into(),
            ],
            &[("ONLY".into(), "this".into())],
            &dir,
            "",
        )
        .unwrap();
        assert_eq!(c.status.code(), Some(3));
        let out = String::from_utf8_lossy(&c.stdout);
        assert!(out.contains("ONLY=this"));
        assert!(!out.contains("HOME="), "{out}");
        assert_eq!(c.stderr_tail, "oops\n");
    }
}
