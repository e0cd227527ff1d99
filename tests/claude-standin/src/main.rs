//! claude-standin: behaves like `claude -p` (Claude Code's print mode) for the flags picortex
//! passes, so tests run without Anthropic's API. The contract it follows is
//! `research/claude-cli.md` §1, §2, §5, §6 and §8; it never touches the network.
//!
//! # What it reproduces
//! - Flags: `-p/--print`, `--output-format text|json|stream-json` (stream-json without `--verbose`
//!   fails), `--verbose`, `--session-id <uuid>`, `--resume/-r <id>`, `--fork-session`,
//!   `--disable-slash-commands`, `--permission-mode <mode>`, `--dangerously-skip-permissions`,
//!   `--append-system-prompt <s>`, `--settings <json-or-file>`, `--model <m>`, `--max-turns <n>`,
//!   `--version`, `--` then the prompt. `--flag=value` works too. Anything else: `error: unknown
//!   option` on stderr, exit 1.
//! - The prompt comes from the positional argument and/or stdin (read to EOF when stdin is not a
//!   terminal, so an open pipe that is never closed blocks, as with the real CLI).
//! - Config dir: `$CLAUDE_CONFIG_DIR`, else `$HOME/.claude`. The global state file is
//!   `$CLAUDE_CONFIG_DIR/.claude.json`, or `$HOME/.claude.json` when the variable is unset. It is
//!   rewritten atomically (temp + rename, `numStartups` bumped) on every start, so a read-only
//!   config dir fails. Without `"hasCompletedOnboarding": true` in it the run exits 0 with empty
//!   stdout and stderr (issue #95217).
//! - Sessions: `<config>/projects/<cwd, non-alphanumerics → '-'>/<session-id>.jsonl`, one JSON line
//!   per user/assistant message. `--session-id` of an existing transcript → `Error: Session ID X
//!   is already in use.`, exit 1. `--resume` of an unknown id → `error_during_execution` result
//!   (`No conversation found with session ID: X`), exit 1.
//! - Root with `bypassPermissions` is refused unless `IS_SANDBOX=1`, as the real CLI does.
//! - `--output-format json` prints one result object, or a JSON array of every message with the
//!   result last when verbose is on (`--verbose`, or `"viewMode": "verbose"` in `--settings`).
//! - `apiKeyHelper` from `--settings` or `<config>/settings.json` is run through `/bin/sh -c` on
//!   every turn; when it fails the turn fails with `Your apiKeyHelper script is failing`.
//!
//! The reply is deterministic and proves continuity:
//! `standin: you said "<prompt>" (turn <n> of session <sid>)`, plus
//! ` — before that you said "<previous prompt>"` from turn 2 on. Cost is 0.0001 USD per word
//! (prompt + reply), tokens are words.
//!
//! # Knobs
//! Words in the prompt (picortex-run scrubs the environment, so the prompt is the channel). The
//! same words in `$STANDIN_KNOBS` count too. Values run to the next whitespace, except
//! `#is_error=`, whose value runs to the end of its line.
//!
//! | knob | effect |
//! |---|---|
//! | `#sleep=<seconds>` | sleep (float seconds) before answering |
//! | `#eatmem=<MiB>` | allocate and touch that much memory, then continue |
//! | `#fill=<MiB>` | first of all, write that much into `fill.bin` in the working directory (the chat's home), 1 MiB at a time, stopping at the first error, and keep the file; the reply ends with ` \| fill: wrote <n> MiB of <MiB>, <then the error, or no error>` |
//! | `#subvol` | try to make a btrfs subvolume and a snapshot of the working directory in it (`/usr/bin/btrfs`), whose space would escape the home's quota; the reply ends with ` \| subvol: create=<ok or the error> snapshot=<ok or the error>` |
//! | `#crash` | abort (SIGABRT) after the user message is in the transcript |
//! | `#fail` | message on stderr, exit 1, nothing on stdout |
//! | `#is_error=<text>` | result `subtype:"success"`, `is_error:true`, `result:<text>`, exit 1 |
//! | `#exit=<code>` | exit with this code instead (e.g. `#is_error=… #exit=0`, issue #79500) |
//! | `#empty` | exit 0 printing nothing, before touching the transcript (issue #95217) |
//! | `#garbage` | print something that is not JSON, exit 0 |
//! | `#array` | json output as an array of messages with the result last |
//! | `#turns=<n>` | pretend the turn took n agent turns; over `--max-turns` → `error_max_turns` |
//! | `#auth` | require credentials (else `Not logged in · Please run /login`); reply names the source and the key's last 4 characters |
//! | `#env` | reply lists the sorted names (not values) of the environment variables |
//! | `#egress=<t>,<t>` | for each target, `host:port` is a `CONNECT` through `$HTTPS_PROXY` (picortex's relay), `/path` a `GET` of the agent's API through `$ANTHROPIC_BASE_URL` (with the turn's placeholder key), `tcp:host:port` a direct connection; the reply ends with ` \| egress: <t>=<status or error>,…` |
//! | `#cwd` | reply includes the working directory |
//! | `#argv` | reply includes the arguments (the prompt argument excluded) |
//! | `#system` | reply includes the `--append-system-prompt` text |
//! | `#model` | reply includes the model |
//! | `#hostile` | the reply is escape sequences, NUL, a bidi override and 200 kB of text |
//! | `#score=<x>` | with `--no-session-persistence` (picortex's discriminator), the reply is only `{"score": <x>, "reason": …}` |
//! | `#forge` | before answering, write a forged picortex-run result (text `standin: FORGED REPLY`, cost -1000) to stdout, stderr, every other descriptor it has and its parent's (see `attack::forge_result`); the reply ends with ` \| forge=<JSON of what each write did>` |
//! | `#ask=<path>` | (last line of the prompt only) with a `[picortex grant] <path> is readable at <mount>` line in the prompt, read `<mount>`; else start the `picortex` MCP server of `--mcp-config` and call its `request_access` tool over stdio; the reply ends with ` \| ask: <what happened>` |
//! | `#import=<chat>:<path>` | (last line only) with a `[picortex import] <path> was copied … at ~/<dest>` line in the prompt, read the copy; else call the MCP server's `import_file`; the reply ends with ` \| import: <what happened>` |
//! | `#cat=<path>` | (last line only) read a file; the reply ends with ` \| cat <path>: "<its start>"` or ` \| cat <path>: error <e>` |
//! | `#journal_forge=<marker>` | write a journal entry posing as the helper's audit of a refused call, `<marker>` in its message; the reply ends with ` \| journal_forge=sent` (or the error) |
//! | `#cost=<usd>` | report this `total_cost_usd` (any number, negative or absurd) |
//! | `#flood=<n>` | before answering, send `n` distinct 400-byte entries to journald's native socket and as many lines to stderr, to flush the journal; the reply ends with ` \| flood: <k> of <n> sent` |
//! | `#flood_bytes=<b>` | with `#flood`: entries of `b` bytes (400..=40000), mostly pseudo-random hex that compresses poorly |
//! | `#hold=<name>` | while it sleeps, listen on the abstract Unix socket `@<name>` and keep a world-readable marker in `/dev/shm` (what another chat's `#attack` looks for); the reply ends with ` \| hold: <what it set up, how many connected>` |
//! | `#attack` | instead of answering, attack the sandbox from inside the turn (see `attack.rs`): the reply is `standin: attack report <JSON array of {name, blocked, detail}>`; `other=<path>` anywhere in the prompt names another chat's home to try to read, `abstract=<name>` another chat's abstract socket to connect to, `seek=<chat id>,<turn id>` strings of another chat to look for in /run, /sys/fs/cgroup, /proc/self/net, /etc |

