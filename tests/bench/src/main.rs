//! picortex-bench: the benchmarks of `make bench`. tests/bench/run.sh boots a throwaway systemd
//! with the staged install and runs this binary inside it (its network namespace, as root); it
//! talks to picortexd on 127.0.0.1:8470 and to the Linq simulator's control socket, and prints a
//! table, one `BENCH <name> <value> <unit>` line per figure, and a JSON report.
//!
//! Phases, in order (each bounded in count and time):
//! 1. turns: warm-up (provisions a few chats), then N sequential turns, zero-time agent, each
//!    once the machine has settled from the one before: turn_overhead_p50_ms / _p99_ms (gateway
//!    2xx → reply at the simulator), turn_unsettled; then N more back to back in other chats:
//!    turn_overhead_back_to_back_p50_ms / _p99_ms (see turns::Pace).
//! 2. floor: the same agent via `systemd-run --wait --pipe -p User=…`: systemd_run_floor_p50_ms,
//!    turn_overhead_ratio (and turn_overhead_back_to_back_ratio).
//! 3. cold: first messages of new chats (provisioning + first turn): cold_chat_p50_ms / _p99_ms.
//! 4. concurrent: the cold chats × M messages with a 2 s agent, sent at once:
//!    concurrent_failures, gateway_peak_rss_mb.
//! 5. ingest: signed webhooks that start no turn, many keep-alive connections:
//!    ingest_webhooks_per_s, ingest_errors, ingest_lost (with `--ingest-disk`, the same as
//!    ingest_disk_*: run.sh runs it again in a machine whose state directory is on the host's
//!    disk, where every commit really reaches the disk).
//! 6. soak: `--soak-minutes` of mixed traffic over `--soak-chats` chats: soak_rss_growth_mb,
//!    soak_fd_growth, soak_units_leaked, soak_db_growth_mb, soak_unanswered.

mod floor;
mod http;
mod ingest;
mod sim;
mod soak;
mod stats;
mod turns;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use crate::sim::Sim;
use crate::stats::Summary;

struct Opts {
    json: PathBuf,
    sim_sock: PathBuf,
    gateway: String,
    secret_file: PathBuf,
    phases: Vec<String>,
    turn_chats: usize,
    warm_rounds: usize,
    turns: usize,
    floor_runs: usize,
    cold_chats: usize,
    conc_msgs: usize,
    conc_sleep: f64,
    conc_timeout_s: u64,
    ingest_secs: f64,
    ingest_warmup: f64,
    ingest_conns: usize,
    max_concurrent: Option<usize>,
    no_sandboxed_floor: bool,
    ingest_disk: bool,
    soak_minutes: f64,
    soak_chats: usize,
    soak_rate: f64,
}

const USAGE: &str = "usage: picortex-bench [--json PATH] [--phases turns,floor,cold,concurrent,ingest,soak]
  [--turn-chats 10] [--warm-rounds 1] [--turns 200] [--floor-runs 200] [--cold-chats 50]
  [--conc-msgs 4] [--conc-sleep 2] [--conc-timeout 240] [--ingest-secs 10] [--ingest-warmup 1]
  [--ingest-conns 64] [--no-sandboxed-floor] [--max-concurrent N (reported only)] [--sim-sock PATH] [--gateway ADDR]
  [--secret-file PATH] [--ingest-disk] [--soak-minutes 30] [--soak-chats 200] [--soak-rate 3]
