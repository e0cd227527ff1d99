//! SPEC L2–L4 and A1/A2 as Linq (the simulator) exercises them: groups answer only when
//! mentioned, named or replied to; typing only in 1:1 chats; read receipts for handled messages;
//! the bot's own echoes and STOP are not answered; long replies are split; delivery, reads,
//! tapbacks, participants and group names land in the log.

use std::time::Duration;

use picortex_integration::{json, Machine};

const OWNER: &str = "+15550002000";
const FRIEND: &str = "+15550003000";

/// Wait until nothing is in flight, so what is counted next is final.
fn settle(m: &Machine) {
    m.wait_settled(Duration::from_secs(30));
}

#[test]
fn groups_typing_receipts_opt_out_and_splitting() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();

    // A group: a plain message is kept as context, a mention or the bot's name gets an answer.
    let g = sim.post("/control/inbound", json!({"from": OWNER, "group": true, "participants": [FRIEND], "display_name": "Team", "text": "lunch anyone?"}));
    let group = g["chat_id"].as_str().unwrap().to_owned();
    settle(&m);
    assert!(
        sim.sent(&group).is_empty(),
        "answered a group message without a mention"
    );
    sim.post(
        "/control/inbound",
        json!({"from": FRIEND, "chat_id": group, "text": "@bot what's up", "mentions_me": true}),
    );
    m.wait_for("the mention's answer", Duration::from_secs(30), || {
        (sim.sent(&group).len() == 1).then_some(())
    });
    sim.post("/control/inbound", json!({"from": FRIEND, "chat_id": group, "text": "Cortex, are you there?", "service": "SMS"}));
    m.wait_for("the named answer", Duration::from_secs(30), || {
        (sim.sent(&group).len() == 2).then_some(())
    });
    let bot_msg = sim.sent(&group)[1]["id"].as_str().unwrap().to_owned();
    sim.post(
        "/control/inbound",
        json!({"from": OWNER, "chat_id": group, "text": "thanks!", "reply_to": bot_msg}),
    );
    m.wait_for("the reply-to-bot answer", Duration::from_secs(30), || {
        (sim.sent(&group).len() == 3).then_some(())
    });
    assert_eq!(
        m.sql(&format!(
            "SELECT COUNT(*) FROM messages WHERE chat_id = '{group}' AND direction = 'inbound'"
        )),
        "4",
        "group context not kept"
    );
    let typing = sim.get(&format!(
        "/control/calls?path_prefix=/v3/chats/{group}/typing"
    ));
    assert_eq!(
        typing.as_array().map(Vec::len),
        Some(0),
        "typing indicator sent to a group: {typing}"
    );
    // The group's details were read from Linq.
    m.wait_for("the group's details", Duration::from_secs(10), || {
        (m.sql(&format!(
            "SELECT display_name FROM chats WHERE id = '{group}'"
        )) == "Team")
            .then_some(())
    });
    assert_eq!(
        m.sql(&format!(
            "SELECT COUNT(*) FROM participants WHERE chat_id = '{group}' AND is_me = 0"
        )),
        "2"
    );

    // A 1:1 chat: typing while the turn runs, a read receipt, an in-thread reply.
    let d = sim.text(OWNER, None, "hi");
    let dm = d["chat_id"].as_str().unwrap().to_owned();
    m.wait_for("the DM answer", Duration::from_secs(30), || {
        (sim.sent(&dm).len() == 1).then_some(())
    });
    settle(&m);
    let typing = sim.get(&format!(
        "/control/calls?path_prefix=/v3/chats/{dm}/typing&method=POST"
    ));
    assert!(
        typing.as_array().is_some_and(|a| !a.is_empty()),
        "no typing indicator in a 1:1 chat"
    );
    let read = sim.get(&format!("/control/calls?path_prefix=/v3/chats/{dm}/read"));
    assert!(
        read.as_array().is_some_and(|a| !a.is_empty()),
        "no read receipt"
    );

    // The bot's own message came back as message.sent and delivered: recorded, never answered.
    m.wait_for(
        "the bot's message recorded as delivered",
        Duration::from_secs(30),
        || {
            (m.sql(&format!(
                "SELECT status FROM messages WHERE chat_id = '{dm}' AND direction = 'outbound'"
            )) == "delivered")
                .then_some(())
        },
    );

    // STOP is respected; any later message lifts it.
    sim.text(OWNER, Some(&dm), "STOP");
    settle(&m);
    assert_eq!(sim.sent(&dm).len(), 1, "answered STOP");
    assert_eq!(
        m.sql(&format!("SELECT opted_out FROM chats WHERE id = '{dm}'")),
        "1"
    );
    sim.text(OWNER, Some(&dm), "ok I'm back");
    m.wait_for(
        "the answer after STOP was lifted",
        Duration::from_secs(30),
        || (sim.sent(&dm).len() == 2).then_some(()),
    );
    assert_eq!(
        m.sql(&format!("SELECT opted_out FROM chats WHERE id = '{dm}'")),
        "0"
    );

    // A long answer is split on paragraph boundaries into parts under the limit, in order.
    let para = "word ".repeat(500);
    let long = format!("{para}\n\n{para}\n\n{para}");
    let l = sim.text(OWNER, Some(&dm), &long);
    let sent = m.wait_for("a split reply", Duration::from_secs(30), || {
        let s = sim.sent(&dm);
        (s.len() >= 4).then_some(s)
    });
    let parts: Vec<&str> = sent[2..]
        .iter()
        .map(|p| p["text"].as_str().unwrap_or_default())
        .collect();
    assert!(parts.len() >= 2, "not split: {}", parts.len());
    assert!(
        parts.iter().all(|p| p.chars().count() <= 4000),
        "a part over the limit"
    );
    assert_eq!(
        sent[2]["reply_to"], l["message_id"],
        "the first part is not an in-thread reply"
    );
    assert!(
        sent[3]["reply_to"].is_null(),
        "later parts should not each quote the message"
    );
    assert!(
        parts[0].starts_with("standin: you said"),
        "parts out of order"
    );
}