#![deny(unsafe_code)]

mod attack;
mod consent;

use serde_json::{json, Map, Value};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const VERSION: &str = "2.1.240 (Claude Code stand-in)";
const DEFAULT_MODEL: &str = "claude-standin-1";
const STDIN_CAP: u64 = 10 * 1024 * 1024;
const SETTINGS_FILE_CAP: u64 = 2 * 1024 * 1024;
const PERMISSION_MODES: [&str; 7] = [
    "acceptEdits",
    "bypassPermissions",
    "default",
    "dontAsk",
    "plan",
    "auto",
    "manual",
];
const NO_INPUT: &str =
    "Error: Input must be provided either through stdin or as a prompt argument when using --print";
const WHITESPACE_INPUT: &str =
    "Error: Input contained only whitespace characters. Please provide a non-empty prompt.";

/// How the process ends: a code, with optional text for stdout and stderr.
struct Exit {
    code: u8,
    stderr: Option<String>,
}

impl Exit {
    fn err(msg: impl Into<String>) -> Self {
        Exit {
            code: 1,
            stderr: Some(msg.into()),
        }
    }
    fn code(code: u8) -> Self {
        Exit { code, stderr: None }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    StreamJson,
}

#[derive(Default)]
struct Args {
    print: bool,
    format: Option<String>,
    verbose: bool,
    session_id: Option<String>,
    resume: Option<String>,
    fork_session: bool,
    disable_slash_commands: bool,
    permission_mode: Option<String>,
    append_system_prompt: Option<String>,
    settings: Option<String>,
    model: Option<String>,
    max_turns: Option<String>,
    /// `--no-session-persistence`: no transcript is written (research/claude-cli.md §2).
    no_session_persistence: bool,
    version: bool,
    positional: Vec<String>,
    /// Every argument except the positional prompt, for `#argv`.
    flags_seen: Vec<String>,
    /// `--mcp-config <json-or-file>` (the consent knobs start its `picortex` server).
    mcp_config: Option<String>,
    /// `--allowedTools <list>`.
    allowed_tools: Option<String>,
}

const VALUE_FLAGS: [(&str, &str); 10] = [
    ("--mcp-config", "<configs...>"),
    ("--allowedTools", "<tools...>"),
    ("--output-format", "<format>"),
    ("--session-id", "<uuid>"),
    ("--resume", "[value]"),
    ("--permission-mode", "<mode>"),
    ("--append-system-prompt", "<prompt>"),
    ("--settings", "<file-or-json>"),
    ("--model", "<model>"),
    ("--max-turns", "<turns>"),
];

fn parse_args(argv: &[String]) -> Result<Args, Exit> {
    let mut a = Args::default();
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        if arg == "--" {
            a.positional.extend(argv[i..].iter().cloned());
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            a.positional.push(arg.clone());
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let name = if name == "-r" {
            "--resume".to_owned()
        } else {
            name
        };
        if let Some((flag, meta)) = VALUE_FLAGS.iter().find(|(f, _)| *f == name) {
            // Options with a required value are greedy, like commander's: the next argument is
            // the value even when it starts with a dash.
            let value = match inline {
                Some(v) => v,
                None if i < argv.len() => {
                    i += 1;
                    argv[i - 1].clone()
                }
                None => {
                    return Err(Exit::err(format!(
                        "error: option '{flag} {meta}' argument missing"
                    )))
                }
            };
            a.flags_seen.push(flag.to_string());
            a.flags_seen.push(value.clone());
            let slot = match *flag {
                "--output-format" => &mut a.format,
                "--session-id" => &mut a.session_id,
                "--resume" => &mut a.resume,
                "--permission-mode" => &mut a.permission_mode,
                "--append-system-prompt" => &mut a.append_system_prompt,
                "--settings" => &mut a.settings,
                "--model" => &mut a.model,
                "--mcp-config" => &mut a.mcp_config,
                "--allowedTools" => &mut a.allowed_tools,
                _ => &mut a.max_turns,
            };
            *slot = Some(value);
            continue;
        }
        if inline.is_some() {
            return Err(Exit::err(format!("error: unknown option '{arg}'")));
        }
        a.flags_seen.push(name.clone());
        match name.as_str() {
            "-p" | "--print" => a.print = true,
            "--verbose" => a.verbose = true,
            "--fork-session" => a.fork_session = true,
            "--disable-slash-commands" => a.disable_slash_commands = true,
            "--no-session-persistence" => a.no_session_persistence = true,
            "--strict-mcp-config" => {}
            "--dangerously-skip-permissions" => {
                a.permission_mode = Some("bypassPermissions".into())
            }
            "-v" | "--version" => a.version = true,
            _ => return Err(Exit::err(format!("error: unknown option '{arg}'"))),
        }
    }
    Ok(a)
}

/// The canonical hyphenated UUID form, which is what the CLI checks for.
fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// `<cwd with every non-alphanumeric character replaced by '-'>`.
fn project_dir_name(cwd: &Path) -> String {
    cwd.to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

#[derive(Default)]
struct Knobs {
    sleep: Option<f64>,
    eatmem: Option<u64>,
    fill: Option<u64>,
    subvol: bool,
    crash: bool,
    fail: bool,
    is_error: Option<String>,
    exit: Option<u8>,
    empty: bool,
    garbage: bool,
    array: bool,
    turns: Option<u64>,
    auth: bool,
    env: bool,
    cwd: bool,
    argv: bool,
    system: bool,
    model: bool,
    attack: bool,
    attack_other: Option<String>,
    /// `abstract=<name>`: an abstract Unix socket of another chat to try to connect to.
    attack_abstract: Option<String>,
    /// `seek=<a>,<b>,…`: strings of another chat (its Linq chat id, a turn id) to look for.
    attack_seek: Vec<String>,
    /// `hosts=<ip>,<ip>`: the machine's own (non-loopback) addresses, which a turn in a
    /// network of its own cannot list.
    attack_hosts: Vec<String>,
    hold: Option<String>,
    egress: Vec<String>,
    flood: Option<u64>,
    flood_bytes: Option<usize>,
    score: Option<String>,
    hostile: bool,
    forge: bool,
    cost: Option<f64>,
    journal_forge: Option<String>,
    /// Consent knobs, read from the prompt's last line only (the message being answered, not
    /// the group's earlier messages): `#ask=<path>`, `#import=<chat>:<path>`, `#cat=<path>`.
    ask: Option<String>,
    import: Option<String>,
    cat: Option<String>,
}

fn consent_knobs(line: &str, k: &mut Knobs) {
    for w in line.split_whitespace() {
        let val = |p: &str| {
            w.strip_prefix(p)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        k.ask = val("#ask=").or(k.ask.take());
        k.import = val("#import=").or(k.import.take());
        k.cat = val("#cat=").or(k.cat.take());
    }
}

fn parse_knobs(text: &str, k: &mut Knobs) {
    for line in text.lines() {
        let mut rest = line;
        while let Some(pos) = rest.find('#') {
            let tail = &rest[pos..];
            if let Some(v) = tail.strip_prefix("#is_error=") {
                k.is_error = Some(v.trim().to_owned());
                break;
            }
            let word = tail.split_whitespace().next().unwrap_or("");
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            match key {
                "#sleep" => k.sleep = value.parse().ok(),
                "#eatmem" => k.eatmem = value.parse().ok(),
                "#fill" => k.fill = value.parse().ok(),
                "#subvol" => k.subvol = true,
                "#crash" => k.crash = true,
                "#fail" => k.fail = true,
                "#exit" => k.exit = value.parse().ok(),
                "#empty" => k.empty = true,
                "#garbage" => k.garbage = true,
                "#array" => k.array = true,
                "#turns" => k.turns = value.parse().ok(),
                "#auth" => k.auth = true,
                "#env" => k.env = true,
                "#cwd" => k.cwd = true,
                "#argv" => k.argv = true,
                "#system" => k.system = true,
                "#model" => k.model = true,
                "#attack" => k.attack = true,
                "#flood" => k.flood = value.parse().ok(),
                "#flood_bytes" => {
                    k.flood_bytes = value.parse().ok().filter(|b| (400..=40_000).contains(b))
                }
                "#hold" => k.hold = Some(value.to_owned()).filter(|v| !v.is_empty()),
                "#egress" => k.egress = list(value),
                "#score" => k.score = Some(value.to_owned()),
                "#hostile" => k.hostile = true,
                "#forge" => k.forge = true,
                "#cost" => k.cost = value.parse().ok(),
                "#journal_forge" => k.journal_forge = Some(value.to_owned()),
                _ => {}
            }
            rest = &tail[1..];
        }
    }
    for w in text.split_whitespace() {
        if let Some(v) = w.strip_prefix("other=").filter(|v| !v.is_empty()) {
            k.attack_other = Some(v.to_owned());
        }
        if let Some(v) = w.strip_prefix("abstract=").filter(|v| !v.is_empty()) {
            k.attack_abstract = Some(v.to_owned());
        }
        if let Some(v) = w.strip_prefix("hosts=") {
            k.attack_hosts = list(v);
        }
        if let Some(v) = w.strip_prefix("seek=") {
            k.attack_seek = list(v);
        }
    }
}

/// A knob's comma-separated values, empty ones dropped.
fn list(v: &str) -> Vec<String> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One `#egress=` target (see the table above): the HTTP status, or the error.
fn egress_try(target: &str) -> String {
    use std::net::TcpStream;
    let hostport = |url: &str| {
        url.trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("")
            .to_owned()
    };
    let (connect_to, request) = if let Some(addr) = target.strip_prefix("tcp:") {
        (addr.to_owned(), None)
    } else if target.starts_with('/') {
        let base = std::env::var("ANTHROPIC_BASE_URL").unwrap_or_default();
        let key = std::fs::read_to_string("/etc/picortex/anthropic-api-key").unwrap_or_default();
        (
            hostport(&base),
            Some(format!(
                "GET {target} HTTP/1.1\r\nHost: {}\r\nx-api-key: {}\r\nConnection: close\r\n\r\n",
                hostport(&base),
                key.trim()
            )),
        )
    } else {
        let proxy = std::env::var("HTTPS_PROXY").unwrap_or_default();
        (
            hostport(&proxy),
            Some(format!(
                "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
            )),
        )
    };
    let addr = match std::net::ToSocketAddrs::to_socket_addrs(connect_to.as_str())
        .ok()
        .and_then(|mut a| a.next())
    {
        Some(a) => a,
        None => return format!("bad address {connect_to:?}"),
    };
    let mut s = match TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => {
            return e.raw_os_error().map_or_else(
                || e.to_string(),
                |n| format!("{:?}", nix::errno::Errno::from_raw(n)),
            )
        }
    };
    let Some(req) = request else {
        return "connected".into();
    };
    attack::first_line(&mut s, req.as_bytes(), std::time::Duration::from_secs(15))
        .split_whitespace()
        .nth(1)
        .unwrap_or("no-answer")
        .to_owned()
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Write `bytes` to `path` atomically: a temp file in the same directory, then rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!("{name}.tmp.{}.{}", std::process::id(), now_ms()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The real uid, from `/proc/self/status` (std has no getuid).
fn real_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn load_settings(arg: &str) -> Result<Value, Exit> {
    let text = if arg.trim_start().starts_with('{') {
        arg.to_owned()
    } else {
        let f = std::fs::File::open(arg)
            .map_err(|e| Exit::err(format!("Error: Settings file not found: {arg} ({e})")))?;
        let mut s = String::new();
        f.take(SETTINGS_FILE_CAP + 1)
            .read_to_string(&mut s)
            .map_err(|e| Exit::err(format!("Error: Cannot read settings file {arg}: {e}")))?;
        if s.len() as u64 > SETTINGS_FILE_CAP {
            return Err(Exit::err(format!(
                "Error: Settings file {arg} is larger than 2 MiB"
            )));
        }
        s
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Exit::err("Error: Invalid settings: expected a JSON object")),
        Err(e) => Err(Exit::err(format!(
            "Error: Invalid JSON provided to --settings: {e}"
        ))),
    }
}

/// Where the credentials come from, and the key (for its last 4 characters), per the CLI's
/// precedence: ANTHROPIC_AUTH_TOKEN, ANTHROPIC_API_KEY, apiKeyHelper, CLAUDE_CODE_OAUTH_TOKEN,
/// then `/login` credentials.
fn credentials(
    helper: Option<&str>,
    config_dir: &Path,
) -> Result<Option<(String, String)>, String> {
    for var in ["ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY"] {
        if let Ok(v) = std::env::var(var) {
            if !v.is_empty() {
                return Ok(Some((var.to_owned(), v)));
            }
        }
    }
    if let Some(cmd) = helper {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|_| "Your apiKeyHelper script is failing".to_owned())?;
        let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let printable = key.bytes().all(|b| (0x21..0x7f).contains(&b));
        if !out.status.success() || key.is_empty() || key.len() > 16384 || !printable {
            return Err("Your apiKeyHelper script is failing".to_owned());
        }
        return Ok(Some(("apiKeyHelper".to_owned(), key)));
    }
    if let Ok(v) = std::env::var("CLAUDE_CODE_OAUTH_TOKEN") {
        if !v.is_empty() {
            return Ok(Some(("CLAUDE_CODE_OAUTH_TOKEN".to_owned(), v)));
        }
    }
    if let Ok(s) = std::fs::read_to_string(config_dir.join(".credentials.json")) {
        return Ok(Some(("oauth".to_owned(), s.trim().to_owned())));
    }
    Ok(None)
}

struct Transcript {
    path: PathBuf,
    prompts: Vec<String>,
    last_uuid: Option<String>,
}

fn read_transcript(path: &Path) -> Transcript {
    let mut t = Transcript {
        path: path.to_owned(),
        prompts: Vec::new(),
        last_uuid: None,
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return t;
    };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(u) = v.get("uuid").and_then(Value::as_str) {
            t.last_uuid = Some(u.to_owned());
        }
        if v.get("type").and_then(Value::as_str) == Some("user") {
            if let Some(c) = v.pointer("/message/content").and_then(Value::as_str) {
                t.prompts.push(c.to_owned());
            }
        }
    }
    t
}

fn append_line(
    t: &mut Transcript,
    kind: &str,
    sid: &str,
    cwd: &Path,
    message: Value,
) -> std::io::Result<()> {
    if t.path.as_os_str().is_empty() {
        return Ok(()); // --no-session-persistence
    }
    if let Some(dir) = t.path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let uuid = uuid::Uuid::new_v4().to_string();
    let line = json!({
        "type": kind,
        "uuid": uuid,
        "parentUuid": t.last_uuid,
        "sessionId": sid,
        "cwd": cwd.to_string_lossy(),
        "timestampMs": now_ms() as u64,
        "message": message,
    });
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&t.path)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    t.last_uuid = Some(uuid);
    Ok(())
}

