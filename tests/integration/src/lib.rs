//! The integration-test harness: boots a throwaway systemd (tests/harness/machine.sh) with the
//! staged `make install` inside, and drives it from outside the way an operator would: systemctl,
//! busctl, journalctl, /proc, /etc/passwd, and the Linq simulator's control socket.
//!
//! Every `Machine` is powered off and cleaned up when dropped; if the test is failing, the
//! machine's journal is printed first.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

pub use serde_json::json;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn script() -> PathBuf {
    repo().join("tests/harness/machine.sh")
}

pub struct Machine {
    pub pid: u32,
    pub name: String,
}

/// What a command inside the machine did.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Machine {
    /// Boot a machine with the staged install (`PICORTEX_STAGE`, default `build/stage`).
    pub fn boot() -> Machine {
        let stage = std::env::var_os("PICORTEX_STAGE")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("build/stage"));
        assert!(
            stage.join("usr/bin/picortexd").exists(),
            "no staged install at {} — run `make stage PROFILE=dev` (make test does)",
            stage.display()
        );
        Self::boot_stage(&stage)
    }

    /// Boot a machine with `stage` copied over the host's root (tests/packaging.rs boots one
    /// without picortex, to install the .deb into it).
    pub fn boot_stage(stage: &Path) -> Machine {
        assert!(
            Command::new("id")
                .arg("-u")
                .output()
                .map(|o| o.stdout == b"0\n")
                .unwrap_or(false),
            "integration tests boot a systemd in namespaces and must run as root"
        );
        let name = format!(
            "pxt-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new(script())
            .args(["boot"])
            .arg(stage)
            .arg(&name)
            .output()
            .expect("run machine.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "boot failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = stdout
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .parse()
            .expect("machine pid");
        if !out.stderr.is_empty() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Machine { pid, name }
    }

    /// Run a bash script inside the machine as root.
    pub fn sh(&self, script: &str) -> Out {
        Command::new(self::script())
            .args(["exec", &self.pid.to_string(), "/bin/bash", "-c", script])
            .output()
            .expect("nsenter")
            .into()
    }

    /// Run a script that must succeed; returns its stdout.
    pub fn ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert_eq!(
            o.code, 0,
            "`{script}` failed ({}):\n{}{}",
            o.code, o.stdout, o.stderr
        );
        o.stdout
    }

    /// A path inside the machine, as the host can reach it.
    pub fn path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{}", self.pid, p))
    }

    pub fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap_or_else(|e| panic!("read {p}: {e}"))
    }

    /// The files among `paths` (shell words: directories are searched whole, globs such as
    /// `/proc/[0-9]*/environ` allowed) that hold `secret`, sorted. The secret is read from a
    /// file, so the search's own command line does not contain it.
    pub fn files_holding(&self, secret: &str, paths: &str) -> Vec<String> {
        std::fs::write(self.path("/root/needle"), secret).expect("write the needle");
        let mut v: Vec<String> = self
            .sh(&format!(
                "grep -r -l -a -F -f /root/needle {paths} 2>/dev/null; true"
            ))
            .stdout
            .lines()
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    }

    pub fn journal(&self, args: &str) -> String {
        // Every journal: the system's and the turns' own (LogNamespace=picortex-turns). A
        // line is sent to journald asynchronously; `--sync` waits until every line sent
        // before it is stored, so a test never reads a journal that lags what it awaited.
        self.sh(&format!(
            "journalctl --sync; journalctl --namespace=picortex-turns --sync 2>/dev/null; \
             journalctl --namespace='*' --no-pager -o cat {args}"
        ))
        .stdout
    }

    /// Poll `f` until it returns Some, or fail after `timeout` saying what was awaited.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < end,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Add `lines` (TOML `key = value` lines) to section `[section]` of the gateway's
    /// configuration, creating the section when the file has none. Call before
    /// `start_picortex`. A key set twice makes picortexd refuse to start, loudly: a test never
    /// silently runs on a configuration it did not mean.
    pub fn configure(&self, section: &str, lines: &str) {
        let path = self.path("/etc/picortex/picortexd.toml");
        let cfg = std::fs::read_to_string(&path).expect("read config");
        let header = format!("[{section}]\n");
        let new = match cfg.find(&header) {
            Some(at) if at == 0 || cfg[..at].ends_with('\n') => {
                let after = at + header.len();
                format!("{}{lines}\n{}", &cfg[..after], &cfg[after..])
            }
            _ => format!("{cfg}\n{header}{lines}\n"),
        };
        assert_ne!(new, cfg);
        std::fs::write(&path, new).expect("write config");
    }

    /// Set `key` of `[section]` in the gateway's configuration to `value` (a TOML value),
    /// replacing the line that sets it or adding one (never a silent no-op, as a text replace that
    /// no longer matches would be). Call before `start_picortex`.
    pub fn set_config(&self, section: &str, key: &str, value: &str) {
        let path = self.path("/etc/picortex/picortexd.toml");
        let cfg = std::fs::read_to_string(&path).expect("read config");
        let mut out = Vec::new();
        let (mut in_section, mut done) = (false, false);
        for line in cfg.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                if in_section && !done {
                    out.push(format!("{key} = {value}"));
                    done = true;
                }
                in_section = t == format!("[{section}]");
            } else if in_section && !done && t.split('=').next().map(str::trim) == Some(key) {
                out.push(format!("{key} = {value}"));
                done = true;
                continue;
            }
            out.push(line.to_owned());
        }
        if !done {
            if !in_section {
                out.push(format!("[{section}]"));
            }
            out.push(format!("{key} = {value}"));
        }
        std::fs::write(&path, out.join("\n") + "\n").expect("write config");
    }

    /// Turn off spare turn units (turns.spare_ttl_s = 0), for tests that count turn units or
    /// need every turn to start afresh through the helper. Call before `start_picortex`.
    pub fn without_spares(&self) {
        self.set_config("turns", "spare_ttl_s", "0");
    }

    /// Start the Linq simulator and enable the gateway's socket (the gateway itself starts on
    /// the first connection).
    pub fn start_picortex(&self) {
        self.ok("systemctl start linq-sim.service && systemctl enable --now picortexd.socket");
    }

    /// The Linq simulator's control interface.
    pub fn sim(&self) -> Sim {
        Sim {
            sock: self.path("/run/linq-sim/control.sock"),
        }
    }

    /// The unit's main PID's /proc/<pid>/status.
    pub fn unit_status(&self, unit: &str) -> String {
        let pid = self.ok(&format!("systemctl show -P MainPID {unit}"));
        self.ok(&format!("cat /proc/{}/status", pid.trim()))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- journal of {} (last 400 lines) ----", self.name);
            eprintln!(
                "{}",
                self.sh("journalctl --namespace='*' --no-pager -o short-precise -n 400")
                    .stdout
            );
        }
        let _ = Command::new(script())
            .args(["stop", &self.pid.to_string(), &self.name])
            .status();
    }
}