Runs inside the machine tests/bench/run.sh boots; see that script.";

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        json: "/tmp/bench.json".into(),
        sim_sock: "/run/linq-sim/control.sock".into(),
        gateway: "127.0.0.1:8470".into(),
        secret_file: "/etc/picortex/credentials/linq-webhook-secret".into(),
        phases: ["turns", "floor", "cold", "concurrent", "ingest", "soak"]
            .map(String::from)
            .to_vec(),
        turn_chats: 10,
        warm_rounds: 1,
        turns: 200,
        floor_runs: 200,
        cold_chats: 50,
        conc_msgs: 4,
        conc_sleep: 2.0,
        conc_timeout_s: 240,
        ingest_secs: 10.0,
        ingest_warmup: 1.0,
        ingest_conns: 64,
        max_concurrent: None,
        no_sandboxed_floor: false,
        ingest_disk: false,
        soak_minutes: 30.0,
        soak_chats: 200,
        soak_rate: 3.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut v = || {
            it.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--json" => o.json = v()?.into(),
            "--sim-sock" => o.sim_sock = v()?.into(),
            "--gateway" => o.gateway = v()?,
            "--secret-file" => o.secret_file = v()?.into(),
            "--phases" => {
                o.phases = v()?
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            }
            "--turn-chats" => o.turn_chats = v()?.parse()?,
            "--warm-rounds" => o.warm_rounds = v()?.parse()?,
            "--turns" => o.turns = v()?.parse()?,
            "--floor-runs" => o.floor_runs = v()?.parse()?,
            "--cold-chats" => o.cold_chats = v()?.parse()?,
            "--conc-msgs" => o.conc_msgs = v()?.parse()?,
            "--conc-sleep" => o.conc_sleep = v()?.parse()?,
            "--conc-timeout" => o.conc_timeout_s = v()?.parse()?,
            "--ingest-secs" => o.ingest_secs = v()?.parse()?,
            "--ingest-warmup" => o.ingest_warmup = v()?.parse()?,
            "--ingest-conns" => o.ingest_conns = v()?.parse()?,
            "--max-concurrent" => o.max_concurrent = Some(v()?.parse()?),
            "--no-sandboxed-floor" => o.no_sandboxed_floor = true,
            "--ingest-disk" => o.ingest_disk = true,
            "--soak-minutes" => o.soak_minutes = v()?.parse()?,
            "--soak-chats" => o.soak_chats = v()?.parse()?,
            "--soak-rate" => o.soak_rate = v()?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    for p in &o.phases {
        if !["turns", "floor", "cold", "concurrent", "ingest", "soak"].contains(&p.as_str()) {
            bail!("unknown phase {p:?}");
        }
    }
    Ok(o)
}

/// Handles of the benchmark's people: `+1555<kind:3><i:4>`. run.sh lists the same ones as owner
/// handles in the machine's configuration, so a quarantine of strangers' chats never applies.
pub fn handle(kind: u32, i: usize) -> String {
    format!("+1555{kind:03}{i:04}")
}

#[derive(Serialize, Clone)]
struct Metric {
    name: &'static str,
    value: f64,
    unit: &'static str,
    /// e.g. ">= 5000"
    target: Option<String>,
    met: Option<bool>,
    what: &'static str,
}

struct Report {
    metrics: Vec<Metric>,
    details: serde_json::Map<String, Value>,
}

impl Report {
    fn add(
        &mut self,
        name: &'static str,
        value: f64,
        unit: &'static str,
        target: Option<(&str, f64)>,
        what: &'static str,
    ) {
        let met = target.map(|(op, t)| match op {
            ">=" => value >= t,
            "<=" => value <= t,
            _ => value == t,
        });
        self.metrics.push(Metric {
            name,
            value,
            unit,
            target: target.map(|(op, t)| format!("{op} {t}")),
            met,
            what,
        });
    }
}

/// picortexd's main PID and (VmRSS, VmHWM) in kB, read from /proc inside the machine.
fn gateway_mem() -> Option<(u32, u64, u64)> {
    let out = Command::new("systemctl")
        .args(["show", "-P", "MainPID", "picortexd.service"])
        .output()
        .ok()?;
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    if pid == 0 {
        return None;
    }
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |k: &str| {
        st.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((pid, kb("VmRSS:"), kb("VmHWM:")))
}

/// utime + stime of a process, seconds (clock ticks are 100 Hz on Linux).
fn proc_cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
}

fn main_pid(unit: &str) -> Option<u32> {
    let out = Command::new("systemctl")
        .args(["show", "-P", "MainPID", unit])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|p| *p != 0)
}