#[test]
fn reads_tapbacks_participants_and_names_update_the_log() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();
    let d = sim.text(OWNER, None, "hi");
    let dm = d["chat_id"].as_str().unwrap().to_owned();
    m.wait_for("the answer", Duration::from_secs(30), || {
        (sim.sent(&dm).len() == 1).then_some(())
    });
    let bot_msg = sim.sent(&dm)[0]["id"].as_str().unwrap().to_owned();
    let handle = |h: &str, me: bool| json!({"id": "h", "handle": h, "is_me": me, "service": "iMessage", "status": "active", "joined_at": "2026-01-01T00:00:00Z", "left_at": null});
    let chat_ref = json!({"id": dm, "is_group": false, "owner_handle": handle("+15550001000", true), "health_status": {"status": "HEALTHY", "doc_url": "x", "updated_at": "2026-11-22T00:00:00Z"}});

    let ev = |t: &str, data: serde_json::Value| {
        let r = sim.post("/control/event", json!({"event_type": t, "data": data}));
        assert_eq!(r["status"], 200, "{t} not accepted: {r}");
    };
    ev(
        "message.read",
        json!({"id": bot_msg, "chat": chat_ref, "direction": "outbound", "sender_handle": handle("+15550001000", true), "parts": [{"type": "text", "value": "x", "mentions": null}], "service": "iMessage", "read_at": "2026-11-22T00:00:01Z"}),
    );
    ev(
        "reaction.added",
        json!({"chat_id": dm, "message_id": bot_msg, "part_index": 0, "reaction_type": "love", "custom_emoji": null, "is_from_me": false, "from_handle": handle(OWNER, false), "reacted_at": "2026-11-22T00:00:02Z", "service": "iMessage"}),
    );
    ev(
        "message.edited",
        json!({"id": d["message_id"], "chat": chat_ref, "direction": "inbound", "sender_handle": handle(OWNER, false), "edited_at": "2026-11-22T00:00:03Z", "part": {"index": 0, "text": "hi (edited)"}}),
    );
    let g = sim.post(
        "/control/inbound",
        json!({"from": OWNER, "group": true, "participants": [FRIEND], "text": "group chat"}),
    );
    let group = g["chat_id"].as_str().unwrap().to_owned();
    ev(
        "participant.added",
        json!({"chat_id": group, "participant": handle("+15550004000", false), "added_at": "2026-11-22T00:00:04Z"}),
    );
    ev(
        "participant.removed",
        json!({"chat_id": group, "participant": handle(FRIEND, false), "removed_at": "2026-11-22T00:00:05Z"}),
    );
    ev(
        "chat.group_name_updated",
        json!({"chat_id": group, "old_value": null, "new_value": "Renamed", "updated_at": "2026-11-22T00:00:06Z"}),
    );
    ev("chat.typing_indicator.started", json!({"chat_id": dm}));
    ev("poll.voted", json!({"chat_id": dm, "anything": [1, 2, 3]}));
    settle(&m);

    assert_eq!(
        m.sql(&format!(
            "SELECT status FROM messages WHERE linq_id = '{bot_msg}'"
        )),
        "read"
    );
    assert_eq!(
        m.sql(&format!(
            "SELECT kind FROM reactions WHERE message_linq_id = '{bot_msg}' AND removed_at IS NULL"
        )),
        "love"
    );
    assert_eq!(
        m.sql(&format!(
            "SELECT text || '|' || original_text FROM messages WHERE linq_id = '{}'",
            d["message_id"].as_str().unwrap()
        )),
        "hi (edited)|hi"
    );
    assert_eq!(m.sql(&format!("SELECT COUNT(*) FROM participants WHERE chat_id = '{group}' AND handle = '+15550004000' AND left_at IS NULL")), "1");
    assert_eq!(m.sql(&format!("SELECT COUNT(*) FROM participants WHERE chat_id = '{group}' AND handle = '{FRIEND}' AND left_at IS NOT NULL")), "1");
    assert_eq!(
        m.sql(&format!(
            "SELECT display_name FROM chats WHERE id = '{group}'"
        )),
        "Renamed"
    );
    assert_eq!(
        m.sql("SELECT COUNT(*) FROM events WHERE event_type = 'poll.voted'"),
        "1",
        "unknown event type not recorded"
    );
    assert_eq!(
        sim.sent(&dm).len(),
        1,
        "an event other than a new message got an answer"
    );
}