/// `chat-<first 8 hex of sha256(chat id)>` (SPEC P1).
pub fn chat_tag(chat_id: &str) -> String {
    hex::encode(Sha256::digest(chat_id.as_bytes()))[..8].to_owned()
}

/// A minimal HTTP/1.1 client over the simulator's Unix control socket.
pub struct Sim {
    sock: PathBuf,
}

impl Sim {
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut s = UnixStream::connect(&self.sock)
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.sock.display()));
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read");
        let text = String::from_utf8_lossy(&raw);
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_owned()
        };
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    pub fn post(&self, path: &str, body: Value) -> Value {
        let (st, v) = self.request("POST", path, Some(&body));
        assert!((200..300).contains(&st), "POST {path} -> {st}: {v}");
        v
    }

    pub fn get(&self, path: &str) -> Value {
        let (st, v) = self.request("GET", path, None);
        assert!((200..300).contains(&st), "GET {path} -> {st}: {v}");
        v
    }

    /// A handle writes `text` to the bot; returns the simulator's answer (chat_id, message_id, …).
    pub fn text(&self, from: &str, chat_id: Option<&str>, text: &str) -> Value {
        let mut b = json!({ "from": from, "text": text });
        if let Some(c) = chat_id {
            b["chat_id"] = json!(c);
        }
        self.post("/control/inbound", b)
    }

    /// What the bot has sent in a chat, oldest first.
    pub fn sent(&self, chat_id: &str) -> Vec<Value> {
        match self.get(&format!("/control/sent?chat_id={chat_id}")) {
            Value::Array(v) => v,
            Value::Object(mut o) => match o.remove("messages") {
                Some(Value::Array(v)) => v,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Standard Webhooks and legacy signatures, as Linq makes them, for tests that forge or replay.
pub fn sign(secret: &str, id: &str, ts: i64, body: &str) -> (String, String) {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim().trim_start_matches("whsec_"))
        .expect("secret");
    let mut m = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    m.update(format!("{id}.{ts}.{body}").as_bytes());
    let std = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
    );
    let mut l = Hmac::<Sha256>::new_from_slice(secret.trim().as_bytes()).expect("key");
    l.update(format!("{ts}.{body}").as_bytes());
    (std, hex::encode(l.finalize().into_bytes()))
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ---- crash and outage tests (tests/crash.rs, tests/outage.rs) ----

/// Marker picortexd leaves when an armed crash point fired (picortexd/src/failpoint.rs).
pub const FAILPOINT_MARKER: &str = "/var/lib/picortex/failpoint.fired";

impl Machine {
    /// Put `[Service]` lines into a runtime drop-in `name` of picortexd.service and reload;
    /// they apply from its next start.
    pub fn gateway_dropin(&self, name: &str, lines: &str) {
        self.ok(&format!(
            "mkdir -p /run/systemd/system/picortexd.service.d && printf '[Service]\\n%s\\n' '{lines}' > /run/systemd/system/picortexd.service.d/{name}.conf && systemctl daemon-reload"
        ));
    }

    /// Arm crash point `point`: picortexd SIGKILLs itself the first time it gets there.
    pub fn arm_failpoint(&self, point: &str) {
        self.gateway_dropin(
            "50-failpoint",
            &format!("Environment=PICORTEX_FAILPOINT={point}"),
        );
        self.rearm_failpoint();
    }

    /// Let the armed point fire once more (the marker stops a restarted process crashing again).
    pub fn rearm_failpoint(&self) {
        self.ok(&format!("rm -f {FAILPOINT_MARKER}"));
    }

    pub fn failpoint_fired(&self) -> bool {
        self.path(FAILPOINT_MARKER).exists()
    }

    /// picortexd.service's current invocation (changes on every start); empty when never started.
    pub fn gateway_invocation(&self) -> String {
        self.ok("systemctl show -P InvocationID picortexd.service")
            .trim()
            .to_owned()
    }

    /// Wait until picortexd runs again under an invocation other than `before`.
    pub fn wait_gateway_restarted(&self, before: &str, timeout: Duration) -> String {
        self.wait_for("picortexd to be started again", timeout, || {
            let now = self.gateway_invocation();
            let up = self
                .sh("systemctl is-active picortexd.service")
                .stdout
                .trim()
                == "active";
            (up && !now.is_empty() && now != before).then_some(now)
        })
    }

    /// A query on the gateway's database, run as its owner (never as root, which would leave
    /// root-owned -wal/-shm files behind). Rows come back '|'-separated, one per line.
    pub fn sql(&self, query: &str) -> String {
        std::fs::write(self.path("/tmp/query.sql"), query).expect("write query");
        self.ok("chmod 644 /tmp/query.sql && setpriv --reuid=picortex --regid=picortex --clear-groups sqlite3 -bail -cmd '.timeout 5000' /var/lib/picortex/picortex.db < /tmp/query.sql")
            .trim()
            .to_owned()
    }

    /// A query answering one integer.
    pub fn sql_n(&self, query: &str) -> i64 {
        let s = self.sql(query);
        s.parse()
            .unwrap_or_else(|_| panic!("{query}: not a number: {s:?}"))
    }

    /// Wait until the simulator has no webhook delivery left to retry.
    pub fn wait_deliveries_settled(&self, timeout: Duration) {
        let sim = self.sim();
        self.wait_for("every webhook delivery settled", timeout, || {
            let d = sim.get("/control/deliveries");
            let pending = d
                .as_array()
                .map(|a| a.iter().filter(|d| d["state"] == "pending").count())
                .unwrap_or(0);
            (pending == 0).then_some(())
        });
    }

    /// Wait until the bot has sent at least `n` messages in `chat`; all of them, oldest first.
    pub fn wait_replies(&self, chat: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let sim = self.sim();
        self.wait_for(&format!("{n} bot replies in chat {chat}"), timeout, || {
            let s = sim.sent(chat);
            (s.len() >= n).then_some(s)
        })
    }

    /// Wait until the bot has sent a message containing `needle` in `chat`; that message.
    pub fn wait_reply_containing(&self, chat: &str, needle: &str, timeout: Duration) -> Value {
        let sim = self.sim();
        self.wait_for(
            &format!("a bot message containing {needle:?} in chat {chat}"),
            timeout,
            || {
                sim.sent(chat)
                    .into_iter()
                    .find(|m| m["text"].as_str().is_some_and(|t| t.contains(needle)))
            },
        )
    }

    /// `from` sends `text` in `chat` (a new 1:1 chat when None, which is then filled in) and the
    /// bot's one reply to it comes back; more than one reply fails the test, including one that
    /// would come late (the count is taken again once the chat has nothing left to do).
    pub fn exchange(&self, from: &str, chat: &mut Option<String>, text: &str) -> String {
        let sim = self.sim();
        let before = chat.as_deref().map(|c| sim.sent(c).len()).unwrap_or(0);
        let r = sim.text(from, chat.as_deref(), text);
        let c = r["chat_id"].as_str().expect("chat_id").to_owned();
        *chat = Some(c.clone());
        self.wait_replies(&c, before + 1, Duration::from_secs(40));
        self.wait_chat_settled(&c, Duration::from_secs(40));
        let sent = sim.sent(&c);
        assert_eq!(
            sent.len(),
            before + 1,
            "more than one reply to {text:?}: {sent:?}"
        );
        sent[before]["text"].as_str().unwrap_or_default().to_owned()
    }

    /// Wait until `chat` has nothing in flight: no turn queued, starting or running, and no
    /// message of the bot's waiting in the outbox. What the simulator has then is final.
    pub fn wait_chat_settled(&self, chat: &str, timeout: Duration) {
        self.wait_for(&format!("chat {chat} settled"), timeout, || {
            (self.sql_n(&format!(
                "SELECT (SELECT COUNT(*) FROM turns WHERE chat_id = '{chat}' AND status IN ('queued', 'starting', 'running'))
                      + (SELECT COUNT(*) FROM outbox WHERE chat_id = '{chat}' AND status = 'pending')"
            )) == 0)
                .then_some(())
        });
    }

    /// Wait until the whole system is settled: no webhook delivery left to retry, no turn queued,
    /// starting or running, no message pending in the outbox. Counting after this sees every
    /// duplicate that could still come.
    pub fn wait_settled(&self, timeout: Duration) {
        self.wait_deliveries_settled(timeout);
        self.wait_for("no turn in flight and no reply pending", timeout, || {
            (self.sql_n(
                "SELECT (SELECT COUNT(*) FROM turns WHERE status IN ('queued', 'starting', 'running'))
                      + (SELECT COUNT(*) FROM outbox WHERE status = 'pending')",
            ) == 0)
                .then_some(())
        });
    }

    /// Turn units systemd still has loaded (the gateway releases each one after recording it).
    pub fn loaded_turn_units(&self) -> Vec<String> {
        self.ok(
            "systemctl list-units --all --plain --no-legend 'picortex-turn-*' | awk '{print $1}'",
        )
        .lines()
        .map(str::to_owned)
        .collect()
    }
}

impl Sim {
    /// Set fault injection fields (`api`, `api_delay_ms`, `api_down`, `duplicate_deliveries`).
    pub fn faults(&self, f: Value) -> Value {
        self.post("/control/faults", f)
    }

    pub fn clear_faults(&self) {
        let (st, v) = self.request("DELETE", "/control/faults", None);
        assert!(
            (200..300).contains(&st),
            "DELETE /control/faults -> {st}: {v}"
        );
    }

    /// Set run-time config (`retry_base_ms`, `echo_outbound`, `webhook_url`).
    pub fn config(&self, c: Value) -> Value {
        self.post("/control/config", c)
    }

    /// The partner API calls the simulator answered, oldest first.
    pub fn calls(&self, path_prefix: &str, method: &str) -> Vec<Value> {
        match self.get(&format!(
            "/control/calls?path_prefix={path_prefix}&method={method}"
        )) {
            Value::Array(v) => v,
            _ => Vec::new(),
        }
    }
}

/// An inbound message a test expects the bot to answer exactly once.
#[derive(Debug, Clone)]
pub struct Expected {
    pub chat_id: String,
    pub message_id: String,
    pub text: String,
}

/// What the simulator's record says about a set of expected answers.
#[derive(Debug, Default)]
pub struct Tally {
    pub messages: usize,
    /// Inbound messages with no reply.
    pub lost: usize,
    /// Replies beyond the first to one message, plus replies to nothing we sent.
    pub duplicated: usize,
    /// Replies that do not quote their message, or chats answered out of order.
    pub wrong: Vec<String>,
}

impl Tally {
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.wrong.is_empty()
    }
}

/// Check, against the simulator's record of what the bot sent, that every expected message was
/// answered exactly once, in its thread (`reply_to`), by the stand-in quoting that very message,
/// and that each chat's answers came in the order its messages did.
pub fn tally_replies(sim: &Sim, expected: &[Expected]) -> Tally {
    let mut t = Tally {
        messages: expected.len(),
        ..Default::default()
    };
    let mut chats: Vec<&str> = expected.iter().map(|e| e.chat_id.as_str()).collect();
    chats.sort();
    chats.dedup();
    for chat in chats {
        let sent = sim.sent(chat);
        let mine: Vec<&Expected> = expected.iter().filter(|e| e.chat_id == chat).collect();
        let mut order = Vec::new();
        for e in &mine {
            let replies: Vec<(usize, &Value)> = sent
                .iter()
                .enumerate()
                .filter(|(_, s)| s["reply_to"].as_str() == Some(e.message_id.as_str()))
                .collect();
            match replies.len() {
                0 => t.lost += 1,
                n => t.duplicated += n - 1,
            }
            for (_, r) in &replies {
                let text = r["text"].as_str().unwrap_or_default();
                if !text.contains(&format!("you said \"{}\"", e.text)) {
                    t.wrong
                        .push(format!("reply to {:?} does not quote it: {text:?}", e.text));
                }
            }
            if let Some((i, _)) = replies.first() {
                order.push(*i);
            }
        }
        if order.windows(2).any(|w| w[0] > w[1]) {
            t.wrong.push(format!("chat {chat} answered out of order"));
        }
        let known: Vec<&str> = mine.iter().map(|e| e.message_id.as_str()).collect();
        let stray = sent
            .iter()
            .filter(|s| !s["reply_to"].as_str().is_some_and(|r| known.contains(&r)))
            .count();
        if stray > 0 {
            t.wrong.push(format!(
                "chat {chat}: {stray} bot message(s) answering nothing expected"
            ));
            t.duplicated += stray;
        }
    }
    t
}

// ---- sandbox and security tests (tests/sandbox.rs, tests/security.rs) ----

impl Machine {
    /// The turn units running now in chat `tag`'s slice (any chat's when `None`).
    fn running_turn_units(&self, tag: Option<&str>) -> Vec<String> {
        let filter = tag
            .map(|t| format!("picortex-chat-{t}.slice"))
            .unwrap_or_default();
        self.sh(&format!(
            "for u in $(systemctl list-units --plain --no-legend --state=running 'picortex-turn-*' | awk '{{print $1}}'); do \
               s=$(systemctl show -P Slice \"$u\"); case \"$s\" in *'{filter}') echo \"$u\";; esac; done"
        ))
        .stdout
        .split_whitespace()
        .map(str::to_owned)
        .collect()
    }

    /// A spare turn unit (of the chat `tag`, or any): running, and no turn in the log runs in it
    /// (a turn that just answered may still have its own unit running while picortex-run exits,
    /// which `wait_running_turn` would return).
    pub fn wait_spare(&self, tag: Option<&str>, timeout: Duration) -> String {
        self.wait_for(&format!("a spare turn unit of {tag:?}"), timeout, || {
            self.running_turn_units(tag).into_iter().find(|u| {
                self.sql_n(&format!("SELECT count(*) FROM turns WHERE unit = '{u}'")) == 0
            })
        })
    }

    /// The first turn unit that is running now in chat `tag`'s slice (any chat's when `None`),
    /// waiting up to `timeout` for one.
    pub fn wait_running_turn(&self, tag: Option<&str>, timeout: Duration) -> String {
        self.wait_for(&format!("a running turn unit of {tag:?}"), timeout, || {
            self.running_turn_units(tag).into_iter().next()
        })
    }
}

// ---- the real Claude Code CLI and the Messages API stand-in (tests/real_cli.rs) ----

/// Where the pinned real CLI is in a machine (tests/harness/stage-extras.sh binds it in).
pub const REAL_CLI: &str = "/usr/lib/picortex-test/claude";
/// The Messages API stand-in's test host (tests/anthropic-standin), in a network namespace of
/// its own behind a veth pair: a public-looking address the turns' egress fence lets through.
pub const API_BASE_URL: &str = "http://198.51.100.1";
const API_STATE: &str = "/run/anthropic-standin";

impl Machine {
    /// Make the real CLI the agent, pointed at the Messages API stand-in through `[agent] env`,
    /// and start the stand-in. `extra_env` adds `NAME = "value"` entries to `[agent] env`.
    /// Fails (never skips) when the stage has no real CLI. Call before `start_picortex`.
    pub fn use_real_cli(&self, extra_env: &str) {
        // Checked inside the machine: the CLI is bound in from the host (see stage-extras.sh).
        assert!(
            self.sh(&format!("test -x {REAL_CLI}")).code == 0,
            "no real Claude Code CLI in the stage at {REAL_CLI}: run `make stage` (it installs \
             the pinned CLI with tests/harness/install-claude-cli.sh)"
        );
        self.set_config("agent", "command", &format!("{REAL_CLI:?}"));
        let mut env = format!("ANTHROPIC_BASE_URL = {API_BASE_URL:?}");
        if !extra_env.is_empty() {
            env.push_str(", ");
            env.push_str(extra_env);
        }
        self.set_config("agent", "env", &format!("{{ {env} }}"));
        self.ok("systemctl start anthropic-standin.service");
    }

    /// Script the stand-in's answers (tests/anthropic-standin/anthropic_standin.py).
    pub fn api_script(&self, script: Value) {
        let tmp = self.path(&format!("{API_STATE}/script.json.tmp"));
        std::fs::write(&tmp, script.to_string()).expect("write script");
        std::fs::rename(&tmp, self.path(&format!("{API_STATE}/script.json"))).expect("script");
    }

    /// Every request the stand-in API has answered, oldest first.
    pub fn api_requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path(&format!("{API_STATE}/requests.jsonl")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// The text of every `tool_result` block the CLI sent back in a Messages API request.
pub fn api_tool_results(req: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for m in req["body"]["messages"].as_array().into_iter().flatten() {
        for b in m["content"].as_array().into_iter().flatten() {
            if b["type"] == "tool_result" {
                let c = &b["content"];
                let text = match c {
                    Value::String(s) => s.clone(),
                    Value::Array(a) => a
                        .iter()
                        .filter_map(|x| x["text"].as_str())
                        .collect::<Vec<_>>()
                        .join("\n"),
                    _ => c.to_string(),
                };
                out.push(text);
            }
        }
    }
    out
}