/// Transcripts named `<sid>.jsonl` (or leftover `<sid>/` state) in any project directory, the
/// current one first.
fn find_session(projects: &Path, current: &str, sid: &str, include_dirs: bool) -> Option<PathBuf> {
    let file = format!("{sid}.jsonl");
    let here = projects.join(current).join(&file);
    if here.is_file() {
        return Some(here);
    }
    let entries = std::fs::read_dir(projects).ok()?;
    for e in entries.flatten() {
        let p = e.path().join(&file);
        if p.is_file() || (include_dirs && e.path().join(sid).is_dir()) {
            return Some(p);
        }
    }
    None
}

struct Ctx {
    format: Format,
    array: bool,
    model: String,
    session_id: String,
    cwd: PathBuf,
    permission_mode: String,
    api_key_source: String,
    started: Instant,
    /// `#cost=`: the cost to report instead of the computed one.
    cost: Option<f64>,
}

impl Ctx {
    fn init_message(&self) -> Value {
        json!({
            "type": "system", "subtype": "init",
            "session_id": self.session_id,
            "cwd": self.cwd.to_string_lossy(),
            "model": self.model,
            "tools": ["Bash", "Edit", "Glob", "Grep", "Read", "Write"],
            "mcp_servers": [],
            "permissionMode": self.permission_mode,
            "apiKeySource": self.api_key_source,
            "claude_code_version": VERSION,
            "output_style": "default",
            "slash_commands": [], "skills": [], "plugins": [],
            "uuid": uuid::Uuid::new_v4().to_string(),
        })
    }