#[test]
fn out_of_order_and_duplicated_deliveries_are_answered_once_each() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();
    let d = sim.text(OWNER, None, "first");
    let dm = d["chat_id"].as_str().unwrap().to_owned();
    m.wait_for("the first answer", Duration::from_secs(30), || {
        (sim.sent(&dm).len() == 1).then_some(())
    });

    // Linq holds "second" and "third" back, each delivered twice, then sends them newest first.
    sim.post(
        "/control/faults",
        json!({"hold_deliveries": true, "duplicate_deliveries": true}),
    );
    sim.text(OWNER, Some(&dm), "second");
    sim.text(OWNER, Some(&dm), "third");
    settle(&m);
    assert_eq!(sim.sent(&dm).len(), 1, "answered before delivery");
    sim.post(
        "/control/faults",
        json!({"hold_deliveries": false, "duplicate_deliveries": false}),
    );
    let released = sim.post("/control/release", json!({"order": "reverse"}));
    // Each held event went out twice (also the echoes of the first reply, held meanwhile): the
    // second copy of every one is refused as a replay.
    let statuses: Vec<u64> = released["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert!(statuses.len() >= 4, "{released}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        statuses.len() / 2,
        "{released}"
    );

    m.wait_for("answers to both", Duration::from_secs(30), || {
        (sim.sent(&dm).len() >= 3).then_some(())
    });
    settle(&m);
    let sent = sim.sent(&dm);
    assert_eq!(
        sent.len(),
        3,
        "a duplicated delivery was answered twice: {sent:?}"
    );
    let texts: Vec<&str> = sent
        .iter()
        .map(|s| s["text"].as_str().unwrap_or_default())
        .collect();
    for w in ["\"second\"", "\"third\""] {
        assert_eq!(
            texts
                .iter()
                .filter(|t| t.starts_with(&format!("standin: you said {w}")))
                .count(),
            1,
            "{w}: {texts:?}"
        );
    }
    assert_eq!(
        m.sql(&format!(
            "SELECT COUNT(*) FROM turns WHERE chat_id = '{dm}'"
        )),
        "3"
    );
}
