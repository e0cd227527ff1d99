//! SPEC A1–A5, W1 in a group the owner is in: mentions-only by default, each attention mode as
//! specified (the discriminator through a real sandboxed turn of the stand-in agent, scoring
//! above and below the threshold, failing closed, capped per hour), every decision in the log
//! with its reason, the group's thread in a mentioned turn's prompt with the senders marked and
//! bounded, and the owner's commands — which from another member are ordinary text.

use std::time::Duration;

use picortex_integration::{json, Machine};

const OWNER: &str = "+15550002000";
/// A member of the owner's group who is not one of the owner's handles.
const NEIGHBOUR: &str = "+15557770002";
const T: Duration = Duration::from_secs(40);

/// Wait for the last gate decision on Linq message `linq_id` that has verdict in `final_verdicts`;
/// its (verdict, rule, score).
fn decided(m: &Machine, linq_id: &str, final_verdicts: &[&str]) -> (String, String, String) {
    let list = final_verdicts
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(",");
    let row = m.wait_for(&format!("a decision on {linq_id} in {list}"), T, || {
        let r = m.sql(&format!(
            "SELECT g.verdict || '|' || g.rule || '|' || COALESCE(g.score, '') FROM gate_decisions g
             JOIN messages x ON x.id = g.message_id
             WHERE x.linq_id = '{linq_id}' AND g.verdict IN ({list}) ORDER BY g.id DESC LIMIT 1"
        ));
        (!r.is_empty()).then_some(r)
    });
    let mut it = row.splitn(3, '|').map(str::to_owned);
    (
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
    )
}

