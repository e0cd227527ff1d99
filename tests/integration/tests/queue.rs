//! SPEC T5: messages that arrive while a chat's turn runs wait in the durable queue and are
//! answered after it, in order; turns of one chat never overlap; different chats run in parallel
//! up to `turns.max_concurrent`; queued work survives a gateway restart.

use std::time::Duration;

use picortex_integration::Machine;

const OWNER: &str = "+15550002000";

fn machine(max_concurrent: u32) -> Machine {
    let m = Machine::boot();
    m.set_config("turns", "max_concurrent", &max_concurrent.to_string());
    // Turn units are counted from the journal: no spares among them.
    m.without_spares();
    m.start_picortex();
    m
}

/// (unit, start, end) of every run of a turn unit, from systemd's own journal lines, in
/// seconds; a run not ended yet ends at `f64::MAX`. A turn run again (its sandbox raced by
/// useradd; see picortexd's turns::again) runs its unit's name twice.
fn unit_spans(m: &Machine) -> Vec<(String, f64, f64)> {
    let lines = m.journal("_PID=1 -o short-unix | grep -E 'picortex-turn-[0-9a-f]+\\.service' | grep -E ': (Started|Deactivated successfully|Failed with result)' || true");
    let mut spans: Vec<(String, f64, f64)> = Vec::new();
    for l in lines.lines() {
        let ts: f64 = l
            .split_whitespace()
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0.0);
        let Some(unit) = l
            .split_whitespace()
            .find(|w| w.starts_with("picortex-turn-"))
            .map(|w| w.trim_end_matches(':').trim_end_matches('.').to_owned())
        else {
            continue;
        };
        if l.contains("Started") {
            spans.push((unit, ts, f64::MAX));
        } else if let Some(s) = spans
            .iter_mut()
            .rev()
            .find(|s| s.0 == unit && s.2 == f64::MAX)
        {
            s.2 = ts;
        }
    }
    spans
}

fn max_overlap(spans: &[(String, f64, f64)]) -> usize {
    spans
        .iter()
        .map(|(_, s, _)| spans.iter().filter(|(_, a, b)| a <= s && s < b).count())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_chats_messages_wait_their_turn_and_are_answered_in_order() {
    let m = machine(4);
    let sim = m.sim();
    let first = sim.text(OWNER, None, "#sleep=2 first");
    let chat = first["chat_id"].as_str().unwrap().to_owned();
    m.wait_running_turn(None, Duration::from_secs(20));
    sim.text(OWNER, Some(&chat), "second");
    sim.text(OWNER, Some(&chat), "third");
    let sent = m.wait_for("three replies", Duration::from_secs(40), || {
        let s = sim.sent(&chat);
        (s.len() >= 3).then_some(s)
    });
    let texts: Vec<&str> = sent
        .iter()
        .map(|s| s["text"].as_str().unwrap_or_default())
        .collect();
    assert!(texts[0].contains("\"#sleep=2 first\""), "{texts:?}");
    assert!(
        texts[1].contains("you said \"second\"") && texts[1].contains("turn 2 of"),
        "{texts:?}"
    );
    assert!(
        texts[2].contains("you said \"third\"")
            && texts[2].contains("before that you said \"second\""),
        "{texts:?}"
    );
    assert_eq!(
        max_overlap(&unit_spans(&m)),
        1,
        "turns of one chat overlapped"
    );
}

#[test]
fn chats_run_in_parallel_up_to_the_limit() {
    let m = machine(2);
    let sim = m.sim();
    let chats: Vec<String> = (0..4)
        .map(|i| {
            sim.text(&format!("+1555000900{i}"), None, "#sleep=2 work")["chat_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    m.wait_for("four replies", Duration::from_secs(60), || {
        chats.iter().all(|c| sim.sent(c).len() == 1).then_some(())
    });
    // Each reply is sent as its unit ends: wait for systemd's line that it ended, too.
    let units = |spans: &[(String, f64, f64)]| {
        spans
            .iter()
            .map(|s| s.0.clone())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let spans = m.wait_for("four ended turn units", Duration::from_secs(20), || {
        let spans = unit_spans(&m);
        (units(&spans) >= 4 && spans.iter().all(|s| s.2 < f64::MAX)).then_some(spans)
    });
    assert_eq!(units(&spans), 4, "{spans:?}");
    assert_eq!(
        max_overlap(&spans),
        2,
        "expected exactly 2 turns at once: {spans:?}"
    );
}

#[test]
fn queued_work_survives_a_gateway_restart() {
    let m = machine(1);
    let sim = m.sim();
    let a = sim.text(OWNER, None, "#sleep=3 long one")["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = sim.text("+15550009999", None, "queued behind it")["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();
    m.wait_running_turn(None, Duration::from_secs(20));
    // Both are stored; one runs, one waits. Restart the gateway under them.
    m.ok("systemctl restart picortexd.service");
    m.wait_for(
        "both replies after the restart",
        Duration::from_secs(60),
        || (sim.sent(&a).len() == 1 && sim.sent(&b).len() == 1).then_some(()),
    );
    m.wait_settled(Duration::from_secs(30));
    assert_eq!(
        (sim.sent(&a).len(), sim.sent(&b).len()),
        (1, 1),
        "a reply was lost or doubled"
    );
}

/// A second picortexd started by hand on the live state directory (the README's development
/// command) refuses to start, saying who holds it, and the live turns finish untouched.
#[test]
fn a_second_gateway_on_the_same_state_refuses_and_the_live_turn_finishes() {
    let m = machine(4);
    let sim = m.sim();
    let r = sim.text(OWNER, None, "#sleep=3 a long one");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    m.wait_running_turn(None, Duration::from_secs(20));
    let live = m
        .ok("systemctl show -P MainPID picortexd.service")
        .trim()
        .to_owned();
    let second = m.sh("timeout 20 /usr/bin/picortexd --listen 127.0.0.1:8471 --credentials-dir /etc/picortex/credentials --state-dir /var/lib/picortex");
    assert_ne!(
        second.code, 0,
        "a second gateway started: {}",
        second.stdout
    );
    assert!(
        second
            .stderr
            .contains(&format!("another picortexd (pid {live})")),
        "{}",
        second.stderr
    );
    let sent = m.wait_replies(&chat, 1, Duration::from_secs(30));
    assert!(
        sent[0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("a long one"),
        "{sent:?}"
    );
    assert_eq!(
        m.sql(&format!(
            "SELECT outcome FROM turns WHERE chat_id = '{chat}'"
        )),
        "ok"
    );
}
