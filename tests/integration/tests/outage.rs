//! Issue "The Linq channel, complete and lossless" (done-when 3): when Linq is down or pushes
//! back, replies wait in the outbox and go out exactly once when it can take them — no sooner
//! than it asked (`Retry-After`), no later than one capped backoff after it is back — and a reply
//! Linq refuses for good is given up, recorded, and not retried.

use std::time::{Duration, Instant};

use picortex_integration::{json, tally_replies, Expected, Machine, Sim};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);
/// picortexd's outbox backs off 1 s, 2 s, 4 s … capped at 60 s (picortexd/src/linq/client.rs).
const BACKOFF_CAP: Duration = Duration::from_secs(60);

fn machine() -> Machine {
    let m = Machine::boot();
    m.without_spares();
    m.start_picortex();
    m.sim().config(json!({ "retry_base_ms": 100 }));
    m
}

fn say(sim: &Sim, from: &str, chat: Option<&str>, text: &str) -> Expected {
    let v = sim.text(from, chat, text);
    Expected {
        chat_id: v["chat_id"].as_str().expect("chat_id").to_owned(),
        message_id: v["message_id"].as_str().expect("message_id").to_owned(),
        text: text.to_owned(),
    }
}

fn wait_answered(m: &Machine, expected: &[Expected], timeout: Duration) {
    let sim = m.sim();
    m.wait_for(
        &format!("answers to all {} messages", expected.len()),
        timeout,
        || (tally_replies(&sim, expected).lost == 0).then_some(()),
    );
}

/// The simulator's record of the bot's sends into one chat (`POST /v3/chats/{chat}/messages`).
fn sends(sim: &Sim, chat: &str) -> Vec<Value> {
    sim.calls(&format!("/v3/chats/{chat}/messages"), "POST")
}

/// Seconds since the epoch of the simulator's `2026-11-22T14:54:39.266050530Z` timestamps.
fn secs(ts: &Value) -> f64 {
    let s = ts
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {ts}"));
    let (date, time) = s.trim_end_matches('Z').split_once('T').expect("RFC 3339");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().expect("date")).collect();
    let (y, mo, da) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    // Days from the civil date (Howard Hinnant's algorithm).
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + da - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let t: Vec<f64> = time.split(':').map(|x| x.parse().expect("time")).collect();
    days as f64 * 86_400.0 + t[0] * 3600.0 + t[1] * 60.0 + t[2]
}

/// Linq is down for 60 s while 20 replies (four chats, five each) come due. None goes out
/// while it is down; all 20 go out exactly once, in each chat's order, within one capped backoff
/// of its return.
#[test]
fn linq_down_for_a_minute_then_every_reply_exactly_once() {
    let m = machine();
    let sim = m.sim();
    let down_for = Duration::from_secs(60);
    sim.faults(json!({ "api_down": true }));
    let down_at = Instant::now();

    let people = [
        "+15550003001",
        "+15550003002",
        "+15550003003",
        "+15550003004",
    ];
    let mut chats: Vec<Option<String>> = vec![None; people.len()];
    let mut expected = Vec::new();
    for i in 1..=5 {
        for (p, who) in people.iter().enumerate() {
            let e = say(
                &sim,
                who,
                chats[p].as_deref(),
                &format!("message {i} while Linq is down"),
            );
            chats[p] = Some(e.chat_id.clone());
            expected.push(e);
        }
    }
    // Every turn runs (Linq is not needed for that); every reply waits in the outbox.
    m.wait_for("20 replies queued", T, || {
        (m.sql_n("SELECT COUNT(*) FROM outbox WHERE status = 'pending'") == 20).then_some(())
    });
    std::thread::sleep(down_for.saturating_sub(down_at.elapsed()));
    for c in chats.iter().flatten() {
        assert!(
            sim.sent(c).is_empty(),
            "a reply went out while Linq was down"
        );
    }
    let refused = chats
        .iter()
        .flatten()
        .map(|c| sends(&sim, c).iter().filter(|s| s["status"] == 503).count())
        .sum::<usize>();
    assert!(
        refused >= people.len() * 4,
        "the outbox did not keep trying while Linq was down ({refused} attempts)"
    );
    sim.faults(json!({ "api_down": false }));
    let up_at = Instant::now();

    wait_answered(&m, &expected, BACKOFF_CAP + Duration::from_secs(10));
    let after_up = up_at.elapsed();
    std::thread::sleep(Duration::from_secs(2)); // room for a late duplicate
    let t = tally_replies(&sim, &expected);
    eprintln!(
        "OUTAGE down={}s replies={} lost={} duplicated={} all delivered {:.1}s after Linq came back, {:.1}s after it went down; {refused} refused attempts",
        down_for.as_secs(),
        t.messages,
        t.lost,
        t.duplicated,
        after_up.as_secs_f64(),
        down_at.elapsed().as_secs_f64() - 2.0,
    );
    assert!(t.clean(), "{t:?}");
    assert!(
        after_up <= BACKOFF_CAP + Duration::from_secs(5),
        "took {after_up:?} after Linq came back"
    );
    assert_eq!(
        m.sql("SELECT status, COUNT(*) FROM outbox GROUP BY 1"),
        "sent|20"
    );
    assert!(
        m.sql("SELECT last_error FROM outbox WHERE attempts > 1 LIMIT 1")
            .contains("503"),
        "no 503 recorded on a retried reply"
    );
}

