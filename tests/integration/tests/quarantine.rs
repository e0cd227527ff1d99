//! SPEC C1, W1: nobody gets an agent unless the owner says so, from their own DM. A stranger's
//! chat creates no Unix user, starts no unit and gets no reply; the owner is told once (in a DM
//! picortex opens itself when there is none); `allow <n>` from the owner's DM answers the held
//! messages once; `block <n>` keeps everything from running. The same words sent in a group,
//! from another handle, or as an edit change nothing, and all of it survives a restart.

use std::time::Duration;

use picortex_integration::{chat_tag, json, Machine};

const OWNER: &str = "+15550002000";
const STRANGER: &str = "+15557770000";
const OTHER_STRANGER: &str = "+15557770001";
const FRIEND: &str = "+15550003000";
/// A member of the owner's group who is not one of the owner's handles.
const NEIGHBOUR: &str = "+15557770002";
const T: Duration = Duration::from_secs(40);

fn user_exists(m: &Machine, chat: &str) -> bool {
    m.sh(&format!("getent passwd chat-{}", chat_tag(chat))).code == 0
}

fn access(m: &Machine, chat: &str) -> String {
    m.sql(&format!("SELECT access FROM chats WHERE id = '{chat}'"))
}

/// Wait until the gate has decided on Linq message `linq_id`; its (verdict, rule).
fn decision(m: &Machine, linq_id: &str) -> (String, String) {
    let row = m.wait_for(&format!("a gate decision on {linq_id}"), T, || {
        let r = m.sql(&format!(
            "SELECT g.verdict || '|' || g.rule FROM gate_decisions g JOIN messages x ON x.id = g.message_id
             WHERE x.linq_id = '{linq_id}' ORDER BY g.id DESC LIMIT 1"
        ));
        (!r.is_empty()).then_some(r)
    });
    let (v, r) = row.split_once('|').expect("verdict|rule");
    (v.to_owned(), r.to_owned())
}