    fn assistant_message(&self, text: &str, out_tokens: u64) -> Value {
        json!({
            "type": "assistant",
            "message": {
                "id": format!("msg_standin_{}", uuid::Uuid::new_v4().simple()),
                "type": "message", "role": "assistant", "model": self.model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 0, "output_tokens": out_tokens},
            },
            "parent_tool_use_id": null,
            "session_id": self.session_id,
            "uuid": uuid::Uuid::new_v4().to_string(),
        })
    }

    /// A result object with every always-present field of `SDKResultMessage`.
    #[allow(clippy::too_many_arguments)]
    fn result(
        &self,
        subtype: &str,
        is_error: bool,
        text: Option<&str>,
        errors: Option<Vec<String>>,
        num_turns: u64,
        tokens: (u64, u64),
        terminal_reason: &str,
    ) -> Value {
        let (input, output) = tokens;
        let cost = self.cost.unwrap_or((input + output) as f64 / 10000.0);
        let ms = self.started.elapsed().as_millis() as u64;
        let mut r = json!({
            "type": "result",
            "subtype": subtype,
            "uuid": uuid::Uuid::new_v4().to_string(),
            "session_id": self.session_id,
            "duration_ms": ms,
            "duration_api_ms": ms,
            "is_error": is_error,
            "num_turns": num_turns,
            "stop_reason": if is_error { Value::Null } else { json!("end_turn") },
            "total_cost_usd": cost,
            "usage": {
                "input_tokens": input, "output_tokens": output,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                "service_tier": "standard",
            },
            "modelUsage": { self.model.clone(): {
                "inputTokens": input, "outputTokens": output,
                "cacheReadInputTokens": 0, "cacheCreationInputTokens": 0,
                "webSearchRequests": 0, "costUSD": cost,
                "contextWindow": 200000, "maxOutputTokens": 32000,
            }},
            "permission_denials": [],
            "terminal_reason": terminal_reason,
        });
        if let Some(m) = r.as_object_mut() {
            if let Some(t) = text {
                m.insert("result".into(), json!(t));
                m.insert("api_error_status".into(), Value::Null);
            }
            if let Some(e) = errors {
                m.insert("errors".into(), json!(e));
            }
        }
        r
    }

    /// Print the run's messages in the requested format; the last one is the result.
    fn emit(&self, messages: Vec<Value>) {
        let mut out = std::io::stdout().lock();
        let result = messages.last().cloned().unwrap_or(Value::Null);
        let text = match self.format {
            Format::Text => match result.get("result").and_then(Value::as_str) {
                Some(t) => format!("{t}\n"),
                None => String::new(),
            },
            Format::Json if self.array => format!("{}\n", Value::Array(messages)),
            Format::Json => format!("{result}\n"),
            Format::StreamJson => messages.iter().map(|m| format!("{m}\n")).collect(),
        };
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

fn main() -> ExitCode {
    if let Some(code) = attack::child_main() {
        return code;
    }
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let exit = run(&argv);
    if let Some(msg) = exit.stderr {
        eprintln!("{msg}");
    }
    ExitCode::from(exit.code)
}

fn run(argv: &[String]) -> Exit {
    let started = Instant::now();
    let args = match parse_args(argv) {
        Ok(a) => a,
        Err(e) => return e,
    };
    if args.version {
        println!("{VERSION}");
        return Exit::code(0);
    }
    if !args.print {
        return Exit::err("claude-standin: only print mode (-p/--print) is supported");
    }
    let format = match args.format.as_deref() {
        None | Some("text") => Format::Text,
        Some("json") => Format::Json,
        Some("stream-json") => Format::StreamJson,
        Some(other) => {
            return Exit::err(format!(
                "error: option '--output-format <format>' argument '{other}' is invalid. \
                 Allowed choices are text, json, stream-json."
            ))
        }
    };
    if format == Format::StreamJson && !args.verbose {
        return Exit::err(
            "Error: When using --print, --output-format=stream-json requires --verbose",
        );
    }
    let permission_mode = args
        .permission_mode
        .clone()
        .unwrap_or_else(|| "default".into());
    if !PERMISSION_MODES.contains(&permission_mode.as_str()) {
        return Exit::err(format!(
            "error: option '--permission-mode <mode>' argument '{permission_mode}' is invalid. \
             Allowed choices are {}.",
            PERMISSION_MODES.join(", ")
        ));
    }
    if let Some(sid) = &args.session_id {
        if !is_uuid(sid) {
            return Exit::err("Error: Invalid session ID. Must be a valid UUID.");
        }
        if args.resume.is_some() && !args.fork_session {
            return Exit::err(
                "Error: --session-id can only be used with --continue or --resume if --fork-session is also specified.",
            );
        }
    }
    let max_turns = match args.max_turns.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => {
            return Exit::err(format!(
                "error: option '--max-turns <turns>' argument '{}' is invalid.",
                args.max_turns.as_deref().unwrap_or("")
            ))
        }
    };
    let settings = match args.settings.as_deref().map(load_settings).transpose() {
        Ok(s) => s,
        Err(e) => return e,
    };
    if args.positional.len() > 1 {
        return Exit::err(format!(
            "error: too many arguments. Expected 1 argument but got {}.",
            args.positional.len()
        ));
    }
    if permission_mode == "bypassPermissions"
        && real_uid() == Some(0)
        && std::env::var("IS_SANDBOX").as_deref() != Ok("1")
    {
        return Exit::err(
            "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons",
        );
    }

    // The prompt: the argument, then stdin when it is not a terminal (read to EOF).
    let mut prompt = args.positional.first().cloned().unwrap_or_default();
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut buf = Vec::new();
        match stdin.lock().take(STDIN_CAP + 1).read_to_end(&mut buf) {
            Ok(_) if buf.len() as u64 > STDIN_CAP => {
                return Exit::err("Error: Input exceeds the maximum stdin size of 10MB")
            }
            Ok(_) => {
                let piped = String::from_utf8_lossy(&buf);
                if !piped.is_empty() {
                    prompt = if prompt.is_empty() {
                        piped.into_owned()
                    } else {
                        format!("{prompt}\n\n{piped}")
                    };
                }
            }
            Err(e) => eprintln!("Warning: could not read stdin: {e}"),
        }
    }
    if prompt.is_empty() {
        return Exit::err(NO_INPUT);
    }
    if prompt.trim().is_empty() {
        return Exit::err(WHITESPACE_INPUT);
    }
    let mut knobs = Knobs::default();
    parse_knobs(&prompt, &mut knobs);
    consent_knobs(prompt.lines().last().unwrap_or(""), &mut knobs);
    if let Ok(extra) = std::env::var("STANDIN_KNOBS") {
        parse_knobs(&extra, &mut knobs);
    }

    // Global state, written on every start like the real CLI.
    let env_config = std::env::var_os("CLAUDE_CONFIG_DIR").filter(|v| !v.is_empty());
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let (config_dir, state_path) = match (&env_config, &home) {
        (Some(c), _) => (PathBuf::from(c), PathBuf::from(c).join(".claude.json")),
        (None, Some(h)) => (h.join(".claude"), h.join(".claude.json")),
        (None, None) => return Exit::err("Error: HOME is not set"),
    };
    let mut state = match std::fs::read(&state_path) {
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        },
        Err(_) => Map::new(),
    };
    let startups = state
        .get("numStartups")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        + 1;
    state.insert("numStartups".into(), json!(startups));
    let write = std::fs::create_dir_all(&config_dir).and_then(|_| {
        let mut bytes =
            serde_json::to_vec_pretty(&Value::Object(state.clone())).unwrap_or_default();
        bytes.push(b'\n');
        write_atomically(&state_path, &bytes)
    });
    if let Err(e) = write {
        return Exit::err(format!(
            "Error: failed to write {}: {e}",
            state_path.display()
        ));
    }
    if state.get("hasCompletedOnboarding") != Some(&Value::Bool(true)) {
        // Issue #95217: a service user without onboarding state gets nothing at all.
        return Exit::code(0);
    }

    let cwd = match std::env::current_dir() {
        Ok(c) => c,
        Err(e) => {
            return Exit::err(format!(
                "Error: cannot determine the working directory: {e}"
            ))
        }
    };
    let projects = config_dir.join("projects");
    let current = project_dir_name(&cwd);
    let user_settings = std::fs::read(config_dir.join("settings.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let setting = |key: &str| -> Option<Value> {
        settings
            .as_ref()
            .and_then(|s| s.get(key).cloned())
            .or_else(|| user_settings.as_ref().and_then(|s| s.get(key).cloned()))
    };
    let verbose =
        args.verbose || setting("viewMode").as_ref().and_then(Value::as_str) == Some("verbose");
    let mut ctx = Ctx {
        format,
        array: format == Format::Json && (verbose || knobs.array),
        model: args.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into()),
        session_id: String::new(),
        cwd: cwd.clone(),
        permission_mode: permission_mode.clone(),
        api_key_source: "none".into(),
        started,
        cost: knobs.cost,
    };

    // Which session, and its transcript so far.
    let mut transcript = match (&args.resume, &args.session_id) {
        (Some(rid), _) => match find_session(&projects, &current, rid, false) {
            Some(path) => {
                let old = read_transcript(&path);
                match (&args.session_id, args.fork_session) {
                    (sid, true) => {
                        let sid = sid
                            .clone()
                            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                        let path = projects.join(&current).join(format!("{sid}.jsonl"));
                        if let Some(dir) = path.parent() {
                            let _ = std::fs::create_dir_all(dir);
                        }
                        if let Err(e) = std::fs::copy(&old.path, &path) {
                            return Exit::err(format!("Error: cannot fork session: {e}"));
                        }
                        ctx.session_id = sid;
                        Transcript { path, ..old }
                    }
                    (_, false) => {
                        ctx.session_id = rid.clone();
                        old
                    }
                }
            }
            None => {
                ctx.session_id = rid.clone();
                let msg = format!("No conversation found with session ID: {rid}");
                if format == Format::Text {
                    return Exit::err(msg);
                }
                let mut r = ctx.result(
                    "error_during_execution",
                    true,
                    None,
                    Some(vec![msg]),
                    0,
                    (0, 0),
                    "completed",
                );
                if let Some(m) = r.as_object_mut() {
                    m.insert("total_cost_usd".into(), json!(0));
                    m.insert("usage".into(), json!({}));
                    m.insert("modelUsage".into(), json!({}));
                }
                ctx.emit(vec![r]);
                return Exit::code(1);
            }
        },
        (None, Some(sid)) => {
            if find_session(&projects, &current, sid, true).is_some() {
                return Exit::err(format!("Error: Session ID {sid} is already in use."));
            }
            ctx.session_id = sid.clone();
            Transcript {
                path: projects.join(&current).join(format!("{sid}.jsonl")),
                prompts: vec![],
                last_uuid: None,
            }
        }
        (None, None) => {
            let sid = uuid::Uuid::new_v4().to_string();
            ctx.session_id = sid.clone();
            Transcript {
                path: projects.join(&current).join(format!("{sid}.jsonl")),
                prompts: vec![],
                last_uuid: None,
            }
        }
    };

    if args.no_session_persistence {
        transcript.path = PathBuf::new();
    }
    if knobs.empty {
        return Exit::code(0);
    }
    let sid = ctx.session_id.clone();
    let user_msg = json!({"role": "user", "content": prompt});
    if let Err(e) = append_line(&mut transcript, "user", &sid, &cwd, user_msg) {
        eprintln!("Transcript writes are failing ({e}); this session may not be resumable.");
    }

    let fill_report = knobs.fill.map(fill);
    let subvol_report = knobs.subvol.then(subvol);
    let flood_report = knobs
        .flood
        .map(|n| attack::flood_journal(n, knobs.flood_bytes.unwrap_or(400)));
    let held = knobs.hold.as_deref().map(attack::Hold::start);
    if let Some(secs) = knobs.sleep.filter(|s| s.is_finite() && *s > 0.0) {
        std::thread::sleep(Duration::from_secs_f64(secs));
    }
    let hold_report = held.map(attack::Hold::finish);
    let forge_report = knobs.forge.then(attack::forge_result);
    let journal_forge = knobs.journal_forge.as_deref().map(attack::forge_journal);
    let consent_report: Vec<String> = [
        knobs
            .ask
            .as_deref()
            .map(|w| consent::ask(&prompt, w, args.mcp_config.as_deref())),
        knobs
            .import
            .as_deref()
            .map(|w| consent::import(&prompt, w, args.mcp_config.as_deref())),
        knobs.cat.as_deref().map(consent::cat),
    ]
    .into_iter()
    .flatten()
    .collect();
    let attack_report = knobs.attack.then(|| {
        attack::report(&attack::run_all(&attack::Targets {
            other: knobs.attack_other.as_deref(),
            abstract_name: knobs.attack_abstract.as_deref(),
            seek: &knobs.attack_seek,
            hosts: &knobs.attack_hosts,
        }))
    });
    let mut hoard: Vec<u8> = Vec::new();
    if let Some(mib) = knobs.eatmem {
        let len = (mib as usize).saturating_mul(1 << 20);
        hoard = vec![0u8; len];
        for i in (0..hoard.len()).step_by(4096) {
            hoard[i] = 1;
        }
        std::hint::black_box(&hoard);
    }
    if knobs.crash {
        std::process::abort();
    }
    if knobs.fail {
        return Exit::err("claude-standin: failing as asked (#fail)");
    }
    if knobs.garbage {
        println!("this is not JSON {{ \"type\": \"result\"");
        return Exit::code(knobs.exit.unwrap_or(0));
    }

    let input_tokens = words(&prompt) + args.append_system_prompt.as_deref().map_or(0, words);
    let helper = setting("apiKeyHelper").and_then(|v| v.as_str().map(str::to_owned));
    let creds = match credentials(helper.as_deref(), &config_dir) {
        Ok(c) => c,
        Err(msg) => return finish_error(&ctx, &msg, input_tokens, knobs.exit),
    };
    if let Some((source, _)) = &creds {
        ctx.api_key_source = source.clone();
    }
    if knobs.auth && creds.is_none() {
        return finish_error(
            &ctx,
            "Not logged in · Please run /login",
            input_tokens,
            knobs.exit,
        );
    }
    if let Some(text) = &knobs.is_error {
        return finish_error(&ctx, text, input_tokens, knobs.exit);
    }
    let turns = knobs.turns.unwrap_or(1);
    if let Some(max) = max_turns.filter(|m| turns > *m) {
        let msg = format!("Reached maximum number of turns ({max})");
        let r = ctx.result(
            "error_max_turns",
            true,
            None,
            Some(vec![msg.clone()]),
            max + 1,
            (input_tokens, 0),
            "max_turns",
        );
        if format == Format::Text {
            return Exit::err(format!("Error: {msg}"));
        }
        ctx.emit(with_preamble(&ctx, vec![r]));
        return Exit::code(knobs.exit.unwrap_or(1));
    }

    let n = transcript.prompts.len() + 1;
    let mut reply = format!("standin: you said \"{prompt}\" (turn {n} of session {sid})");
    if let Some(prev) = transcript.prompts.last() {
        reply.push_str(&format!(" — before that you said \"{prev}\""));
    }
    if let Some(r) = &attack_report {
        // Nothing else in this reply, so the report parses as it is.
        reply = format!("standin: attack report {r}");
    }
    if knobs.hostile {
        // What a hostile agent would send a phone: escapes, NUL, a bidi override, 200 kB.
        reply = format!(
            "\u{1b}[31mALERT\u{1b}[0m \u{1b}]0;pwned\u{7}nul\u{0}here \u{202E}desrever\u{202C} {}",
            "flood ".repeat(200_000 / 6)
        );
    }
    if let (true, Some(score)) = (args.no_session_persistence, &knobs.score) {
        // Asked as picortex's discriminator: answer as its prompt asks, and only that.
        reply = format!("{{\"score\": {score}, \"reason\": \"standin knob\"}}");
    }
    if let Some(f) = &flood_report {
        reply.push_str(&format!(" | flood: {f}"));
    }
    if let Some(h) = &hold_report {
        reply.push_str(&format!(" | hold: {h}"));
    }
    if !knobs.egress.is_empty() {
        let got: Vec<String> = knobs
            .egress
            .iter()
            .map(|t| format!("{t}={}", egress_try(t)))
            .collect();
        reply.push_str(&format!(" | egress: {}", got.join(",")));
    }
    if knobs.cwd {
        reply.push_str(&format!(" | cwd={}", cwd.display()));
    }
    if knobs.env {
        let mut names: Vec<String> = std::env::vars_os()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        names.sort();
        reply.push_str(&format!(" | env={}", names.join(",")));
    }
    if knobs.argv {
        reply.push_str(&format!(" | argv={}", args.flags_seen.join(" ")));
    }
    if knobs.system {
        reply.push_str(&format!(
            " | system=\"{}\"",
            args.append_system_prompt.as_deref().unwrap_or("")
        ));
    }
    if knobs.model {
        reply.push_str(&format!(" | model={}", ctx.model));
    }
    if knobs.auth {
        if let Some((source, key)) = &creds {
            let tail: String = key
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            reply.push_str(&format!(" | auth={source}:…{tail}"));
        }
    }
    if let Some(f) = &fill_report {
        reply.push_str(&format!(" | {f}"));
    }
    if let Some(v) = &subvol_report {
        reply.push_str(&format!(" | {v}"));
    }
    if knobs.eatmem.is_some() {
        reply.push_str(&format!(" | ate {} MiB", hoard.len() >> 20));
    }
    if let Some(f) = &forge_report {
        reply.push_str(&format!(" | forge={f}"));
    }
    if let Some(j) = &journal_forge {
        reply.push_str(&format!(" | journal_forge={j}"));
    }
    for c in &consent_report {
        reply.push_str(&format!(" | {c}"));
    }
    drop(hoard);

    let output_tokens = words(&reply);
    let assistant = ctx.assistant_message(&reply, output_tokens);
    let transcript_msg = assistant.get("message").cloned().unwrap_or(Value::Null);
    if let Err(e) = append_line(&mut transcript, "assistant", &sid, &cwd, transcript_msg) {
        eprintln!("Transcript writes are failing ({e}); this session may not be resumable.");
    }
    let r = ctx.result(
        "success",
        false,
        Some(&reply),
        None,
        turns,
        (input_tokens, output_tokens),
        "completed",
    );
    ctx.emit(with_preamble(&ctx, vec![assistant, r]));
    Exit::code(knobs.exit.unwrap_or(0))
}

