//! SPEC C2, W1 (issue #11, done-when 1, 2, 4, 5): a group member asks something that needs a
//! file of the owner's workspace. The stand-in agent really calls picortex-run's MCP server
//! (`#ask=<path>`), the turn's result carries the request, the group gets one acknowledgement and
//! the owner's DM the challenge. `yes` from the owner's DM re-runs the question once with the file
//! bound read-only into that one turn; the next turn cannot see it. `no`, the TTL, a `yes` in the
//! group, a `yes` from another handle and a second `yes` share nothing; a restart between the
//! challenge and the answer loses nothing; `always` applies to later turns until revoked.

use std::time::Duration;

use picortex_integration::{chat_tag, json, Machine};

const OWNER: &str = "+15550002000";
const FRIEND: &str = "+15557770002";
const STRANGER: &str = "+15557770009";
const T: Duration = Duration::from_secs(60);
const SECRET: &str = "SECRET-plan-7f3a9c";
const FILE: &str = "notes/plan.txt";
const MOUNT: &str = "/var/lib/picortex/shared/0";
const ACK: &str = "Let me check with the owner";

/// The owner's DM (provisioned by one exchange) with `FILE` in its home, the owner's alone.
fn owner_workspace(m: &Machine) -> String {
    let mut dm = None;
    m.exchange(OWNER, &mut dm, "hello");
    let dm = dm.unwrap();
    let tag = chat_tag(&dm);
    m.ok(&format!(
        "set -e; h=/var/lib/picortex/chats/{tag}; install -d -o chat-{tag} -g chat-{tag} -m 0700 $h/notes; \
         printf '{SECRET}\\n' | install -o chat-{tag} -g chat-{tag} -m 0600 /dev/stdin $h/{FILE}"
    ));
    dm
}

/// A group with the owner and a friend, where the friend talks to the bot by mentioning it.
fn group(m: &Machine) -> String {
    let g = m.sim().post(
        "/control/inbound",
        json!({"from": OWNER, "group": true, "participants": [FRIEND], "display_name": "Trip", "text": "hi all"}),
    );
    let group = g["chat_id"].as_str().unwrap().to_owned();
    m.wait_chat_settled(&group, T);
    group
}

fn ask(m: &Machine, group: &str, text: &str) -> String {
    let r = m.sim().post(
        "/control/inbound",
        json!({"from": FRIEND, "chat_id": group, "text": text, "mentions_me": true}),
    );
    r["message_id"].as_str().unwrap().to_owned()
}