/// Busy and total jiffies of the whole host (/proc/stat is not namespaced).
fn host_cpu() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<f64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    Some((total - idle, total))
}

pub fn chat_tag(chat_id: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(chat_id.as_bytes()))[..8].to_owned()
}

/// The `k`-th set of `n_chats` chats warmed up, then `o.turns` turns in them paced as `pace`
/// says; with their overhead figures.
async fn paced_turns(
    sim: &Sim,
    o: &Opts,
    n_chats: usize,
    k: usize,
    pace: turns::Pace,
) -> anyhow::Result<(Summary, turns::SeqOutcome)> {
    note(&format!(
        "turns: warming up {n_chats} chats, then {} sequential turns, {}",
        o.turns,
        match pace {
            turns::Pace::Settled => "each once the machine has settled from the one before",
            turns::Pace::BackToBack => "back to back",
        }
    ));
    let handles: Vec<String> = (k * n_chats..(k + 1) * n_chats)
        .map(|i| handle(10, i))
        .collect();
    let out = turns::sequential(
        sim,
        &handles,
        o.warm_rounds,
        o.turns,
        pace,
        Duration::from_secs(150),
    )
    .await?;
    Ok((overhead(&format!("turns ({pace:?})"), &out), out))
}

/// The overhead figures of a run of turns, noted as they come.
fn overhead(what: &str, out: &turns::SeqOutcome) -> Summary {
    let s = Summary::of(
        &out.samples
            .iter()
            .map(|s| s.overhead_ms)
            .collect::<Vec<_>>(),
    );
    note(&format!(
        "{what}: {} measured, {} errors, p50 {:.1} ms",
        s.n,
        out.errors.len(),
        s.p50
    ));
    s
}

fn note(s: &str) {
    eprintln!(
        "[bench {:>7.1}s] {s}",
        START.with(|t| t.elapsed().as_secs_f64())
    );
}

thread_local! {
    static START: Instant = Instant::now();
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn main() -> anyhow::Result<()> {
    START.with(|_| ());
    let o = parse_args()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(o))
}

