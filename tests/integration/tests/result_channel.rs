//! Issue 7, item 1 (SPEC P6): a turn cannot change what the gateway believes about it. The
//! stand-in agent forges picortex-run's result document (`#forge`: a made-up reply with a
//! negative cost, written to its stdout, its stderr, every descriptor it holds and its parent's)
//! and reports absurd costs of its own (`#cost=`); the chat gets only what picortex-run wrote,
//! and the log records no cost outside 0..=1000.

use std::time::Duration;

use picortex_integration::Machine;
use serde_json::Value;

const OWNER: &str = "+15550002000";
/// `attack::FORGED_TEXT` of the stand-in.
const FORGED: &str = "standin: FORGED REPLY";
const T: Duration = Duration::from_secs(60);

/// The turns row of the chat's latest turn: outcome|cost_usd.
fn last_turn(m: &Machine, chat: &str) -> String {
    m.sql(&format!(
        "SELECT outcome || '|' || ifnull(cost_usd, 'null') FROM turns WHERE chat_id = '{chat}' AND status = 'done' ORDER BY created_at DESC, rowid DESC LIMIT 1;"
    ))
}

/// Wait until the chat's turn that answered `n` replies ago is recorded as done.
fn wait_done(m: &Machine, chat: &str, n: i64) {
    m.wait_for(&format!("{n} finished turns in chat {chat}"), T, || {
        (m.sql_n(&format!(
            "SELECT count(*) FROM turns WHERE chat_id = '{chat}' AND status = 'done';"
        )) >= n)
            .then_some(())
    });
}

#[test]
fn a_turn_cannot_forge_its_result_or_its_cost() {
    let m = Machine::boot();
    m.start_picortex();

    // The forgery: the real reply arrives, the forged one never does.
    let mut chat = None;
    let reply = m.exchange(OWNER, &mut chat, "#forge tell me something");
    let chat = chat.expect("chat");
    eprintln!("reply: {reply}");
    assert!(
        !reply.contains(FORGED),
        "the forged reply got through: {reply}"
    );
    assert!(
        reply.contains("standin: you said \"#forge tell me something\""),
        "not the agent's real answer: {reply}"
    );
    // The forgery was really attempted, for this turn, on every channel the agent had.
    let forge: Value = serde_json::from_str(
        reply
            .split_once(" | forge=")
            .map(|(_, f)| f.trim())
            .unwrap_or_else(|| panic!("no forge report: {reply}")),
    )
    .expect("forge report");
    let turn = forge["turn"].as_str().unwrap_or("");
    assert_eq!(
        turn.len(),
        32,
        "the forgery did not know its turn id: {forge}"
    );
    assert_eq!(forge["stdout"], "wrote", "{forge}");
    assert_eq!(forge["stderr"], "wrote", "{forge}");
    // None of the agent's own descriptors leads to a result file.
    let own = forge["self"].as_object().expect("own descriptors");
    assert!(
        own.values().all(|v| !v
            .as_str()
            .unwrap_or("")
            .contains("/var/lib/picortex/turns/")),
        "the agent holds a result file: {forge}"
    );
    let parent = forge["parent"].as_object().expect("parent tries");
    assert!(
        parent
            .values()
            .all(|v| !v.as_str().unwrap_or("").ends_with("wrote")),
        "the agent wrote through picortex-run's descriptors: {forge}"
    );
    wait_done(&m, &chat, 1);
    assert_eq!(last_turn(&m, &chat).split('|').next(), Some("ok"));

    // Costs the agent makes up: absurd ones fail the turn as bad output, negative ones are
    // dropped, and neither reaches the log.
    let reply = m.exchange(
        OWNER,
        &mut Some(chat.clone()),
        "#cost=5000 an expensive one",
    );
    assert!(
        reply.contains("garbled"),
        "an absurd cost was accepted: {reply}"
    );
    wait_done(&m, &chat, 2);
    assert_eq!(last_turn(&m, &chat), "bad_output|null");

    let reply = m.exchange(OWNER, &mut Some(chat.clone()), "#cost=-1000 a free one");
    assert!(reply.contains("standin: you said"), "{reply}");
    wait_done(&m, &chat, 3);
    assert_eq!(last_turn(&m, &chat), "ok|null");

    assert_eq!(
        m.sql_n("SELECT count(*) FROM turns WHERE cost_usd < 0 OR cost_usd > 1000;"),
        0,
        "a cost outside 0..=1000 was recorded"
    );
    let sent = m.sim().sent(&chat);
    assert!(
        sent.iter()
            .all(|s| !s["text"].as_str().unwrap_or("").contains(FORGED)),
        "{sent:?}"
    );
}
