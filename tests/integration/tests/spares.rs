//! Spare turn units: after a chat's turn, its next unit is started ahead of time and waits for
//! its request on a pipe; the next message is handed to it. A gateway killed in the middle of
//! the handoff loses nothing: the spare sees its pipe close empty, and the turn runs again.

use std::time::Duration;

use picortex_integration::{chat_tag, Machine};

const OWNER: &str = "+15550002000";

fn reply_n(m: &Machine, chat: &str, n: usize) -> String {
    m.wait_replies(chat, n, Duration::from_secs(40))[n - 1]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_next_turn_runs_in_a_spare_started_ahead_of_it() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();
    let chat = sim.text(OWNER, None, "hello")["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reply_n(&m, &chat, 1).contains("you said \"hello\""));
    // Running, waiting for its request: the finished turn's own unit may still be loaded, its
    // main process gone, while the gateway lets it go after the answer.
    let spare = m.wait_running_turn(None, Duration::from_secs(20));
    let slice = m.ok(&format!("systemctl show -P Slice {spare}"));
    assert_eq!(
        slice.trim(),
        format!("picortex-chat-{}.slice", chat_tag(&chat)),
        "the spare is not in the chat's slice"
    );
    m.wait_for(
        "the spare waiting for its request",
        Duration::from_secs(20),
        || (m.ok(&format!("systemctl show -P SubState {spare}")).trim() == "running").then_some(()),
    );

    sim.text(OWNER, Some(&chat), "again");
    let r = reply_n(&m, &chat, 2);
    assert!(
        r.contains("you said \"again\"") && r.contains("before that you said \"hello\""),
        "{r}"
    );
    let ran = m.journal(&format!(
        "SYSLOG_IDENTIFIER=picortex-run _SYSTEMD_UNIT={spare} | grep -c 'turn started' || true"
    ));
    assert_eq!(
        ran.trim(),
        "1",
        "the second turn did not run in the spare {spare}"
    );
    assert!(!m
        .journal("SYSLOG_IDENTIFIER=picortexd | grep 'turn started in a spare unit' || true")
        .trim()
        .is_empty());
    // And a new spare waits for the next message.
    m.wait_for("the next spare", Duration::from_secs(20), || {
        m.loaded_turn_units()
            .iter()
            .any(|u| *u != spare)
            .then_some(())
    });
}

#[test]
fn a_gateway_killed_mid_handoff_runs_the_turn_again_exactly_once() {
    let m = Machine::boot();
    m.arm_failpoint("spare-handoff");
    m.start_picortex();
    let sim = m.sim();
    let chat = sim.text(OWNER, None, "first")["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();
    reply_n(&m, &chat, 1);
    m.wait_running_turn(None, Duration::from_secs(20));
    let before = m.gateway_invocation();
    sim.text(OWNER, Some(&chat), "second");
    m.wait_for("the crash", Duration::from_secs(20), || {
        m.failpoint_fired().then_some(())
    });
    m.wait_gateway_restarted(&before, Duration::from_secs(30));
    let r = reply_n(&m, &chat, 2);
    assert!(r.contains("you said \"second\""), "{r}");
    m.wait_settled(Duration::from_secs(30));
    assert_eq!(sim.sent(&chat).len(), 2, "a reply was lost or doubled");
    let requeued = m.journal(
        "SYSLOG_IDENTIFIER=picortexd | grep -c 'got no request; queueing the turn again' || true",
    );
    assert_eq!(
        requeued.trim(),
        "1",
        "the interrupted handoff was not detected"
    );
}

#[test]
fn a_turn_in_a_spare_keeps_its_own_time_limit() {
    // The spare unit started before its turn, so systemd's RuntimeMaxSec cannot be the turn's
    // limit; the gateway keeps it and stops the unit.
    let m = Machine::boot();
    m.set_config("turns", "runtime_max_s", "3");
    m.start_picortex();
    let sim = m.sim();
    let chat = sim.text(OWNER, None, "hello")["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();
    reply_n(&m, &chat, 1);
    // Running, waiting for its request: the finished turn's own unit may still be loaded, its
    // main process gone, while the gateway lets it go after the answer.
    let spare = m.wait_running_turn(None, Duration::from_secs(20));
    m.wait_for("the spare waiting", Duration::from_secs(20), || {
        (m.ok(&format!("systemctl show -P SubState {spare}")).trim() == "running").then_some(())
    });
    let sent_at = std::time::Instant::now();
    sim.text(OWNER, Some(&chat), "#sleep=30 a long one");
    let r = reply_n(&m, &chat, 2);
    assert!(r.contains("took too long"), "{r}");
    assert!(
        sent_at.elapsed() < Duration::from_secs(15),
        "the limit was not kept: {:?}",
        sent_at.elapsed()
    );
    m.wait_for("the spare unit stopped", Duration::from_secs(10), || {
        (!m.loaded_turn_units().contains(&spare)).then_some(())
    });
}