/// Wait for the pending disclosure asked by message `linq_id`; its (id, number).
fn pending(m: &Machine, linq_id: &str) -> (i64, i64) {
    let row = m.wait_for(&format!("a disclosure for {linq_id}"), T, || {
        let r = m.sql(&format!(
            "SELECT d.id || '|' || d.number FROM disclosures d JOIN messages x ON x.id = d.message_id
             WHERE x.linq_id = '{linq_id}' AND d.status = 'pending'"
        ));
        (!r.is_empty()).then_some(r)
    });
    let (a, b) = row.split_once('|').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

fn status(m: &Machine, id: i64) -> String {
    m.sql(&format!("SELECT status FROM disclosures WHERE id = {id}"))
}

fn texts(m: &Machine, chat: &str) -> Vec<String> {
    m.sim()
        .sent(chat)
        .iter()
        .map(|x| x["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn owner_says(m: &Machine, dm: &str, text: &str) {
    m.sim().text(OWNER, Some(dm), text);
}

fn steps(m: &Machine, id: i64) -> String {
    m.sql(&format!(
        "SELECT group_concat(step, ',') FROM (SELECT step FROM consent_events WHERE disclosure_id = {id} ORDER BY id)"
    ))
}

#[test]
fn yes_from_the_owners_dm_grants_one_turn_and_nothing_else_does() {
    let m = Machine::boot();
    m.start_picortex();
    let dm = owner_workspace(&m);
    let group = group(&m);

    // 1. The friend asks; the agent asks the owner through the MCP tool.
    let q = ask(&m, &group, &format!("when do we leave? #ask={FILE}"));
    let (id, n) = pending(&m, &q);
    m.wait_reply_containing(&group, ACK, T);
    let challenge = m.wait_reply_containing(&dm, &format!("yes {n}"), T);
    let c = challenge["text"].as_str().unwrap();
    for want in [
        FRIEND,
        "when do we leave?",
        FILE,
        "Trip",
        &format!("no {n}"),
    ] {
        assert!(c.contains(want), "{want} missing from the challenge: {c}");
    }
    m.wait_settled(T);
    let g = texts(&m, &group);
    assert!(!g.iter().any(|t| t.contains(SECRET)), "{g:?}");
    assert_eq!(
        g.iter().filter(|t| t.contains(ACK)).count(),
        1,
        "one acknowledgement: {g:?}"
    );
    assert_eq!(steps(&m, id), "requested,asked,acknowledged");
    // The request left the turn in its result, as the agent made it.
    assert_eq!(
        m.sql(&format!(
            "SELECT kind || ':' || path || ':' || (source_chat = '{dm}') FROM disclosures WHERE id = {id}"
        )),
        format!("read:{FILE}:1")
    );

    // Not approvals: `yes` in the group (from the owner), `yes` from another handle.
    let before = m.sql_n("SELECT COUNT(*) FROM turns WHERE disclosure_id IS NOT NULL");
    m.sim().post(
        "/control/inbound",
        json!({"from": OWNER, "chat_id": group, "text": format!("yes {n}")}),
    );
    m.sim().text(STRANGER, None, &format!("yes {n}"));
    m.sim().post(
        "/control/inbound",
        json!({"from": FRIEND, "chat_id": group, "text": format!("yes {n}"), "mentions_me": true}),
    );
    m.wait_settled(T);
    assert_eq!(status(&m, id), "pending");
    assert_eq!(
        m.sql_n("SELECT COUNT(*) FROM turns WHERE disclosure_id IS NOT NULL"),
        before
    );
    assert!(!texts(&m, &group).iter().any(|t| t.contains(SECRET)));

    // 4. A restart between the challenge and the answer loses nothing.
    let before = m.gateway_invocation();
    m.ok("systemctl restart picortexd.service");
    m.wait_gateway_restarted(&before, T);

    // 1. The owner's yes: one re-run turn reads the file through its bind mount.
    owner_says(&m, &dm, &format!("yes {n}"));
    let answer = m.wait_reply_containing(&group, SECRET, T);
    let a = answer["text"].as_str().unwrap();
    assert!(a.contains(&format!("ask: granted, cat {MOUNT}")), "{a}");
    m.wait_settled(T);
    assert_eq!(status(&m, id), "consumed");
    let granted = m.sql(&format!(
        "SELECT group_concat(id) FROM turns WHERE disclosure_id = {id}"
    ));
    assert_eq!(
        m.sql(&format!(
            "SELECT grant_turn_id FROM disclosures WHERE id = {id}"
        )),
        granted,
        "consumed by its one re-run turn"
    );
    assert_eq!(
        steps(&m, id),
        "requested,asked,acknowledged,approved,consumed"
    );
    assert!(
        m.journal(&format!("-u picortex-provision PICORTEX_TURN={granted}"))
            .contains("grants"),
        "the helper's audit names the grant"
    );
    assert_eq!(
        m.sql(&format!(
            "SELECT approver || '|' || (approval_message IS NOT NULL) FROM disclosures WHERE id = {id}"
        )),
        format!("{OWNER}|1")
    );
    // The copy the turn read is gone with the turn.
    assert_eq!(
        m.sh(&format!(
            "test -e /var/lib/picortex/chats/.picortex-grants/{granted}"
        ))
        .code,
        1
    );

    // ... and the next turn of the group cannot read it any more.
    ask(&m, &group, &format!("and now? #cat={MOUNT}"));
    m.wait_reply_containing(&group, "and now?", T);
    m.wait_settled(T);
    let last = texts(&m, &group);
    let reply = last.iter().rev().find(|t| t.contains("and now?")).unwrap();
    assert!(reply.contains(&format!("cat {MOUNT}: error")), "{reply}");
    assert!(!reply.contains(SECRET), "{reply}");

    // 2. A second yes to a consumed request shares nothing more.
    let group_turns = m.sql_n(&format!(
        "SELECT COUNT(*) FROM turns WHERE chat_id = '{group}'"
    ));
    owner_says(&m, &dm, &format!("yes {n}"));
    m.wait_reply_containing(&dm, "not waiting any more", T);
    m.wait_settled(T);
    assert_eq!(
        m.sql_n(&format!(
            "SELECT COUNT(*) FROM turns WHERE chat_id = '{group}'"
        )),
        group_turns,
        "no new turn for the group"
    );
    assert_eq!(
        m.sql_n(&format!(
            "SELECT COUNT(*) FROM turns WHERE disclosure_id = {id}"
        )),
        1
    );
    assert_eq!(status(&m, id), "consumed");

    // 2. `no`: the group is told politely, the file stays unread.
    let q2 = ask(&m, &group, &format!("and the budget? #ask={FILE}"));
    let (id2, n2) = pending(&m, &q2);
    m.wait_reply_containing(&dm, &format!("yes {n2}"), T);
    owner_says(&m, &dm, &format!("no {n2}"));
    m.wait_reply_containing(&group, "rather not share", T);
    m.wait_settled(T);
    assert_eq!(status(&m, id2), "denied");
    assert_eq!(
        m.sql_n(&format!(
            "SELECT COUNT(*) FROM turns WHERE disclosure_id = {id2}"
        )),
        0
    );
    let g = texts(&m, &group);
    assert_eq!(
        g.iter().filter(|t| t.contains(SECRET)).count(),
        1,
        "only the approved answer carried the file: {g:?}"
    );
}

#[test]
fn the_ttl_says_no_and_always_stands_until_revoked() {
    let m = Machine::boot();
    m.set_config("consent", "ttl_s", "6");
    m.start_picortex();
    let dm = owner_workspace(&m);
    let group = group(&m);

    // 2. Nobody answers: after the TTL the group hears no, and a late yes changes nothing.
    let q = ask(&m, &group, &format!("what's the plan? #ask={FILE}"));
    let (id, n) = pending(&m, &q);
    m.wait_reply_containing(&group, "in time", T);
    assert_eq!(status(&m, id), "expired");
    owner_says(&m, &dm, &format!("yes {n}"));
    m.wait_reply_containing(&dm, "not waiting any more", T);
    m.wait_settled(T);
    assert_eq!(status(&m, id), "expired");
    assert_eq!(
        m.sql_n(&format!(
            "SELECT COUNT(*) FROM turns WHERE disclosure_id = {id}"
        )),
        0
    );
    assert!(!texts(&m, &group).iter().any(|t| t.contains(SECRET)));

    // 5. `always`: this answer and every later turn of the group see the file, until revoked.
    let q2 = ask(&m, &group, &format!("the plan please #ask={FILE}"));
    let (id2, n2) = pending(&m, &q2);
    owner_says(&m, &dm, &format!("always {n2}"));
    m.wait_reply_containing(&group, SECRET, T);
    m.wait_settled(T);
    assert_eq!(status(&m, id2), "consumed");
    let grant = m.sql(&format!(
        "SELECT id FROM standing_grants WHERE disclosure_id = {id2} AND revoked_at IS NULL"
    ));
    assert!(!grant.is_empty());
    ask(&m, &group, &format!("again? #cat={MOUNT}"));
    let again = m.wait_reply_containing(&group, "again?", T);
    assert!(again["text"].as_str().unwrap().contains(SECRET), "{again}");
    m.wait_settled(T);
    // The manifest is in /picortex status, and the owner revokes it there.
    m.sim().post(
        "/control/inbound",
        json!({"from": OWNER, "chat_id": group, "text": "/picortex status"}),
    );
    m.wait_reply_containing(&group, &format!("grant {grant}: read \"{FILE}\""), T);
    m.sim().post(
        "/control/inbound",
        json!({"from": OWNER, "chat_id": group, "text": format!("/picortex revoke {grant}")}),
    );
    m.wait_reply_containing(&group, &format!("Revoked standing grant {grant}"), T);
    m.wait_settled(T);
    ask(&m, &group, &format!("still? #cat={MOUNT}"));
    let after = m.wait_reply_containing(&group, "still?", T);
    let t = after["text"].as_str().unwrap();
    assert!(t.contains(&format!("cat {MOUNT}: error")), "{t}");
    assert!(!t.contains(SECRET), "{t}");
}

/// Issue #9 (O3): the operator sees the waiting requests and answers them with picortexctl
/// (org.picortex.Gateway1's ListRequests / AnswerRequest), with the same effect as the owner's
/// `yes N` / `no N`, recorded with the operator's uid as the approver; a bad answer is refused.
#[test]
fn an_administrator_answers_requests_with_picortexctl() {
    let m = Machine::boot();
    m.start_picortex();
    let dm = owner_workspace(&m);
    let group = group(&m);

    let q = ask(&m, &group, &format!("can you check? #ask={FILE}"));
    let (id, n) = pending(&m, &q);
    let listed = m.ok("picortexctl --json requests");
    let v: serde_json::Value = serde_json::from_str(&listed).expect(&listed);
    let row = v
        .as_array()
        .and_then(|a| a.iter().find(|r| r["number"] == json!(n)))
        .unwrap_or_else(|| panic!("request {n} not listed: {listed}"));
    assert_eq!(row["chat"], json!(group), "{row}");
    assert_eq!(row["path"], json!(FILE), "{row}");
    assert_eq!(row["kind"], json!("read"), "{row}");
    assert_eq!(row["asked_by"], json!(FRIEND), "{row}");

    // A bad answer changes nothing; exit 2 names the choices.
    let bad = m.sh(&format!("busctl call org.picortex.Gateway1 /org/picortex/Gateway1 org.picortex.Gateway1 AnswerRequest xs {n} maybe"));
    assert_ne!(bad.code, 0, "{}", bad.stdout);
    assert!(bad.stderr.contains("yes, no, always"), "{}", bad.stderr);
    assert_eq!(status(&m, id), "pending");

    m.ok(&format!("picortexctl approve {n}"));
    m.wait_reply_containing(&group, SECRET, T);
    m.wait_settled(T);
    assert_eq!(status(&m, id), "consumed");
    assert_eq!(
        m.sql(&format!("SELECT approver FROM disclosures WHERE id = {id}")),
        "uid 0"
    );
    assert!(m
        .ok("picortexctl requests")
        .contains("No request is waiting"));

    // deny: the chat is told, nothing is shared.
    let before = texts(&m, &group).len();
    let q2 = ask(&m, &group, &format!("and the budget? #ask={FILE}"));
    let (id2, n2) = pending(&m, &q2);
    m.ok(&format!("picortexctl deny {n2}"));
    m.wait_settled(T);
    assert_eq!(status(&m, id2), "denied");
    let after = texts(&m, &group);
    assert!(
        !after[before..].iter().any(|t| t.contains(SECRET)),
        "{after:?}"
    );
    let _ = dm;
}