/// A burst of 429s with `Retry-After: 3`: each retry waits at least that long (the outbox's own
/// backoff would have tried again after 1 s and 2 s), and the reply goes out once.
#[test]
fn a_429_burst_is_retried_no_sooner_than_retry_after() {
    let m = machine();
    let sim = m.sim();
    let first = say(&sim, "+15550002000", None, "hello");
    wait_answered(&m, std::slice::from_ref(&first), T);
    let chat = first.chat_id.clone();
    sim.faults(json!({ "api": { "status": 429, "count": 3, "retry_after_s": 3, "path_prefix": format!("/v3/chats/{chat}/messages") } }));

    let second = say(
        &sim,
        "+15550002000",
        Some(&chat),
        "while Linq is rate-limiting",
    );
    let expected = vec![first, second];
    wait_answered(&m, &expected, T);
    std::thread::sleep(Duration::from_secs(1));
    let t = tally_replies(&sim, &expected);
    assert!(t.clean(), "{t:?}");

    let calls = sends(&sim, &chat);
    let statuses: Vec<u64> = calls
        .iter()
        .map(|c| c["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, vec![202, 429, 429, 429, 202], "{calls:?}");
    let gaps: Vec<f64> = calls[1..]
        .windows(2)
        .map(|w| secs(&w[1]["at"]) - secs(&w[0]["at"]))
        .collect();
    eprintln!("RETRY-AFTER 3 s: gaps between attempts {gaps:.2?}");
    for g in &gaps {
        assert!(
            *g >= 3.0,
            "a retry came {g:.2} s after a 429 with Retry-After: 3"
        );
    }
    assert!(
        gaps.iter().sum::<f64>() < 15.0,
        "retries much slower than asked: {gaps:?}"
    );
}

/// A 4xx other than 429 (here a 400) is final: the reply is given up after one attempt, the
/// outbox records it as failed, nothing retries it, and the chat's next reply is not held up.
#[test]
fn a_rejected_reply_is_given_up_recorded_and_not_retried() {
    let m = machine();
    let sim = m.sim();
    let first = say(&sim, "+15550002000", None, "hello");
    wait_answered(&m, std::slice::from_ref(&first), T);
    let chat = first.chat_id.clone();
    sim.faults(json!({ "api": { "status": 400, "count": 1, "path_prefix": format!("/v3/chats/{chat}/messages") } }));

    let refused = say(
        &sim,
        "+15550002000",
        Some(&chat),
        "Linq will refuse my answer",
    );
    m.wait_for("the reply given up", T, || {
        (m.sql_n("SELECT COUNT(*) FROM outbox WHERE status = 'failed'") == 1).then_some(())
    });
    let row = m.sql("SELECT attempts, last_error FROM outbox WHERE status = 'failed'");
    let (attempts, error) = row.split_once('|').expect("outbox row");
    assert_eq!(attempts, "1", "{row}");
    assert!(error.contains("400"), "{row}");
    let log = m.journal("-u picortexd.service");
    assert!(
        log.contains("given up: Linq will not accept it"),
        "no journal entry for the given-up reply"
    );

    // The chat goes on: the next message is answered, the refused one never is.
    let third = say(&sim, "+15550002000", Some(&chat), "and now?");
    wait_answered(&m, std::slice::from_ref(&third), T);
    std::thread::sleep(Duration::from_secs(3)); // long enough for a (wrong) first retry
    let t = tally_replies(&sim, &[first, third]);
    assert!(t.clean(), "{t:?}");
    let sent = sim.sent(&chat);
    assert!(
        !sent
            .iter()
            .any(|s| s["reply_to"].as_str() == Some(refused.message_id.as_str())),
        "the refused reply was sent after all"
    );
    let statuses: Vec<u64> = sends(&sim, &chat)
        .iter()
        .map(|c| c["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        statuses,
        vec![202, 400, 202],
        "the refused reply was retried"
    );
    assert_eq!(
        m.sql("SELECT status, COUNT(*) FROM outbox GROUP BY 1 ORDER BY 1"),
        "failed|1\nsent|2"
    );
}
