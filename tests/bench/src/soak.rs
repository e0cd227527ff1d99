//! The soak (`make bench`, `SOAK_MINUTES=`): mixed traffic over many chats for a long time —
//! answered turns, slower turns, failing turns, group chatter that starts no turn — and what the
//! gateway holds at the start and at the end: its RSS and open descriptors, the turn units
//! systemd still has loaded, the database's size. Growth across the run is what a leak looks
//! like; every 1:1 message must still be answered exactly once.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;

use crate::sim::Sim;

pub struct Params {
    /// The handles writing 1:1 chats (every one an owner handle in the bench configuration).
    pub handles: Vec<String>,
    pub minutes: f64,
    /// Messages per second, all kinds together.
    pub rate: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub rss_kb: u64,
    pub fds: usize,
    /// Turn units systemd has loaded: running (turns in flight, spares) and ended but not
    /// released (kept by RemainAfterExit until the gateway reads them).
    pub units_running: usize,
    pub units_ended: usize,
    pub db_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub start: Snapshot,
    pub end: Snapshot,
    pub sent: usize,
    pub turns_expected: usize,
    pub unanswered: usize,
    pub duplicated: usize,
    pub errors: Vec<String>,
    pub seconds: f64,
}

pub fn snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    if let Some(pid) = crate::main_pid("picortexd.service") {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.rss_kb = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        s.fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
    }
    let units = Command::new("systemctl")
        .args([
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "picortex-turn-*",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for l in units.lines() {
        // UNIT LOAD ACTIVE SUB DESCRIPTION
        let f: Vec<&str> = l.split_whitespace().collect();
        match (f.get(2).copied(), f.get(3).copied()) {
            (Some("active"), Some("running")) | (Some("activating"), _) => s.units_running += 1,
            (Some(_), _) => s.units_ended += 1,
            _ => {}
        }
    }
    s.db_bytes = ["picortex.db", "picortex.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(format!("/var/lib/picortex/{f}")).ok())
        .map(|m| m.len())
        .sum();
    s
}

/// Send one message to each chat and wait for the answers: the chats exist (users, homes,
/// sessions) before the soak measures anything.
async fn warm_up(sim: &Sim, handles: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut chats = HashMap::new();
    let mut want = Vec::new();
    for h in handles {
        let s = sim
            .inbound(h, None, "hello from the soak (warm-up)")
            .await
            .with_context(|| format!("warm-up message from {h}"))?;
        want.push(s.message_id.clone());
        chats.insert(h.clone(), s.chat_id);
    }
    wait_answered(sim, &want, Duration::from_secs(300)).await?;
    Ok(chats)
}

/// Wait until every message in `ids` has a reply; then the count of replies per message.
async fn wait_answered(
    sim: &Sim,
    ids: &[String],
    budget: Duration,
) -> anyhow::Result<HashMap<String, usize>> {
    let end = Instant::now() + budget;
    loop {
        let mut by = HashMap::new();
        for m in sim.sent(None).await? {
            if let Some(r) = m.reply_to {
                *by.entry(r).or_insert(0usize) += 1;
            }
        }
        let missing = ids.iter().filter(|i| !by.contains_key(*i)).count();
        if missing == 0 || Instant::now() > end {
            return Ok(by);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn run(sim: &Sim, p: &Params) -> anyhow::Result<Outcome> {
    let chats = warm_up(sim, &p.handles).await?;
    // Ten groups of two of the soak's people each, where the chatter (no mention) goes.
    let mut groups = Vec::new();
    for i in 0..10.min(p.handles.len() / 2) {
        let g = sim
            .post(
                "/control/inbound",
                json!({"from": p.handles[2 * i], "group": true, "participants": [p.handles[2 * i + 1]], "text": "soak group"}),
            )
            .await?;
        groups.push((
            p.handles[2 * i + 1].clone(),
            g["chat_id"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    // Let the warm-up's spares settle, then take the starting picture.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = snapshot();
    let t0 = Instant::now();
    let total = (p.minutes * 60.0 * p.rate).round() as usize;
    let gap = Duration::from_secs_f64(1.0 / p.rate);
    let mut expected = Vec::new();
    let mut errors = Vec::new();
    let mut sent = 0;
    for n in 0..total {
        let due = t0 + gap * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let h = &p.handles[n % p.handles.len()];
        let chat = chats.get(h).map(String::as_str);
        let r = match n % 20 {
            0..=13 => sim.inbound(h, chat, &format!("soak {n}")).await,
            14 | 15 => sim.inbound(h, chat, &format!("#sleep=1 soak {n}")).await,
            16 => {
                sim.inbound(
                    h,
                    chat,
                    &format!("#is_error=API Error: Rate limit reached (soak {n})"),
                )
                .await
            }
            _ if !groups.is_empty() => {
                let (who, g) = &groups[n % groups.len()];
                sim.inbound(who, Some(g), &format!("just chatting {n}"))
                    .await
                    .map(|mut s| {
                        s.message_id.clear(); // no answer expected
                        s
                    })
            }
            _ => sim.inbound(h, chat, &format!("soak {n}")).await,
        };
        match r {
            Ok(s) => {
                sent += 1;
                if !s.message_id.is_empty() {
                    expected.push(s.message_id);
                }
            }
            Err(e) => errors.push(format!("message {n}: {e:#}")),
        }
    }
    let by = wait_answered(sim, &expected, Duration::from_secs(300)).await?;
    let unanswered = expected.iter().filter(|i| !by.contains_key(*i)).count();
    let duplicated = expected
        .iter()
        .filter_map(|i| by.get(i))
        .map(|n| n.saturating_sub(1))
        .sum();
    // Ended units are released right after their result is recorded: give the last ones a
    // moment, then take the final picture.
    let settle_end = Instant::now() + Duration::from_secs(30);
    let end = loop {
        let s = snapshot();
        if s.units_ended == 0 || Instant::now() > settle_end {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    Ok(Outcome {
        start,
        end,
        sent,
        turns_expected: expected.len(),
        unanswered,
        duplicated,
        errors,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
