//! Spare turn units: after a chat's turn, its next unit is started ahead of time and waits for
//! its request on a pipe; the next message is handed to it. A gateway killed in the middle of
//! the handoff loses nothing: the spare sees its pipe close empty, and the turn runs again.

use std::time::Duration;

use picortex_integration::{chat_tag, Machine};

const OWNER: &str = "+15550002000";

/// The owner's first message in a new chat: the chat's id and the reply.
fn open_chat(m: &Machine, text: &str) -> (String, String) {
    let chat = m.sim().text(OWNER, None, text)["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = reply_n(m, &chat, 1);
    (chat, first)
}

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
    let (chat, first) = open_chat(&m, "hello");
    assert!(first.contains("you said \"hello\""));
    // Running, waiting for its request: the finished turn's own unit may still be loaded, its
    // main process gone, while the gateway lets it go after the answer.
    let spare = m.wait_spare(None, Duration::from_secs(20));
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

    // The answered turn's unit went in the same helper call that started the spare: one polkit
    // check and one bus round trip for both (ReleaseAndStartTurn), audited as two operations.
    let first_unit = m.sql(&format!(
        "SELECT unit FROM turns WHERE chat_id = '{chat}' ORDER BY rowid LIMIT 1"
    ));
    let first_id = first_unit
        .trim()
        .trim_start_matches("picortex-turn-")
        .trim_end_matches(".service")
        .to_owned();
    let spare_id = spare
        .trim_start_matches("picortex-turn-")
        .trim_end_matches(".service");
    let released = m.wait_for(
        "the answered turn's unit released",
        Duration::from_secs(20),
        || {
            let r = m.journal(&format!(
                "SYSLOG_IDENTIFIER=picortex-provision PICORTEX_OP=ReleaseTurn PICORTEX_TURN={first_id} PICORTEX_OUTCOME=ok -o cat"
            ));
            (!r.trim().is_empty()).then_some(r)
        },
    );
    assert!(
        released.contains(&format!(
            "in ReleaseAndStartTurn, which starts turn {spare_id}"
        )),
        "the answered turn's unit {first_unit} was not released with the spare's start: {released}"
    );
    assert_eq!(
        m.journal(&format!(
            "SYSLOG_IDENTIFIER=picortex-provision PICORTEX_OP=StartTurn PICORTEX_TURN={spare_id} PICORTEX_OUTCOME=ok -o cat | wc -l"
        ))
        .trim(),
        "1",
        "the spare's start was not audited once"
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
    let (chat, _) = open_chat(&m, "first");
    m.wait_spare(None, Duration::from_secs(20));
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
    let (chat, _) = open_chat(&m, "hello");
    // Running, waiting for its request: the finished turn's own unit may still be loaded, its
    // main process gone, while the gateway lets it go after the answer.
    let spare = m.wait_spare(None, Duration::from_secs(20));
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

/// Replaces `/etc/passwd` by rename (as useradd does) in a tight loop, until `<stop>` exists or,
/// with `until_units = N`, until turn units were created N times since the loop began (a turn
/// run again keeps its unit's name: a name's appearing again counts); then writes how many
/// renames it did to `<stop>.count`.
const RENAMER: &str = r#"
import os, sys
stop, until_units = sys.argv[1], int(sys.argv[2])
units = lambda: {f for f in os.listdir('/run/systemd/transient') if f.startswith('picortex-turn-')}
seen, created, data, n = units(), 0, open('/etc/passwd', 'rb').read(), 0
while not os.path.exists(stop) and not (until_units and created >= until_units):
    with open('/etc/.passwd.renamer', 'wb') as f:
        f.write(data)
    os.chmod('/etc/.passwd.renamer', 0o644)
    os.rename('/etc/.passwd.renamer', '/etc/passwd')
    n += 1
    now = units()
    created, seen = created + len(now - seen), now
open(stop + '.count', 'w').write(str(n))
"#;

fn start_renamer(m: &Machine, stop: &str, until_units: u32) {
    m.ok(&format!(
        "cat > /run/renamer.py <<'EOF'\n{RENAMER}\nEOF\n\
         rm -f {stop} {stop}.count; setsid -f python3 /run/renamer.py {stop} {until_units} \
         </dev/null >/dev/null 2>&1"
    ));
}

/// The gateway's "runs again" entries for `chat` after a fresh unit's sandbox failed its turn
/// (went stale, or systemd could not build it): each one's
/// (PICORTEX_RERUN, PICORTEX_MAX), oldest first.
fn reruns(m: &Machine, chat: &str) -> Vec<(u64, u64)> {
    let field =
        |e: &serde_json::Value, k: &str| e[k].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
    m.journal(&format!(
        "SYSLOG_IDENTIFIER=picortexd PICORTEX_CHAT={chat} -o json"
    ))
    .lines()
    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    .filter(|e| {
        e["MESSAGE"]
            .as_str()
            .is_some_and(|t| t.contains("queueing the turn again for a fresh unit"))
            && e.get("PICORTEX_RERUN").is_some()
    })
    .map(|e| (field(&e, "PICORTEX_RERUN"), field(&e, "PICORTEX_MAX")))
    .collect()
}

/// A chat created while another chat's fresh unit is being set up replaces `/etc/passwd`
/// under that unit's view of it: systemd fails building the sandbox (226/NAMESPACE), or
/// picortex-run finds the view detached (see its userdb). The turn is not lost to that race:
/// it runs again in a fresh unit. And a sandbox that never holds ends the turn as failed after
/// a bounded number of tries instead of looping.
#[test]
fn a_turn_whose_fresh_sandbox_was_raced_by_useradd_runs_again() {
    let m = Machine::boot();
    m.without_spares();
    m.start_picortex();
    let sim = m.sim();
    // The chat (and its user) exist before the renames start: useradd is not raced here.
    let (chat, _) = open_chat(&m, "hello");
    m.wait_chat_settled(&chat, Duration::from_secs(20));

    // Renames until the turn's second unit exists: the first unit's sandbox is raced (its
    // build fails or its view is detached before picortex-run looks); the second is built
    // after the last rename.
    start_renamer(&m, "/run/renamer.stop", 2);
    sim.text(OWNER, Some(&chat), "raced");
    let r = reply_n(&m, &chat, 2);
    assert!(
        r.contains("you said \"raced\""),
        "the turn was not run again: {r}"
    );
    m.wait_for("the renamer's count", Duration::from_secs(10), || {
        m.sh("cat /run/renamer.stop.count")
            .code
            .eq(&0)
            .then_some(())
    });
    let first = reruns(&m, &chat);
    let max = first.first().map(|r| r.1).unwrap_or(0);
    assert!(
        !first.is_empty() && first.len() as u64 <= max,
        "expected the stale unit's turn to run again, a bounded number of times: {first:?}"
    );

    // Renames that never stop: every unit's sandbox is raced; the turn ends failed after the
    // bounded reruns, and the loop ends with it.
    start_renamer(&m, "/run/renamer2.stop", 0);
    sim.text(OWNER, Some(&chat), "never holds");
    let r = reply_n(&m, &chat, 3);
    m.ok("touch /run/renamer2.stop");
    assert!(
        !r.contains("you said"),
        "a stale sandbox ran the agent: {r}"
    );
    m.wait_chat_settled(&chat, Duration::from_secs(20));
    // journald may store the gateway's lines after the reply has reached the simulator: wait
    // for as many as meant (more, or others, fail below).
    let all = m.wait_for("the reruns in the journal", Duration::from_secs(20), || {
        let all = reruns(&m, &chat);
        (all.len() >= first.len() + max as usize).then_some(all)
    });
    let second: Vec<u64> = all[first.len()..].iter().map(|r| r.0).collect();
    assert_eq!(
        second,
        (1..=max).collect::<Vec<_>>(),
        "the reruns are not bounded as meant: {all:?}"
    );
    assert_eq!(sim.sent(&chat).len(), 3, "a reply was lost or doubled");
}