/// `#fill=<MiB>`: how far writing `fill.bin` got and what stopped it (a chat at its disk quota
/// sees EDQUOT, "Disk quota exceeded").
fn fill(mib: u64) -> String {
    let mut f = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("fill.bin")
    {
        Ok(f) => f,
        Err(e) => return format!("fill: cannot create fill.bin: {e}"),
    };
    let chunk = vec![0x5au8; 1 << 20];
    let mut written: u64 = 0;
    let mut error = None;
    'outer: for _ in 0..mib {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            match f.write(rest) {
                Ok(0) => {
                    error = Some("a write of 0 bytes".to_owned());
                    break 'outer;
                }
                Ok(n) => {
                    written += n as u64;
                    rest = &rest[n..];
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error = Some(e.to_string());
                    break 'outer;
                }
            }
        }
    }
    if let (Err(e), None) = (f.sync_all(), &error) {
        error = Some(format!("fsync: {e}"));
    }
    format!(
        "fill: wrote {} MiB of {mib}, {}",
        written >> 20,
        error.map_or("no error".to_owned(), |e| format!("then {e}"))
    )
}

/// `#subvol`: what became of a subvolume and a snapshot made by the agent itself.
fn subvol() -> String {
    let btrfs = |args: &[&str]| match std::process::Command::new("/usr/bin/btrfs")
        .args(args)
        .output()
    {
        Ok(o) if o.status.success() => "ok".to_owned(),
        Ok(o) => String::from_utf8_lossy(&o.stderr)
            .trim()
            .replace(char::is_whitespace, "_"),
        Err(e) => format!("cannot_run_btrfs:{e}").replace(char::is_whitespace, "_"),
    };
    format!(
        "subvol: create={} snapshot={}",
        btrfs(&["subvolume", "create", "escape-subvol"]),
        btrfs(&["subvolume", "snapshot", ".", "escape-snap"])
    )
}