async fn run(o: Opts) -> anyhow::Result<()> {
    let loadavg_start = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let sim = Sim {
        sock: o.sim_sock.clone(),
    };
    let t_wait = Instant::now();
    let health = loop {
        match sim.get("/control/health").await {
            Ok(v) => break v,
            Err(e) if t_wait.elapsed() > Duration::from_secs(15) => {
                return Err(e.context("the simulator does not answer"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let bot = health
        .get("bot_handle")
        .and_then(Value::as_str)
        .unwrap_or("+15550001000")
        .to_owned();
    let mut rep = Report {
        metrics: Vec::new(),
        details: serde_json::Map::new(),
    };
    rep.details.insert(
        "loadavg_at_start".into(),
        json!(loadavg_start
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")),
    );
    let has = |p: &str| o.phases.iter().any(|x| x == p);
    let mut turn_p50 = None;
    let mut turn_chats: Vec<turns::Chat> = Vec::new();
    let mut back_to_back_p50: Option<f64> = None;
    let mut turn_unit_file: Option<String> = None;
    let mut cold_chats: Vec<turns::Chat> = Vec::new();

    if has("turns") {
        // Linq allows 30 messages per 60 s per chat, and picortexd holds replies beyond that
        // (SPEC L4): keep every chat well under it, however fast the turns are.
        let per_chat_cap = 25usize.saturating_sub(1 + o.warm_rounds).max(1);
        let n_chats = o.turn_chats.max(o.turns.div_ceil(per_chat_cap));
        if n_chats != o.turn_chats {
            note(&format!("turns: using {n_chats} chats instead of {} to stay under 30 replies per chat per minute", o.turn_chats));
        }
        // Settled turns first (the figure the ratio is about), then the same number back to
        // back in chats of their own (each chat stays under Linq's rate either way).
        let (s, out) = paced_turns(&sim, &o, n_chats, 0, turns::Pace::Settled).await?;
        let (b2b, b2b_out) = paced_turns(&sim, &o, n_chats, 1, turns::Pace::BackToBack).await?;
        rep.add("turn_overhead_back_to_back_p50_ms", r1(b2b.p50), "ms", None, "diagnostic: the same turns, each sent as soon as the reply to the one before arrived (so each shares the CPU with the sandbox set-up of the chat answered before), p50");
        rep.add(
            "turn_overhead_back_to_back_p99_ms",
            r1(b2b.p99),
            "ms",
            None,
            "same, p99",
        );
        rep.add(
            "turn_errors_back_to_back",
            b2b_out.errors.len() as f64,
            "count",
            Some(("==", 0.0)),
            "back-to-back turns that failed or timed out",
        );
        back_to_back_p50 = Some(b2b.p50);
        rep.details.insert("turns_back_to_back".into(), json!({
            "overhead_ms": b2b, "errors": b2b_out.errors, "chats": b2b_out.chats, "samples": b2b_out.samples,
        }));
        let wh = Summary::of(
            &out.samples
                .iter()
                .map(|s| s.webhook_ms as f64)
                .collect::<Vec<_>>(),
        );
        let client = Summary::of(&out.samples.iter().map(|s| s.client_ms).collect::<Vec<_>>());
        let inbound_call = Summary::of(
            &out.samples
                .iter()
                .map(|s| s.inbound_call_ms)
                .collect::<Vec<_>>(),
        );
        let settle = Summary::of(&out.settle_ms);
        rep.add("turn_overhead_p50_ms", r1(s.p50), "ms", None, "warm turn, zero-time agent, on a settled machine (the turn before's unit released, its chat's next unit started, no systemd job pending): gateway's 2xx for message.received → bot reply received by the simulator (simulator clock), p50");
        rep.add("turn_overhead_p99_ms", r1(s.p99), "ms", None, "same, p99");
        rep.add(
            "turn_errors",
            out.errors.len() as f64,
            "count",
            Some(("==", 0.0)),
            "sequential turns that failed or timed out",
        );
        rep.add(
            "turn_unsettled",
            out.unsettled as f64,
            "count",
            Some(("==", 0.0)),
            "settled turns sent after 5 s without the machine settling (no spare unit per chat, or a job that did not end)",
        );
        rep.details.insert("turns".into(), json!({
            "overhead_ms": s, "webhook_post_ms": wh, "client_exchange_ms": client, "inbound_call_ms": inbound_call,
            "settle_wait_ms": settle, "unsettled": out.unsettled,
            "errors": out.errors, "chats": out.chats,
            "samples": out.samples, "turn_unit_file": out.turn_unit_file.clone(),
        }));
        turn_p50 = Some(s.p50);
        turn_chats = out.chats;
        turn_unit_file = out.turn_unit_file;
    }

    if has("floor") {
        let c = turn_chats
            .first()
            .context("the floor phase needs the turns phase (it runs as one of its chat users)")?;
        let tag = chat_tag(&c.chat_id);
        let (mut user, mut home) = (
            format!("chat-{tag}"),
            format!("/var/lib/picortex/chats/{tag}"),
        );
        // The sandboxed variant uses a real turn unit's properties, read from the unit file
        // systemd wrote for it during the warm-up, and that unit's chat user.
        let mut sandbox_source = "none";
        let sandbox = if o.no_sandboxed_floor {
            None
        } else if let Some((u, h, p)) = turn_unit_file
            .as_deref()
            .and_then(floor::sandbox_from_unit_file)
        {
            (user, home) = (u, h);
            sandbox_source = "live turn unit (/run/systemd/transient)";
            Some(p)
        } else {
            sandbox_source = "static copy in tests/bench/src/floor.rs";
            Some(floor::turn_sandbox(&user, &home))
        };
        note(&format!(
            "floor: {} × systemd-run --wait --pipe -p User={user} claude-standin{}",
            o.floor_runs,
            if sandbox.is_some() {
                ", then the same under the turn sandbox"
            } else {
                ""
            }
        ));
        let runs = o.floor_runs;
        let (u, h, sb_props) = (user.clone(), home.clone(), sandbox.clone());
        let out = tokio::task::spawn_blocking(move || {
            floor::run(&u, &h, runs, sb_props, Duration::from_secs(150))
        })
        .await??;
        let s = Summary::of(&out.wall_ms);
        let sb = Summary::of(&out.sandboxed_ms);
        note(&format!(
            "floor: {} runs, {} errors, p50 {:.1} ms (with the turn sandbox: {:.1} ms)",
            s.n,
            out.errors.len(),
            s.p50,
            sb.p50
        ));
        rep.add("systemd_run_floor_p50_ms", r1(s.p50), "ms", None, "same stand-in via `systemd-run --wait --pipe -p User=<chat user>` (no sandbox), wall time, p50");
        if let Some(t) = turn_p50 {
            rep.add(
                "turn_overhead_ratio",
                (t / s.p50 * 100.0).round() / 100.0,
                "x",
                Some(("<=", 1.5)),
                "turn_overhead_p50_ms / systemd_run_floor_p50_ms",
            );
        }
        if let Some(t) = back_to_back_p50 {
            rep.add(
                "turn_overhead_back_to_back_ratio",
                (t / s.p50 * 100.0).round() / 100.0,
                "x",
                None,
                "diagnostic: turn_overhead_back_to_back_p50_ms / systemd_run_floor_p50_ms",
            );
        }
        if sandbox.is_some() {
            rep.add("systemd_run_sandboxed_p50_ms", r1(sb.p50), "ms", None, "diagnostic: the same systemd-run with a real turn unit's sandbox properties, run after the plain ones, p50");
        }
        rep.add(
            "floor_errors",
            out.errors.len() as f64,
            "count",
            Some(("==", 0.0)),
            "systemd-run runs that failed",
        );
        rep.details.insert(
            "floor".into(),
            json!({ "wall_ms": s, "sandboxed_ms": sb, "errors": out.errors, "user": out.user,
            "samples_ms": out.wall_ms, "sandboxed_samples_ms": out.sandboxed_ms,
            "sandbox_source": sandbox_source, "sandbox_properties": sandbox }),
        );
    }

    if has("cold") {
        note(&format!(
            "cold: first messages of {} new chats, one at a time",
            o.cold_chats
        ));
        let handles: Vec<String> = (0..o.cold_chats).map(|i| handle(20, i)).collect();
        let out = turns::cold(&sim, &handles, Duration::from_secs(150)).await;
        let s = overhead("cold", &out);
        rep.add("cold_chat_p50_ms", r1(s.p50), "ms", Some(("<=", 150.0)), "new chat's first message (useradd + home + slice + first turn), 2xx → reply at the simulator, p50");
        rep.add("cold_chat_p99_ms", r1(s.p99), "ms", None, "same, p99");
        rep.add(
            "cold_chat_errors",
            out.errors.len() as f64,
            "count",
            Some(("==", 0.0)),
            "new chats that got no answer",
        );
        rep.details.insert(
            "cold".into(),
            json!({ "overhead_ms": s, "errors": out.errors, "samples": out.samples }),
        );
        cold_chats = out.chats;
    }

    if has("concurrent") {
        let chats = if cold_chats.is_empty() {
            turn_chats.clone()
        } else {
            cold_chats.clone()
        };
        if chats.is_empty() {
            bail!("the concurrent phase needs the chats of the cold (or turns) phase");
        }
        note(&format!(
            "concurrent: {} chats × {} messages, #sleep={}, sent at once",
            chats.len(),
            o.conc_msgs,
            o.conc_sleep
        ));
        let before = gateway_mem();
        let out = turns::concurrent(
            &sim,
            &chats,
            o.conc_msgs,
            o.conc_sleep,
            Duration::from_secs(o.conc_timeout_s),
            || gateway_mem().map(|m| m.1).unwrap_or(0),
        )
        .await?;
        let after = gateway_mem();
        let hwm_kb = after.map(|m| m.2).unwrap_or(0);
        let lat = Summary::of(&out.latencies_ms);
        note(&format!(
            "concurrent: {}/{} answered in {:.1} s, VmHWM {} kB",
            out.answered, out.sent, out.makespan_s, hwm_kb
        ));
        rep.add("concurrent_failures", out.failures as f64, "count", Some(("==", 0.0)), "of chats × messages with a 2 s agent sent at once: missing replies or replies that are not the agent's answer");
        rep.add("gateway_peak_rss_mb", r1(hwm_kb as f64 / 1024.0), "MB", Some(("<=", 40.0)), "picortexd VmHWM (/proc/<MainPID>/status) at the end of the concurrent phase (process lifetime peak so far; the ingest phase runs after)");
        rep.add(
            "concurrent_makespan_s",
            r1(out.makespan_s),
            "s",
            None,
            "first webhook accepted → last reply received, concurrent phase",
        );
        rep.add("concurrent_latency_p50_ms", r1(lat.p50), "ms", None, "per message in the concurrent phase, 2xx → reply (includes queueing behind the chat's earlier turns and the 2 s agent)");
        rep.details.insert("concurrent".into(), json!({
            "chats": chats.len(), "messages_per_chat": o.conc_msgs, "agent_sleep_s": o.conc_sleep,
            "max_concurrent": o.max_concurrent, "sent": out.sent, "answered": out.answered,
            "failures": out.failures, "failure_notes": out.failure_notes, "latency_ms": lat,
            "makespan_s": out.makespan_s, "send_s": out.send_s,
            "gateway_before": before.map(|m| json!({"pid": m.0, "vmrss_kb": m.1, "vmhwm_kb": m.2})),
            "gateway_after": after.map(|m| json!({"pid": m.0, "vmrss_kb": m.1, "vmhwm_kb": m.2})),
            "rss_peak_sampled_kb": out.rss_peak_sampled_kb,
        }));
    }

    if has("ingest") {
        let chat = turn_chats
            .first()
            .or(cold_chats.first())
            .map(|c| c.chat_id.clone());
        let chat = match chat {
            Some(c) => c,
            None => {
                sim.inbound(&handle(30, 0), None, "hello (ingest setup)")
                    .await?
                    .chat_id
            }
        };
        let secret = std::fs::read_to_string(&o.secret_file)
            .with_context(|| format!("reading {}", o.secret_file.display()))?;
        note(&format!("ingest: {} keep-alive connections, {} s (+{} s warm-up) of signed message.delivered webhooks", o.ingest_conns, o.ingest_secs, o.ingest_warmup));
        let before = gateway_mem();
        let pids: Vec<(&str, Option<u32>)> = [
            "picortexd.service",
            "systemd-journald.service",
            "linq-sim.service",
        ]
        .iter()
        .map(|u| (*u, main_pid(u)))
        .collect();
        let cpu0: Vec<Option<f64>> = pids.iter().map(|(_, p)| p.and_then(proc_cpu_s)).collect();
        let (host0, t_cpu0) = (host_cpu(), Instant::now());
        let out = ingest::run(ingest::Params {
            addr: o.gateway.clone(),
            secret,
            chat_id: chat,
            bot_handle: bot.clone(),
            connections: o.ingest_conns,
            warmup: Duration::from_secs_f64(o.ingest_warmup),
            duration: Duration::from_secs_f64(o.ingest_secs),
        })
        .await?;
        let after = gateway_mem();
        let wall = t_cpu0.elapsed().as_secs_f64();
        let cpu: serde_json::Map<String, Value> = pids
            .iter()
            .zip(cpu0)
            .filter_map(|((u, p), c0)| {
                Some((
                    u.to_string(),
                    json!(((p.and_then(proc_cpu_s)? - c0?) / wall * 100.0).round() / 100.0),
                ))
            })
            .collect();
        let host_busy = match (host0, host_cpu()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some(((b1 - b0) / (t1 - t0) * 100.0).round())
            }
            _ => None,
        };
        // Every 2xx must be in the log: count the stored ingest events (read-only).
        let stored = Command::new("sqlite3")
            .args(["-readonly", "/var/lib/picortex/picortex.db"])
            .arg(format!(
                "SELECT count(*) FROM events WHERE body LIKE '%{}%'",
                ingest::MARKER
            ))
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u64>()
                    .ok()
            });
        note(&format!(
            "ingest: {:.0}/s, {} errors, p99 {:.1} ms; {} answered 2xx, {:?} in the database",
            out.rate, out.errors, out.latency_ms.p99, out.total_ok, stored
        ));
        // The same phase on the host's disk (run.sh's second machine) reports under its own names.
        let named =
            |tmpfs: &'static str, disk: &'static str| if o.ingest_disk { disk } else { tmpfs };
        if o.ingest_disk {
            rep.add("ingest_disk_webhooks_per_s", out.rate.round(), "1/s", None, "the same, with the state directory on the host's disk (a directory bound into the machine): every group commit's fsync reaches the disk");
        } else {
            rep.add("ingest_webhooks_per_s", out.rate.round(), "1/s", Some((">=", 5000.0)), "signed message.delivered webhooks (no turn), unique event ids, each durable before its 2xx, answered 2xx per second, sustained");
        }
        rep.add(
            named("ingest_errors", "ingest_disk_errors"),
            out.errors as f64,
            "count",
            Some(("==", 0.0)),
            "non-2xx answers or connection errors during the ingest phase (warm-up included)",
        );
        if let Some(n) = stored {
            rep.add(
                named("ingest_lost", "ingest_disk_lost"),
                out.total_ok.saturating_sub(n) as f64,
                "count",
                Some(("==", 0.0)),
                "webhooks answered 2xx whose event is not in the SQLite log afterwards",
            );
        }
        rep.add(
            named("ingest_p99_ms", "ingest_disk_p99_ms"),
            (out.latency_ms.p99 * 100.0).round() / 100.0,
            "ms",
            None,
            "per-request latency at that load, p99",
        );
        rep.add(
            named(
                "ingest_gateway_peak_rss_mb",
                "ingest_disk_gateway_peak_rss_mb",
            ),
            r1(after.map(|m| m.2).unwrap_or(0) as f64 / 1024.0),
            "MB",
            None,
            "picortexd VmHWM after the ingest phase",
        );
        rep.details.insert("ingest".into(), json!({
            "connections": o.ingest_conns, "seconds": out.seconds, "ok": out.ok, "errors": out.errors,
            "answered_2xx_total": out.total_ok, "stored": stored,
            "errors_by_status": out.by_status.iter().map(|(k, v)| json!({"status": k, "count": v})).collect::<Vec<_>>(),
            "latency_ms": out.latency_ms, "loadgen_cpu_cores": out.loadgen_cpu,
            "cpu_cores_by_unit": cpu, "host_cpu_busy_percent": host_busy,
            "gateway_before": before.map(|m| json!({"pid": m.0, "vmrss_kb": m.1, "vmhwm_kb": m.2})),
            "gateway_after": after.map(|m| json!({"pid": m.0, "vmrss_kb": m.1, "vmhwm_kb": m.2})),
        }));
    }

    if has("soak") && o.soak_minutes > 0.0 {
        let handles: Vec<String> = (0..o.soak_chats).map(|i| handle(30, i)).collect();
        note(&format!(
            "soak: {} min of mixed traffic, {} messages/s over {} chats",
            o.soak_minutes, o.soak_rate, o.soak_chats
        ));
        let out = soak::run(
            &sim,
            &soak::Params {
                handles,
                minutes: o.soak_minutes,
                rate: o.soak_rate,
            },
        )
        .await?;
        let mb = |kb: u64| r1(kb as f64 / 1024.0);
        note(&format!(
            "soak: {} messages in {:.0} s; RSS {} → {} MB, fds {} → {}, units ended {} → {}, db {} → {} MB, {} unanswered",
            out.sent, out.seconds, mb(out.start.rss_kb), mb(out.end.rss_kb), out.start.fds, out.end.fds,
            out.start.units_ended, out.end.units_ended, mb(out.start.db_bytes / 1024), mb(out.end.db_bytes / 1024), out.unanswered
        ));
        rep.add(
            "soak_rss_growth_mb",
            r1((out.end.rss_kb as f64 - out.start.rss_kb as f64) / 1024.0),
            "MB",
            Some(("<=", 10.0)),
            "picortexd VmRSS at the end of the soak minus at its start (after the warm-up)",
        );
        // Each running turn unit (a spare waiting for its turn, above all) holds one pipe end
        // in the gateway until its turn; how many run at either picture is chance (spares are
        // started after turns and let go after turns.spare_ttl_s), so they are counted out.
        let units_delta = out.end.units_running as f64 - out.start.units_running as f64;
        let fds_delta = out.end.fds as f64 - out.start.fds as f64;
        rep.add(
            "soak_fd_growth",
            fds_delta - units_delta,
            "count",
            Some(("<=", 8.0)),
            "picortexd's open descriptors at the end of the soak minus at its start, less the change in running turn units (one pipe end each)",
        );
        rep.add(
            "soak_fd_growth_raw",
            fds_delta,
            "count",
            None,
            "the same without counting running turn units out (see soak_units_running_delta)",
        );
        rep.add(
            "soak_units_running_delta",
            units_delta,
            "count",
            None,
            "running turn units (spares, turns) at the end of the soak minus at its start",
        );
        rep.add("soak_units_leaked", out.end.units_ended as f64, "count", Some(("==", 0.0)), "turn units ended but still loaded after the soak settled (each should be released once its result is recorded)");
        rep.add("soak_db_growth_mb", mb((out.end.db_bytes.saturating_sub(out.start.db_bytes)) / 1024), "MB", None, "picortex.db + WAL growth over the soak (the log keeps every event: growth is expected, bounded by traffic)");
        rep.add(
            "soak_unanswered",
            (out.unanswered + out.duplicated) as f64,
            "count",
            Some(("==", 0.0)),
            "1:1 soak messages with no reply or more than one",
        );
        rep.details.insert("soak".into(), json!(out));
    }

    print_report(&rep);
    let doc = json!({
        "schema": 1,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_at_start": loadavg_start,
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "config": { "max_concurrent": o.max_concurrent, "turn_chats": o.turn_chats, "turns": o.turns,
                    "floor_runs": o.floor_runs, "cold_chats": o.cold_chats, "conc_msgs": o.conc_msgs,
                    "conc_sleep_s": o.conc_sleep, "ingest_secs": o.ingest_secs, "ingest_conns": o.ingest_conns },
        "metrics": rep.metrics.iter().map(|m| (m.name.to_owned(), json!(m))).collect::<serde_json::Map<_, _>>(),
        "details": rep.details,
    });
    std::fs::write(&o.json, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("writing {}", o.json.display()))?;
    Ok(())
}

fn print_report(rep: &Report) {
    println!();
    println!(
        "{:<28} {:>10} {:<6} {:<10}",
        "metric", "value", "unit", "target"
    );
    println!("{}", "-".repeat(64));
    for m in &rep.metrics {
        let v = if m.value.fract() == 0.0 && m.value.abs() < 1e12 {
            format!("{:.0}", m.value)
        } else {
            format!("{}", m.value)
        };
        let flag = match m.met {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "",
        };
        println!(
            "{:<28} {:>10} {:<6} {:<10} {}",
            m.name,
            v,
            m.unit,
            m.target.as_deref().unwrap_or(""),
            flag
        );
    }
    println!("(load average of the host, shared with whatever else runs on it: {} at the start, {} at the end)",
        rep.details.get("loadavg_at_start").and_then(Value::as_str).unwrap_or("?"),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    println!();
    for m in &rep.metrics {
        println!("BENCH {} {} {}", m.name, m.value, m.unit);
    }
}