#[test]
fn a_stranger_waits_for_the_owners_word_from_the_owners_dm() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();

    // A stranger writes first; the owner has no chat with the bot yet.
    let s = sim.text(STRANGER, None, "hi, who is this? see https://example.com/x");
    let stranger_chat = s["chat_id"].as_str().unwrap().to_owned();
    let held_msg = s["message_id"].as_str().unwrap().to_owned();
    assert_eq!(
        decision(&m, &held_msg),
        ("held".into(), "quarantine".into())
    );

    // picortex opens the owner's DM itself (POST /v3/chats) with one notice.
    let owner_dm = m.wait_for("the owner's DM opened by picortex", T, || {
        let c = m.sql(&format!(
            "SELECT chat_id FROM outbox WHERE to_handle = '{OWNER}' AND status = 'sent'"
        ));
        (!c.is_empty()).then_some(c)
    });
    let opened = sim.calls("/v3/chats", "POST");
    assert_eq!(
        opened
            .iter()
            .filter(|c| c["path"].as_str().is_some_and(|p| p.ends_with("/v3/chats")))
            .count(),
        1,
        "{opened:?}"
    );
    let notice = m.wait_replies(&owner_dm, 1, T);
    let text = notice[0]["text"].as_str().unwrap();
    assert!(
        text.contains(STRANGER) && text.contains("allow 1") && text.contains("block 1"),
        "{text}"
    );
    assert!(
        !text.contains("https://"),
        "a link in the first message of a new chat: {text}"
    );

    // Nothing ran for the stranger.
    assert!(
        !user_exists(&m, &stranger_chat),
        "a quarantined chat got a Unix user"
    );
    assert!(sim.sent(&stranger_chat).is_empty());
    assert_eq!(access(&m, &stranger_chat), "pending");
    assert_eq!(
        m.sql_n(&format!(
            "SELECT COUNT(*) FROM turns WHERE chat_id = '{stranger_chat}' AND status = 'held'"
        )),
        1
    );
    assert!(
        !m.journal("_PID=1").contains("picortex-turn-"),
        "a turn unit ran while only a quarantined chat had written"
    );
    assert_eq!(
        m.sql_n("SELECT COUNT(*) FROM turns WHERE status != 'held'"),
        0,
        "a turn ran"
    );

    // The same words that are not an approval: in a group with the owner, from another handle,
    // and as an edit of the owner's DM message.
    let g = sim.post(
        "/control/inbound",
        json!({"from": OWNER, "group": true, "participants": [FRIEND], "text": "allow 1"}),
    );
    let group = g["chat_id"].as_str().unwrap().to_owned();
    assert_eq!(decision(&m, g["message_id"].as_str().unwrap()).0, "skip");
    let g2 = sim.text(OWNER, Some(&group), "/picortex allow 1");
    assert_eq!(
        decision(&m, g2["message_id"].as_str().unwrap()).0,
        "command"
    );
    let refused = m.wait_replies(&group, 1, T);
    assert!(
        refused[0]["text"]
            .as_str()
            .unwrap()
            .contains("only in your 1:1 chat"),
        "{refused:?}"
    );
    let o = sim.text(OTHER_STRANGER, None, "allow 1");
    assert_eq!(
        decision(&m, o["message_id"].as_str().unwrap()),
        ("held".into(), "quarantine".into())
    );
    m.wait_reply_containing(&owner_dm, "allow 2", T);
    let hello = sim.text(OWNER, Some(&owner_dm), "thanks for telling me");
    let hello_id = hello["message_id"].as_str().unwrap().to_owned();
    assert_eq!(decision(&m, &hello_id).0, "answer");
    m.wait_reply_containing(&owner_dm, "thanks for telling me", T);
    let handle = |h: &str, me: bool| json!({"id": "h", "handle": h, "is_me": me, "service": "iMessage", "status": "active", "joined_at": "2026-01-01T00:00:00Z", "left_at": null});
    let chat_ref = json!({"id": owner_dm, "is_group": false, "owner_handle": handle("+15550001000", true), "health_status": {"status": "HEALTHY", "doc_url": "x", "updated_at": "2026-11-22T00:00:00Z"}});
    let r = sim.post(
        "/control/event",
        json!({"event_type": "message.edited", "data": {"id": hello_id, "chat": chat_ref, "direction": "inbound", "sender_handle": handle(OWNER, false), "edited_at": "2026-11-22T00:00:03Z", "part": {"index": 0, "text": "allow 1"}}}),
    );
    assert_eq!(r["status"], 200, "{r}");
    m.wait_for("the edit in the log", T, || {
        (m.sql(&format!(
            "SELECT text FROM messages WHERE linq_id = '{hello_id}'"
        )) == "allow 1")
            .then_some(())
    });
    m.wait_settled(T);
    assert_eq!(
        access(&m, &stranger_chat),
        "pending",
        "an approval that was not one counted"
    );
    assert!(!user_exists(&m, &stranger_chat));
    assert!(sim.sent(&stranger_chat).is_empty());

    // A restart in the middle changes nothing.
    let before = m.gateway_invocation();
    m.ok("systemctl restart picortexd.service");
    m.wait_gateway_restarted(&before, T);
    assert_eq!(access(&m, &stranger_chat), "pending");

    // The owner allows it from their DM: the held message is answered, once, in its thread.
    let allow = sim.text(OWNER, Some(&owner_dm), "allow 1");
    assert_eq!(
        decision(&m, allow["message_id"].as_str().unwrap()).0,
        "command"
    );
    let answered = m.wait_replies(&stranger_chat, 1, T);
    assert_eq!(answered[0]["reply_to"].as_str(), Some(held_msg.as_str()));
    assert!(
        answered[0]["text"]
            .as_str()
            .unwrap()
            .contains("who is this?"),
        "{answered:?}"
    );
    let confirm = m.wait_reply_containing(&owner_dm, "Allowed", T);
    assert_eq!(
        confirm["reply_to"].as_str(),
        allow["message_id"].as_str(),
        "{confirm}"
    );
    assert!(user_exists(&m, &stranger_chat));
    m.wait_settled(T);
    assert_eq!(sim.sent(&stranger_chat).len(), 1, "answered more than once");
    assert_eq!(access(&m, &stranger_chat), "allowed");

    // The other stranger was told as number 2, while number 1 waited; block it.
    let other_chat = o["chat_id"].as_str().unwrap().to_owned();
    assert_eq!(
        m.sql(&format!(
            "SELECT pending_no FROM chats WHERE id = '{other_chat}'"
        )),
        "2",
        "the second waiting chat got its own number"
    );
    let block = sim.text(OWNER, Some(&owner_dm), "block 2");
    assert_eq!(
        decision(&m, block["message_id"].as_str().unwrap()).0,
        "command"
    );
    m.wait_for("the other stranger blocked", T, || {
        (access(&m, &other_chat) == "blocked").then_some(())
    });
    let later = sim.text(OTHER_STRANGER, Some(&other_chat), "hello? anyone?");
    assert_eq!(
        decision(&m, later["message_id"].as_str().unwrap()),
        ("skip".into(), "blocked".into())
    );
    m.wait_settled(T);
    assert!(
        sim.sent(&other_chat).is_empty(),
        "a blocked chat was answered"
    );
    assert!(
        !user_exists(&m, &other_chat),
        "a blocked chat got a Unix user"
    );
    assert_eq!(
        m.sql_n(&format!(
            "SELECT COUNT(*) FROM messages WHERE chat_id = '{other_chat}'"
        )),
        2,
        "a blocked chat's messages stay in the log"
    );
    // And the owner can change their mind.
    sim.text(OWNER, Some(&owner_dm), "allow 2");
    m.wait_for("the blocked chat allowed again", T, || {
        (access(&m, &other_chat) == "allowed").then_some(())
    });
    sim.text(OTHER_STRANGER, Some(&other_chat), "now?");
    m.wait_replies(&other_chat, 1, T);
}

#[test]
fn groups_need_the_owner_in_them() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();
    // The owner's DM exists: notices go there.
    let mut dm = None;
    m.exchange(OWNER, &mut dm, "hello");
    let dm = dm.unwrap();

    // A group of strangers waits; its notice names the group and its people once they are known.
    let g = sim.post(
        "/control/inbound",
        json!({"from": STRANGER, "group": true, "participants": [OTHER_STRANGER], "display_name": "Poker night", "text": "@bot deal me in", "mentions_me": true}),
    );
    let group = g["chat_id"].as_str().unwrap().to_owned();
    let notice = m.wait_reply_containing(&dm, "allow 1", T);
    let text = notice["text"].as_str().unwrap();
    assert!(
        text.contains("Poker night") && text.contains(OTHER_STRANGER),
        "{text}"
    );
    assert_eq!(access(&m, &group), "pending");
    assert!(!user_exists(&m, &group));

    // A group the owner is in is allowed, even when a friend writes first: its members are read
    // from Linq before anything is decided.
    let f = sim.post(
        "/control/inbound",
        json!({"from": NEIGHBOUR, "group": true, "participants": [OWNER], "text": "@bot hi", "mentions_me": true}),
    );
    let family = f["chat_id"].as_str().unwrap().to_owned();
    m.wait_replies(&family, 1, T);
    assert_eq!(access(&m, &family), "allowed");
    m.wait_settled(T);
    assert_eq!(
        sim.sent(&dm).len(),
        2,
        "the owner was told about a group they are in"
    );
    assert!(sim.sent(&group).is_empty());
}
