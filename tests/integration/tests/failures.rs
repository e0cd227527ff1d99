//! SPEC T4: every way a turn can fail ends in one short, specific reply and a journal entry with
//! the reason; the chat's queue moves on, and nothing is retried blindly.

use picortex_integration::Machine;

const OWNER: &str = "+15550002000";

/// Boot with a 3-second turn limit, so the timeout case is quick.
fn machine() -> Machine {
    let m = Machine::boot();
    m.set_config("turns", "runtime_max_s", "3");
    // Each failure must come through the helper and a fresh unit, not a spare started earlier.
    m.without_spares();
    m.start_picortex();
    m
}

fn outcome_logged(m: &Machine, outcome: &str) -> bool {
    !m.journal(&format!(
        "SYSLOG_IDENTIFIER=picortexd PICORTEX_OUTCOME={outcome}"
    ))
    .trim()
    .is_empty()
}

/// The newest turn of `chat` ended with `outcome`, in the log and in its own journal lines.
fn turn_ended_as(m: &Machine, chat: &str, outcome: &str) -> Result<(), String> {
    let row = m.sql(&format!(
        "SELECT id || '|' || outcome FROM turns WHERE chat_id = '{chat}' ORDER BY created_at DESC LIMIT 1"
    ));
    let (turn, stored) = row.split_once('|').ok_or(format!("no turn: {row:?}"))?;
    if stored != outcome {
        return Err(format!("turn {turn} stored outcome {stored}"));
    }
    // The catalogued "turn failed" entry (dist/picortex.catalog), reason in the text.
    let logged = m.journal(&format!(
        "SYSLOG_IDENTIFIER=picortexd PICORTEX_TURN={turn} PICORTEX_OUTCOME={outcome} MESSAGE_ID=8d1c5e2a4f7b4c0e9a3d6b1f2e4c7a90"
    ));
    if !logged.contains(&format!("turn failed: {outcome}")) {
        return Err(format!(
            "turn {turn}: no \"turn failed: {outcome}\" entry: {logged:?}"
        ));
    }
    if logged.trim().is_empty() {
        return Err(format!(
            "turn {turn}: no journal entry with PICORTEX_OUTCOME={outcome}"
        ));
    }
    Ok(())
}

#[test]
fn each_failure_gets_its_own_honest_reply_and_the_queue_moves_on() {
    let m = machine();
    let mut chat = None;
    let cases = [
        ("#sleep=10 a slow one", "took too long", "timeout"),
        (
            "#is_error=API Error: Rate limit reached",
            "rate-limiting",
            "agent_error",
        ),
        (
            "#is_error=Invalid API key · Fix external API key",
            "credentials were refused",
            "agent_error",
        ),
        (
            "#is_error=Exceeded USD budget (5)",
            "spending limit",
            "agent_error",
        ),
        ("#empty say nothing", "without an answer", "empty_output"),
        ("#garbage", "garbled", "bad_output"),
        ("#crash", "stopped unexpectedly", "agent_failed"),
    ];
    for (prompt, words, outcome) in cases {
        let reply = m.exchange(OWNER, &mut chat, prompt);
        assert!(
            reply.contains(words),
            "{prompt:?} got {reply:?}, expected it to say {words:?}"
        );
        assert!(
            !reply.contains("standin:"),
            "{prompt:?} was answered as if it worked: {reply}"
        );
        let c = chat.clone().expect("chat");
        if let Err(e) = turn_ended_as(&m, &c, outcome) {
            panic!("{prompt:?}: {e}");
        }
        // The queue moves on: the next message is answered normally.
        let ok = m.exchange(OWNER, &mut chat, "still there?");
        assert!(
            ok.contains("standin: you said \"still there?\""),
            "after {prompt:?}: {ok}"
        );
    }
    // Each failed turn ran exactly once: one picortex-run start per message.
    let starts = m.journal("SYSLOG_IDENTIFIER=picortex-run | grep -c 'turn started' || true");
    assert_eq!(
        starts.trim(),
        (cases.len() * 2).to_string(),
        "a failed turn was retried"
    );
}

#[test]
fn helper_unavailable_and_unit_start_failure_are_told() {
    let m = machine();
    let mut chat = None;
    assert!(m.exchange(OWNER, &mut chat, "hello").contains("standin:"));

    // The turn unit cannot exec picortex-run.
    m.ok("chmod 000 /usr/libexec/picortex/picortex-run");
    let reply = m.exchange(OWNER, &mut chat, "try this");
    assert!(reply.contains("couldn't start the agent"), "{reply}");
    assert!(outcome_logged(&m, "unit_failed_to_start"));
    m.ok("chmod 755 /usr/libexec/picortex/picortex-run");
    assert!(m
        .exchange(OWNER, &mut chat, "and now?")
        .contains("standin: you said \"and now?\""));

    // The helper cannot be started at all.
    m.ok("systemctl stop picortex-provision.service; systemctl mask picortex-provision.service");
    let reply = m.exchange(OWNER, &mut chat, "anyone home?");
    assert!(reply.contains("helper isn't available"), "{reply}");
    assert!(outcome_logged(&m, "helper_unavailable"));
    m.ok("systemctl unmask picortex-provision.service");
    assert!(m
        .exchange(OWNER, &mut chat, "back?")
        .contains("standin: you said \"back?\""));
}
