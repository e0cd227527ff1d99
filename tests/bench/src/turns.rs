//! Turn benchmarks, all timed on the simulator's clock: from the moment the gateway's 2xx for the
//! `message.received` webhook reached the simulator to the moment the bot's reply reached it.
//!
//! A reply is matched to its inbound message by `reply_to` when the gateway threads it, and
//! otherwise by position: a chat's turns run strictly in order, so the k-th new bot message of a
//! chat answers the k-th message sent to it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use self::futures_like::join_all;
use anyhow::{bail, Context};
use serde::Serialize;

use crate::sim::{Msg, Sent, Sim};

/// One measured turn.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub chat_id: String,
    pub event_id: String,
    pub message_id: String,
    /// Gateway's 2xx → reply at the simulator, ms.
    pub overhead_ms: f64,
    /// How long the webhook POST took (simulator's view), ms.
    pub webhook_ms: u64,
    /// Unix ns, simulator clock: the gateway's 2xx received; the reply received.
    pub accepted_ns: i64,
    pub reply_ns: i64,
    /// Client side: the whole exchange (bookkeeping requests and polling included), ms.
    pub client_ms: f64,
    /// Client side: how long `/control/inbound` took (the simulator answers after its POST), ms.
    pub inbound_call_ms: f64,
}

pub fn is_answer(text: &str) -> bool {
    text.starts_with("standin:")
}

/// The reply to `sent` among a chat's bot messages, given how many there were before it was sent.
fn find_reply<'a>(msgs: &'a [Msg], sent: &Sent, before: usize) -> Option<&'a Msg> {
    msgs.iter()
        .find(|m| m.reply_to.as_deref() == Some(sent.message_id.as_str()))
        .or_else(|| msgs.get(before).filter(|m| m.reply_to.is_none()))
}

/// A turn that got no reply in time.
#[derive(Debug)]
pub struct NoReply {
    pub sent: Sent,
    pub text: String,
}

impl std::fmt::Display for NoReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no reply to {:?} (event {}) in chat {} in time",
            self.text, self.sent.event_id, self.sent.chat_id
        )
    }
}

impl std::error::Error for NoReply {}

/// Whether a turn that timed out was answered later, and how long after the webhook (ms).
pub async fn late_reply(sim: &Sim, nr: &NoReply) -> String {
    let msgs = sim.sent(Some(&nr.sent.chat_id)).await.unwrap_or_default();
    let acc = sim.accepted_at(&nr.sent.event_id).await.map(|a| a.0).ok();
    match (
        msgs.iter()
            .find(|m| m.reply_to.as_deref() == Some(nr.sent.message_id.as_str())),
        acc,
    ) {
        (Some(m), Some(a)) => format!(
            "{nr}; answered late, {:.0} ms after the webhook: {:?}",
            (m.created_ns - a) as f64 / 1e6,
            m.text
        ),
        (Some(m), None) => format!("{nr}; answered late: {:?}", m.text),
        (None, _) => format!("{nr}; still unanswered at the end of the phase"),
    }
}

/// Send one message and wait for its reply (the simulator answers when it has one).
pub async fn one(
    sim: &Sim,
    from: &str,
    chat_id: Option<&str>,
    text: &str,
    timeout: Duration,
) -> anyhow::Result<Sample> {
    let t0 = Instant::now();
    let before = match chat_id {
        Some(c) => sim.sent(Some(c)).await?.len(),
        None => 0,
    };
    let t_in = Instant::now();
    let sent = sim.inbound(from, chat_id, text).await?;
    let inbound_call_ms = t_in.elapsed().as_secs_f64() * 1000.0;
    if !sent.status.is_some_and(|s| (200..300).contains(&s)) {
        bail!("webhook for {text:?} answered {:?}", sent.status);
    }
    let end = Instant::now() + timeout;
    let mut seen = before;
    let reply = loop {
        let left = end.saturating_duration_since(Instant::now());
        let msgs = sim.sent_after(&sent.chat_id, seen, left).await?;
        if let Some(m) = find_reply(&msgs, &sent, before) {
            break m.clone();
        }
        if Instant::now() > end {
            return Err(NoReply {
                sent,
                text: text.to_owned(),
            }
            .into());
        }
        seen = msgs.len();
    };
    if !is_answer(&reply.text) {
        bail!(
            "reply to {text:?} is not the agent's answer: {:?}",
            reply.text
        );
    }
    let (accepted, webhook_ms) = sim.accepted_at(&sent.event_id).await?;
    Ok(Sample {
        chat_id: sent.chat_id,
        event_id: sent.event_id,
        message_id: sent.message_id,
        overhead_ms: (reply.created_ns - accepted) as f64 / 1e6,
        webhook_ms,
        accepted_ns: accepted as i64,
        reply_ns: reply.created_ns as i64,
        client_ms: t0.elapsed().as_secs_f64() * 1000.0,
        inbound_call_ms,
    })
}