/// The init message goes first in stream-json and in verbose arrays.
fn with_preamble(ctx: &Ctx, mut messages: Vec<Value>) -> Vec<Value> {
    if ctx.format == Format::StreamJson || ctx.array {
        messages.insert(0, ctx.init_message());
    } else {
        // A plain json result carries only the result.
        messages.retain(|m| m.get("type").and_then(Value::as_str) == Some("result"));
    }
    messages
}

/// An API-side failure: `subtype:"success"` (sic), `is_error:true`, the text as `result`.
fn finish_error(ctx: &Ctx, text: &str, input_tokens: u64, exit: Option<u8>) -> Exit {
    let r = ctx.result(
        "success",
        true,
        Some(text),
        None,
        1,
        (input_tokens, 0),
        "api_error",
    );
    ctx.emit(with_preamble(ctx, vec![r]));
    Exit::code(exit.unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, Exit> {
        parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn knobs_are_words_and_is_error_takes_the_line() {
        let mut k = Knobs::default();
        parse_knobs(
            "hi #sleep=0.5 #env\n#is_error=API Error: Rate limit reached\n#exit=0 #array",
            &mut k,
        );
        assert_eq!(k.sleep, Some(0.5));
        assert!(k.env && k.array && !k.fail);
        assert_eq!(k.is_error.as_deref(), Some("API Error: Rate limit reached"));
        assert_eq!(k.exit, Some(0));
        assert!(!k.attack);
    }

    #[test]
    fn attack_takes_the_other_home_from_anywhere_in_the_prompt() {
        let mut k = Knobs::default();
        parse_knobs(
            "please #attack other=/var/lib/picortex/chats/ab12cd34 now",
            &mut k,
        );
        assert!(k.attack);
        assert_eq!(
            k.attack_other.as_deref(),
            Some("/var/lib/picortex/chats/ab12cd34")
        );
    }

    #[test]
    fn project_dir_replaces_non_alphanumerics() {
        assert_eq!(
            project_dir_name(Path::new("/var/lib/picortex/chats/ab12")),
            "-var-lib-picortex-chats-ab12"
        );
        assert_eq!(project_dir_name(Path::new("/a_b.c d")), "-a-b-c-d");
    }

    #[test]
    fn value_flags_are_greedy_and_accept_equals() {
        let a = args(&[
            "-p",
            "--append-system-prompt",
            "-x",
            "--model=opus",
            "-r",
            "id",
            "--",
            "--not-a-flag",
        ])
        .ok()
        .unwrap();
        assert_eq!(a.append_system_prompt.as_deref(), Some("-x"));
        assert_eq!(a.model.as_deref(), Some("opus"));
        assert_eq!(a.resume.as_deref(), Some("id"));
        assert_eq!(a.positional, vec!["--not-a-flag"]);
    }

    #[test]
    fn unknown_and_valueless_flags_fail() {
        assert!(args(&["-p", "--bogus"]).is_err());
        assert!(args(&["-p", "--print=yes"]).is_err());
        let e = args(&["-p", "--model"]).err().unwrap();
        assert_eq!(
            e.stderr.as_deref(),
            Some("error: option '--model <model>' argument missing")
        );
    }

    #[test]
    fn uuids_must_be_hyphenated() {
        assert!(is_uuid("c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10"));
        assert!(!is_uuid("c91fb9572f1e4c4b9a515b1d0c3e7a10"));
        assert!(!is_uuid("nope"));
    }
}