#[test]
fn a_groups_modes_context_and_the_owners_commands() {
    let m = Machine::boot();
    m.configure(
        "attention",
        "max_unsolicited_per_hour = 1\ncontext_messages = 3",
    );
    m.start_picortex();
    let sim = m.sim();
    let say = |from: &str, group: &str, text: &str| -> String {
        sim.text(from, Some(group), text)["message_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mention = |from: &str, group: &str, text: &str| -> String {
        sim.post(
            "/control/inbound",
            json!({"from": from, "chat_id": group, "text": text, "mentions_me": true}),
        )["message_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // mentions-only by default: talk is kept as context, a mention is answered with the thread.
    let g = sim.post(
        "/control/inbound",
        json!({"from": OWNER, "group": true, "participants": [NEIGHBOUR], "display_name": "Team", "text": "lunch anyone?"}),
    );
    let group = g["chat_id"].as_str().unwrap().to_owned();
    let first = g["message_id"].as_str().unwrap().to_owned();
    assert_eq!(decided(&m, &first, &["skip"]).1, "not_addressed");
    let ids = [
        say(NEIGHBOUR, &group, "what time works?"),
        say(NEIGHBOUR, &group, "noon is good"),
        say(OWNER, &group, "noon it is"),
    ];
    for id in &ids {
        decided(&m, id, &["skip"]);
    }
    let asked = mention(NEIGHBOUR, &group, "@bot summarize this thread");
    assert_eq!(decided(&m, &asked, &["answer"]).1, "mention");
    let reply = m.wait_reply_containing(&group, "summarize this thread", T);
    let text = reply["text"].as_str().unwrap();
    assert!(
        text.contains("[+15557770002 (not the owner)]: what time works?"),
        "{text}"
    );
    assert!(
        text.contains("[the owner (+15550002000)]: noon it is"),
        "{text}"
    );
    assert!(text.contains("from +15557770002 (not the owner)"), "{text}");
    assert!(
        !text.contains("lunch anyone?"),
        "context not bounded to 3 messages: {text}"
    );
    assert!(text.contains("(older ones left out)"), "{text}");

    // A member's command is ordinary text; the owner's is obeyed.
    let not_cmd = say(NEIGHBOUR, &group, "/picortex attention always");
    assert_eq!(decided(&m, &not_cmd, &["skip"]).1, "not_addressed");
    assert_eq!(
        m.sql(&format!(
            "SELECT COALESCE(attention, 'default') FROM chats WHERE id = '{group}'"
        )),
        "default"
    );
    say(OWNER, &group, "/picortex attention discriminate");
    m.wait_reply_containing(&group, "Attention for this chat is now discriminate", T);
    assert_eq!(
        m.sql(&format!("SELECT attention FROM chats WHERE id = '{group}'")),
        "discriminate"
    );

    // discriminate: the stand-in discriminator answers with no score, above, below the
    // threshold, then the cap. (The stand-in reads its knobs from the whole prompt, thread
    // included: the order keeps each message's own knob the one that counts.)
    let garbled = say(NEIGHBOUR, &group, "no score from this one");
    assert_eq!(
        decided(&m, &garbled, &["answer", "skip"]).1,
        "discriminator_failed_closed"
    );
    let yes = say(NEIGHBOUR, &group, "is anyone free tonight? #score=0.9");
    let (v, rule, score) = decided(&m, &yes, &["answer", "skip"]);
    assert_eq!(
        (v.as_str(), rule.as_str(), score.as_str()),
        ("answer", "score", "0.9")
    );
    m.wait_reply_containing(&group, "is anyone free tonight?", T);
    let low = say(NEIGHBOUR, &group, "haha #score=0.2");
    let (v, rule, score) = decided(&m, &low, &["answer", "skip"]);
    assert_eq!(
        (v.as_str(), rule.as_str(), score.as_str()),
        ("skip", "score", "0.2")
    );
    let capped = say(NEIGHBOUR, &group, "and again? #score=0.95");
    assert_eq!(decided(&m, &capped, &["answer", "skip"]).1, "hourly_cap");
    // Each asked the discriminator first, through a real turn in the chat's unit.
    assert_eq!(
        m.sql_n(&format!(
            "SELECT COUNT(*) FROM gate_decisions WHERE chat_id = '{group}' AND verdict = 'discriminate'"
        )),
        4
    );
    let seeded = m.ok(&format!(
        "cat /var/lib/picortex/chats/{}/.picortex/prompts/discriminator.md",
        picortex_integration::chat_tag(&group)
    ));
    assert!(seeded.contains("\"score\""), "{seeded}");

    // discriminate-quiet: a message it stays quiet on gets no read receipt.
    say(OWNER, &group, "/picortex attention discriminate-quiet");
    m.wait_reply_containing(&group, "now discriminate-quiet", T);
    let reads = || sim.calls(&format!("/v3/chats/{group}/read"), "POST").len();
    let before = reads();
    let quiet = say(NEIGHBOUR, &group, "just chatting #score=0.1");
    assert_eq!(decided(&m, &quiet, &["answer", "skip"]).1, "score");
    let ping = mention(NEIGHBOUR, &group, "@bot ping");
    decided(&m, &ping, &["answer"]);
    m.wait_reply_containing(&group, "@bot ping", T);
    assert_eq!(
        reads() - before,
        1,
        "only the answered message was marked read"
    );

    // silent: nothing is answered, the owner's commands still are.
    say(OWNER, &group, "/picortex attention silent");
    m.wait_reply_containing(&group, "now silent", T);
    let hushed = mention(NEIGHBOUR, &group, "@bot are you there?");
    assert_eq!(decided(&m, &hushed, &["skip"]).1, "silent");
    say(OWNER, &group, "/picortex status");
    let status = m.wait_reply_containing(&group, "attention: silent", T);
    assert!(
        status["text"]
            .as_str()
            .unwrap()
            .contains("recent decisions"),
        "{status}"
    );

    // The other commands.
    let sid = m.sql(&format!(
        "SELECT session_id FROM chats WHERE id = '{group}'"
    ));
    say(OWNER, &group, "/picortex new");
    m.wait_reply_containing(&group, "Fresh start", T);
    assert_ne!(
        m.sql(&format!(
            "SELECT session_id FROM chats WHERE id = '{group}'"
        )),
        sid
    );
    say(OWNER, &group, "/picortex budget 2.5");
    m.wait_reply_containing(&group, "daily budget is now $2.50", T);
    assert_eq!(
        m.sql(&format!(
            "SELECT daily_budget_usd FROM chats WHERE id = '{group}'"
        )),
        "2.5"
    );
    say(OWNER, &group, "/picortex budget lots");
    m.wait_reply_containing(&group, "is not an amount", T);
    say(OWNER, &group, "/picortex help");
    m.wait_reply_containing(&group, "/picortex attention <mode>", T);
    assert_eq!(
        m.sql(&format!("SELECT attention FROM chats WHERE id = '{group}'")),
        "silent"
    );
}