/// A chat the benchmark talks in.
#[derive(Debug, Clone, Serialize)]
pub struct Chat {
    pub handle: String,
    pub chat_id: String,
}

pub struct SeqOutcome {
    pub samples: Vec<Sample>,
    pub errors: Vec<String>,
    pub chats: Vec<Chat>,
    /// A real turn unit's transient unit file, as systemd wrote it (for the sandboxed floor).
    pub turn_unit_file: Option<String>,
    /// `Pace::Settled`: how long each turn waited for the machine to settle, ms, and how many
    /// gave up waiting after `SETTLE_TIMEOUT` (and ran anyway).
    pub settle_ms: Vec<f64>,
    pub unsettled: usize,
}

/// How long a settled turn waits for the machine to settle before it runs anyway (counted).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Watch /run/systemd/transient for a turn unit's file and return the first one seen, complete.
/// The helper starts turn units over D-Bus; systemd writes every property it was given there.
fn capture_turn_unit(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Option<String> {
    use std::sync::atomic::Ordering;
    let dir = std::path::Path::new("/run/systemd/transient");
    while !stop.load(Ordering::Relaxed) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("picortex-turn-") && name.ends_with(".service") {
                    // Written while StartTransientUnit runs; give it a moment to be complete.
                    std::thread::sleep(Duration::from_millis(10));
                    if let Ok(t) = std::fs::read_to_string(e.path()) {
                        if t.contains("[Service]")
                            && t.contains("\nUser=")
                            && t.contains("\nExecStart=")
                        {
                            return Some(t);
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// How the measured turns of `sequential` follow each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Each message once the machine has settled from the turn before (see `settle`): the
    /// answered unit released, its chat's next (spare) unit started, no systemd job pending. A
    /// turn's own cost, as a person texting meets it, and as each `systemd-run --wait` of the
    /// floor meets the machine (it returns once its unit is gone).
    Settled,
    /// Each message as soon as the reply to the one before arrived: every turn shares the CPU
    /// with the work the turn before left behind (its unit's release, its chat's next unit's
    /// sandbox set-up), so on 2 cores this is a throughput figure as much as a latency one.
    BackToBack,
}

/// A loaded turn unit's `active/sub` state and its chat's tag.
type UnitState = (String, String);

/// The turn units systemd has loaded, by name, each with its active/sub state and its chat's
/// tag (the last word of its description), and whether any systemd job is pending (a unit
/// starting or stopping).
fn turn_units() -> anyhow::Result<(BTreeMap<String, UnitState>, bool)> {
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new("systemctl")
            .args(args)
            .args(["--no-legend", "--no-pager"])
            .output()
            .context("systemctl")?;
        if !out.status.success() {
            bail!(
                "systemctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let jobs = run(&["list-jobs"])?;
    let units = run(&["list-units", "--all", "--plain", "picortex-turn-*"])?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let tag = f.last().copied().unwrap_or_default();
            (f.len() >= 4).then(|| {
                (
                    f[0].to_owned(),
                    (format!("{}/{}", f[2], f[3]), tag.to_owned()),
                )
            })
        })
        .collect();
    Ok((units, !jobs.trim().is_empty()))
}

/// A settled machine, for `Pace::Settled`: no systemd job pending, and one turn unit for each
/// chat of `tags`, running (a spare waiting for its chat's next message). `before`, those units
/// in the last settled state, must have changed: until the answered turn's unit is released and
/// its chat's next one has started, the machine is still busy with the turn just measured.
/// Returns the units seen last, and how long it waited (None when it gave up after `timeout`).
async fn settle(
    before: &BTreeSet<String>,
    tags: &BTreeSet<String>,
    timeout: Duration,
) -> anyhow::Result<(BTreeSet<String>, Option<Duration>)> {
    let t0 = Instant::now();
    loop {
        let (units, pending) = tokio::task::spawn_blocking(turn_units).await??;
        let ours: BTreeMap<&String, &String> = units
            .iter()
            .filter(|(_, (_, tag))| tags.contains(tag))
            .map(|(name, (state, _))| (name, state))
            .collect();
        let names: BTreeSet<String> = ours.keys().map(|n| (*n).clone()).collect();
        let settled = !pending
            && ours.len() == tags.len()
            && ours.values().all(|s| *s == "active/running")
            && names != *before;
        if settled {
            return Ok((names, Some(t0.elapsed())));
        }
        if t0.elapsed() > timeout {
            return Ok((names, None));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Warm up `n_chats` chats (their first turn provisions them, then `warm_rounds` more turns
/// each), then `n` turns one at a time, round robin, paced as `pace` says.
pub async fn sequential(
    sim: &Sim,
    handles: &[String],
    warm_rounds: usize,
    n: usize,
    pace: Pace,
    budget: Duration,
) -> anyhow::Result<SeqOutcome> {
    let t_end = Instant::now() + budget;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let capture = {
        let stop = stop.clone();
        std::thread::spawn(move || capture_turn_unit(stop))
    };
    let mut chats = Vec::new();
    for h in handles {
        let s = one(
            sim,
            h,
            None,
            "hello from the benchmark (warm-up)",
            Duration::from_secs(60),
        )
        .await
        .with_context(|| format!("warm-up of the chat with {h}"))?;
        chats.push(Chat {
            handle: h.clone(),
            chat_id: s.chat_id,
        });
    }
    for r in 0..warm_rounds {
        for c in &chats {
            one(
                sim,
                &c.handle,
                Some(&c.chat_id),
                &format!("warm-up round {r}"),
                Duration::from_secs(60),
            )
            .await
            .context("warm-up turn")?;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let turn_unit_file = capture.join().ok().flatten();
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    let mut late = Vec::new();
    let mut settle_ms = Vec::new();
    let mut unsettled = 0;
    // The first measured turn waits for the warm-up's last turn to settle, whatever the units.
    let mut units = BTreeSet::new();
    let tags: BTreeSet<String> = chats.iter().map(|c| crate::chat_tag(&c.chat_id)).collect();
    for i in 0..n {
        if Instant::now() > t_end {
            errors.push(format!("time budget of {budget:?} spent after {i} turns"));
            break;
        }
        if pace == Pace::Settled {
            let (now, waited) = settle(&units, &tags, SETTLE_TIMEOUT).await?;
            match waited {
                Some(w) => settle_ms.push(w.as_secs_f64() * 1000.0),
                None => unsettled += 1,
            }
            units = now;
        }
        let c = &chats[i % chats.len()];
        match one(
            sim,
            &c.handle,
            Some(&c.chat_id),
            &format!("benchmark turn {i}"),
            Duration::from_secs(30),
        )
        .await
        {
            Ok(s) => samples.push(s),
            Err(e) => match e.downcast::<NoReply>() {
                Ok(nr) => late.push(nr),
                Err(e) => errors.push(format!("{e:#}")),
            },
        }
    }
    for nr in &late {
        errors.push(late_reply(sim, nr).await);
    }
    Ok(SeqOutcome {
        samples,
        errors,
        chats,
        turn_unit_file,
        settle_ms,
        unsettled,
    })
}

/// First messages of new chats, one at a time.
pub async fn cold(sim: &Sim, handles: &[String], budget: Duration) -> SeqOutcome {
    let t_end = Instant::now() + budget;
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    let mut chats = Vec::new();
    for (i, h) in handles.iter().enumerate() {
        if Instant::now() > t_end {
            errors.push(format!("time budget of {budget:?} spent after {i} chats"));
            break;
        }
        match one(
            sim,
            h,
            None,
            &format!("hello, I am new here ({i})"),
            Duration::from_secs(60),
        )
        .await
        {
            Ok(s) => {
                chats.push(Chat {
                    handle: h.clone(),
                    chat_id: s.chat_id.clone(),
                });
                samples.push(s);
            }
            Err(e) => match e.downcast::<NoReply>() {
                Ok(nr) => errors.push(late_reply(sim, &nr).await),
                Err(e) => errors.push(format!("{h}: {e:#}")),
            },
        }
    }
    SeqOutcome {
        samples,
        errors,
        chats,
        turn_unit_file: None,
        settle_ms: Vec::new(),
        unsettled: 0,
    }
}

/// Minimal `join_all` over boxed futures on the current runtime (no futures crate needed).
mod futures_like {
    use std::future::Future;

    pub async fn join_all<F, T>(fs: Vec<F>) -> Vec<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            if let Ok(v) = h.await {
                out.push(v);
            }
        }
        out
    }
}

pub struct ConcOutcome {
    pub sent: usize,
    pub answered: usize,
    pub failures: usize,
    pub failure_notes: Vec<String>,
    /// Gateway 2xx → reply, per answered message, ms.
    pub latencies_ms: Vec<f64>,
    /// First webhook accepted → last reply received (simulator clock), s.
    pub makespan_s: f64,
    /// How long sending all messages took, s.
    pub send_s: f64,
    /// Peak VmRSS seen while sampling, and VmHWM at the end, of picortexd (kB).
    pub rss_peak_sampled_kb: u64,
}

/// `per_chat` messages to each chat, sent round by round (all chats at once within a round),
/// each asking the stand-in to take `sleep_s` seconds; then wait for every reply.
pub async fn concurrent(
    sim: &Sim,
    chats: &[Chat],
    per_chat: usize,
    sleep_s: f64,
    timeout: Duration,
    mut sample_rss: impl FnMut() -> u64,
) -> anyhow::Result<ConcOutcome> {
    let mut before: HashMap<String, usize> = HashMap::new();
    for m in chats {
        before.insert(m.chat_id.clone(), 0);
    }
    // How many bot messages each chat had before.
    for m in sim.sent(None).await? {
        if let Some(n) = before.get_mut(&m.chat_id) {
            *n += 1;
        }
    }
    let t_send = Instant::now();
    let mut sent: HashMap<String, Vec<Sent>> = HashMap::new();
    let mut notes = Vec::new();
    let mut n_sent = 0;
    for r in 0..per_chat {
        let futs: Vec<_> = chats
            .iter()
            .map(|c| {
                let (sim, c) = (sim.clone(), c.clone());
                async move {
                    let text = format!("concurrent message {r} #sleep={sleep_s}");
                    (
                        c.chat_id.clone(),
                        sim.inbound(&c.handle, Some(&c.chat_id), &text).await,
                    )
                }
            })
            .collect();
        for (chat, res) in join_all(futs).await {
            match res {
                Ok(s) if s.status.is_some_and(|st| (200..300).contains(&st)) => {
                    n_sent += 1;
                    sent.entry(chat).or_default().push(s);
                }
                Ok(s) => notes.push(format!("chat {chat}: webhook answered {:?}", s.status)),
                Err(e) => notes.push(format!("chat {chat}: sending failed: {e:#}")),
            }
        }
    }
    let send_s = t_send.elapsed().as_secs_f64();
    let end = Instant::now() + timeout;
    let mut rss_peak = 0;
    let expected = chats.len() * per_chat;
    let by_chat = loop {
        rss_peak = rss_peak.max(sample_rss());
        // Bot messages per chat, in order.
        let mut by_chat: HashMap<String, Vec<Msg>> = HashMap::new();
        for m in sim.sent(None).await? {
            by_chat.entry(m.chat_id.clone()).or_default().push(m);
        }
        let got: usize = chats
            .iter()
            .map(|c| {
                by_chat
                    .get(&c.chat_id)
                    .map(|v| v.len().saturating_sub(before[&c.chat_id]))
                    .unwrap_or(0)
            })
            .sum();
        if got >= expected || Instant::now() > end {
            break by_chat;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    rss_peak = rss_peak.max(sample_rss());
    let mut answered = 0;
    let mut latencies = Vec::new();
    let mut first_acc = i128::MAX;
    let mut last_reply = i128::MIN;
    for c in chats {
        let empty = Vec::new();
        let msgs = by_chat.get(&c.chat_id).unwrap_or(&empty);
        let b = before[&c.chat_id];
        let new: Vec<&Msg> = msgs.iter().skip(b).collect();
        for (k, s) in sent
            .get(&c.chat_id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let reply = new
                .iter()
                .find(|m| m.reply_to.as_deref() == Some(s.message_id.as_str()))
                .or_else(|| new.get(k).filter(|m| m.reply_to.is_none()));
            match reply {
                Some(m) if is_answer(&m.text) => {
                    answered += 1;
                    if let Ok((acc, _)) = sim.accepted_at(&s.event_id).await {
                        latencies.push((m.created_ns - acc) as f64 / 1e6);
                        first_acc = first_acc.min(acc);
                    }
                    last_reply = last_reply.max(m.created_ns);
                }
                Some(m) => notes.push(format!(
                    "chat {}: message {k} answered with {:?}",
                    c.chat_id, m.text
                )),
                None => notes.push(format!("chat {}: message {k} got no reply", c.chat_id)),
            }
        }
    }
    Ok(ConcOutcome {
        sent: n_sent,
        answered,
        failures: expected - answered,
        failure_notes: notes,
        latencies_ms: latencies,
        makespan_s: if last_reply > first_acc {
            (last_reply - first_acc) as f64 / 1e9
        } else {
            f64::NAN
        },
        send_s,
        rss_peak_sampled_kb: rss_peak,
    })
}
