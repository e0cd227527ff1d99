//! Issue 9, done-when 1: `org.picortex.Gateway1` and `picortexctl`. Every manage method, from
//! `picortexctl` as root and from `busctl` as a member of the picortex-admin group, changes what
//! the gateway does (a group set to `always` answers without a mention, `memory=512M` is the
//! slice's MemoryMax on the next turn, the permission mode is on the agent's command line, a
//! zero budget stops turns, a new session starts at turn 1, allow/block answer the quarantine,
//! archive/remove go through the helper and the log); a bad value is refused with a message
//! naming the key and the valid range and changes nothing; `nobody` is refused by polkit, and
//! the refusal is in the journal. The interface explains itself, and comes back after the bus
//! daemon restarts.

use std::time::Duration;

use picortex_integration::{chat_tag, json, Machine, Out};

const OWNER: &str = "+15550002000";
const NEIGHBOUR: &str = "+15557770002";
const STRANGER: &str = "+15557770020";
const STRANGER2: &str = "+15557770021";
/// A user of the machine in the picortex-admin group (50-picortex.rules lets it through).
const ADMIN: &str = "opsbot";
const T: Duration = Duration::from_secs(40);
const DEST: &str = "org.picortex.Gateway1 /org/picortex/Gateway1 org.picortex.Gateway1";

fn ctl(m: &Machine, args: &str) -> Out {
    m.sh(&format!("picortexctl {args}"))
}

fn ctl_ok(m: &Machine, args: &str) -> String {
    let o = ctl(m, args);
    assert_eq!(
        o.code, 0,
        "picortexctl {args} failed ({}): {}{}",
        o.code, o.stdout, o.stderr
    );
    o.stdout
}

/// `busctl call` of a Gateway1 method as `user`.
fn busctl_as(m: &Machine, user: &str, method: &str, args: &str) -> Out {
    m.sh(&format!(
        "runuser -u {user} -- busctl call {DEST} {method} {args}"
    ))
}

fn admin_ok(m: &Machine, method: &str, args: &str) -> String {
    let o = busctl_as(m, ADMIN, method, args);
    assert_eq!(
        o.code, 0,
        "busctl {method} {args} as {ADMIN} failed: {}{}",
        o.stdout, o.stderr
    );
    o.stdout
}

/// The last gate decision on Linq message `linq_id` with a verdict in `verdicts`: (verdict, rule).
fn decided(m: &Machine, linq_id: &str, verdicts: &[&str]) -> (String, String) {
    let list = verdicts
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(",");
    let row = m.wait_for(&format!("a decision on {linq_id} in {list}"), T, || {
        let r = m.sql(&format!(
            "SELECT g.verdict || '|' || g.rule FROM gate_decisions g JOIN messages x ON x.id = g.message_id
             WHERE x.linq_id = '{linq_id}' AND g.verdict IN ({list}) ORDER BY g.id DESC LIMIT 1"
        ));
        (!r.is_empty()).then_some(r)
    });
    let (v, r) = row.split_once('|').unwrap();
    (v.to_owned(), r.to_owned())
}

/// The outcome of the answer turn of Linq message `linq_id`, once it is done.
fn outcome(m: &Machine, linq_id: &str) -> String {
    m.wait_for(&format!("the turn of {linq_id} done"), T, || {
        let r = m.sql(&format!(
            "SELECT t.outcome FROM turns t JOIN messages x ON x.id = t.message_id
             WHERE x.linq_id = '{linq_id}' AND t.kind = 'answer' AND t.status = 'done'"
        ));
        (!r.is_empty()).then_some(r)
    })
}

fn memory_max(m: &Machine, chat: &str) -> String {
    m.ok(&format!(
        "systemctl show -P MemoryMax picortex-chat-{}.slice",
        chat_tag(chat)
    ))
    .trim()
    .to_owned()
}

fn chat_json(m: &Machine, chat: &str) -> serde_json::Value {
    let out = ctl_ok(m, &format!("--json chat '{chat}'"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn every_manage_method_changes_behaviour_and_only_for_the_allowed() {
    let m = Machine::boot();
    m.start_picortex();
    m.ok(&format!(
        "getent group picortex-admin && useradd -M -N -G picortex-admin -s /usr/sbin/nologin {ADMIN}"
    ));
    // Gateway1's signals, as a listener on the bus sees them.
    m.ok(
        "systemd-run --unit=gw1-signals -p StandardOutput=file:/run/gw1-signals.log \
         busctl monitor --match \"type='signal',interface='org.picortex.Gateway1'\"",
    );
    let sim = m.sim();
    let say = |from: &str, chat: &str, text: &str| -> String {
        sim.text(from, Some(chat), text)["message_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mention = |chat: &str, text: &str| -> String {
        sim.post(
            "/control/inbound",
            json!({"from": NEIGHBOUR, "chat_id": chat, "text": text, "mentions_me": true}),
        )["message_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // The owner's group: mentions-only by default.
    let g = sim.post(
        "/control/inbound",
        json!({"from": OWNER, "group": true, "participants": [NEIGHBOUR], "display_name": "Ops", "text": "hello all"}),
    );
    let group = g["chat_id"].as_str().unwrap().to_owned();
    let first = g["message_id"].as_str().unwrap();
    assert_eq!(decided(&m, first, &["skip"]).1, "not_addressed");

    // The interface explains itself: named arguments and the documentation of each method.
    let xml =
        m.ok("busctl introspect --xml-interface org.picortex.Gateway1 /org/picortex/Gateway1");
    for needle in [
        r#"<method name="SetMemoryMax">"#,
        r#"<arg name="memory_max" type="s" direction="in"/>"#,
        r#"<arg name="decisions" type="aa{sv}" direction="out"/>"#,
        r#"<signal name="TurnFinished">"#,
        "between 32M and 64G",
    ] {
        assert!(xml.contains(needle), "introspection lacks {needle}:\n{xml}");
    }

    // --- picortexctl as root -------------------------------------------------------------
    // attention=always: the group answers without a mention.
    let r = ctl_ok(&m, &format!("set '{group}' attention=always"));
    assert!(r.contains("now always"), "{r}");
    let plain = say(NEIGHBOUR, &group, "plain words without a mention");
    assert_eq!(decided(&m, &plain, &["answer", "skip"]).1, "always");
    m.wait_reply_containing(&group, "plain words without a mention", T);

    // memory, permission and budget at once; the next turn runs with them, although the
    // chat's spare unit (waited for here) was started under the old memory limit.
    m.wait_spare(Some(&chat_tag(&group)), T);
    ctl_ok(
        &m,
        &format!("set '{group}' memory=512M permission=plan budget=5"),
    );
    let argv = say(NEIGHBOUR, &group, "#argv #sleep=2 first limits");
    // Read while the turn runs: after it, the chat's next spare sets the new limit anyway.
    let unit = m.wait_for(&format!("the turn of {argv} running"), T, || {
        let r = m.sql(&format!(
            "SELECT t.unit FROM turns t JOIN messages x ON x.id = t.message_id
             WHERE x.linq_id = '{argv}' AND t.kind = 'answer' AND t.status = 'running'"
        ));
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(
        memory_max(&m, &group),
        (512u64 << 20).to_string(),
        "the turn runs in {unit} under the old limit"
    );
    let reply = m.wait_reply_containing(&group, "first limits", T);
    assert_eq!(outcome(&m, &argv), "ok");
    let text = reply["text"].as_str().unwrap();
    assert!(text.contains("--permission-mode plan"), "{text}");
    let c = chat_json(&m, &group);
    assert_eq!(c["chat"]["daily_budget_usd"], 5.0, "{c}");
    assert_eq!(c["chat"]["daily_budget_own"], true, "{c}");
    assert_eq!(c["chat"]["attention"], "always", "{c}");
    assert_eq!(c["chat"]["memory_max"], 512u64 << 20, "{c}");
    // why: the gate's decision, the turn, its outcome and the reply, for one message.
    let why = ctl_ok(&m, &format!("why '{argv}'"));
    assert!(
        why.contains("always")
            && why.contains("answer")
            && why.contains("ok")
            && why.contains("first limits"),
        "{why}"
    );
    let why: serde_json::Value =
        serde_json::from_str(&ctl_ok(&m, &format!("--json why '{argv}'"))).unwrap();
    assert_eq!(why["decisions"][0]["rule"], "always", "{why}");
    assert_eq!(why["turns"][0]["outcome"], "ok", "{why}");
    assert!(
        why["replies"][0]
            .as_str()
            .unwrap()
            .contains("--permission-mode plan"),
        "{why}"
    );
    assert_eq!(ctl(&m, "why no-such-message").code, 3);
    let cost: serde_json::Value =
        serde_json::from_str(&ctl_ok(&m, "--json cost --since all")).unwrap();
    assert_eq!(cost["chats"][0]["chat"], group.as_str(), "{cost}");
    assert!(cost["chats"][0]["turns"].as_i64().unwrap() >= 2, "{cost}");
    let logs = ctl_ok(&m, &format!("logs '{group}' --no-pager -o cat"));
    assert!(logs.contains("administrator (uid 0)"), "{logs}");
    let human = ctl_ok(&m, "chats");
    assert!(
        human.contains(&group) && human.contains("512M*") && human.contains("always*"),
        "{human}"
    );

    // A bad value is refused, naming the key and the valid range, and changes nothing.
    for (args, key, range) in [
        ("memory=lots", "memory", "between 32M and 64G"),
        ("memory=16M", "memory", "between 32M and 64G"),
        ("budget=-1", "budget", "between 0 and 10000"),
        ("attention=loud", "attention", "mentions-only"),
        ("permission=yolo", "permission", "bypassPermissions"),
    ] {
        let o = ctl(&m, &format!("set '{group}' {args}"));
        assert_eq!(o.code, 2, "{args}: {}{}", o.stdout, o.stderr);
        assert!(
            o.stderr.contains(key) && o.stderr.contains(range),
            "{args}: {}",
            o.stderr
        );
    }
    let o = ctl(&m, "set no-such-chat memory=1G");
    assert_eq!(o.code, 3, "{}", o.stderr);

    // --- busctl as the allowed admin -----------------------------------------------------
    let r = admin_ok(&m, "SetAttention", &format!("ss '{group}' mentions-only"));
    assert!(r.contains("mentions-only"), "{r}");
    let quiet = say(NEIGHBOUR, &group, "this one stays unanswered");
    assert_eq!(decided(&m, &quiet, &["answer", "skip"]).1, "not_addressed");
    admin_ok(&m, "SetMemoryMax", &format!("ss '{group}' 384M"));
    admin_ok(
        &m,
        "SetPermissionMode",
        &format!("ss '{group}' acceptEdits"),
    );
    let asked = mention(&group, "@bot #argv second limits");
    let reply = m.wait_reply_containing(&group, "second limits", T);
    assert_eq!(outcome(&m, &asked), "ok");
    assert!(
        reply["text"]
            .as_str()
            .unwrap()
            .contains("--permission-mode acceptEdits"),
        "{reply}"
    );
    assert_eq!(memory_max(&m, &group), (384u64 << 20).to_string());
    for (method, value, key, range) in [
        ("SetAttention", "loud", "attention", "discriminate-quiet"),
        ("SetMemoryMax", "65G", "memory", "between 32M and 64G"),
        ("SetBudget", "lots", "budget", "between 0 and 10000"),
        (
            "SetPermissionMode",
            "yolo",
            "permission",
            "bypassPermissions",
        ),
    ] {
        let o = busctl_as(&m, ADMIN, method, &format!("ss '{group}' {value}"));
        assert_ne!(o.code, 0, "{method} {value} accepted");
        assert!(
            o.stderr.contains(key) && o.stderr.contains(range),
            "{method} {value}: {}",
            o.stderr
        );
    }
    assert_eq!(memory_max(&m, &group), (384u64 << 20).to_string());
    assert_eq!(
        m.sql(&format!(
            "SELECT attention || '|' || memory_max || '|' || permission_mode FROM chats WHERE id = '{group}'"
        )),
        format!("mentions-only|{}|acceptEdits", 384u64 << 20)
    );

    // A zero budget stops the chat's turns; "off" lets them run again.
    admin_ok(&m, "SetBudget", &format!("ss '{group}' 0"));
    let over = mention(&group, "@bot over budget now");
    assert_eq!(outcome(&m, &over), "budget_exhausted");
    ctl_ok(&m, &format!("set '{group}' budget=off"));
    let back = mention(&group, "@bot budget back");
    assert_eq!(outcome(&m, &back), "ok");

    // A fresh session, each way.
    let before = m.sql(&format!(
        "SELECT session_id FROM chats WHERE id = '{group}'"
    ));
    ctl_ok(&m, &format!("new '{group}'"));
    mention(&group, "@bot fresh start one");
    let r = m.wait_reply_containing(&group, "fresh start one", T);
    assert!(
        r["text"].as_str().unwrap().contains("turn 1 of session"),
        "{r}"
    );
    let mid = m.sql(&format!(
        "SELECT session_id FROM chats WHERE id = '{group}'"
    ));
    assert_ne!(before, mid);
    admin_ok(&m, "NewSession", &format!("s '{group}'"));
    mention(&group, "@bot fresh start two");
    let r = m.wait_reply_containing(&group, "fresh start two", T);
    assert!(
        r["text"].as_str().unwrap().contains("turn 1 of session"),
        "{r}"
    );
    assert_ne!(
        mid,
        m.sql(&format!(
            "SELECT session_id FROM chats WHERE id = '{group}'"
        ))
    );

    // --- the quarantine ------------------------------------------------------------------
    let s1 = sim.text(STRANGER, None, "hello from stranger one");
    let s2 = sim.text(STRANGER2, None, "hello from stranger two");
    let (c1, c2) = (
        s1["chat_id"].as_str().unwrap().to_owned(),
        s2["chat_id"].as_str().unwrap().to_owned(),
    );
    let number = |c: &str| -> String {
        m.wait_for(&format!("{c} numbered"), T, || {
            let n = m.sql(&format!(
                "SELECT pending_no FROM chats WHERE id = '{c}' AND notified_at IS NOT NULL"
            ));
            (!n.is_empty()).then_some(n)
        })
    };
    let (n1, n2) = (number(&c1), number(&c2));
    let pending = ctl_ok(&m, "pending");
    assert!(
        pending.contains(&format!("#{n1}")) && pending.contains(&c2),
        "{pending}"
    );
    let r = ctl_ok(&m, &format!("allow {n1}"));
    assert!(r.contains("Allowed"), "{r}");
    m.wait_reply_containing(&c1, "hello from stranger one", T);
    admin_ok(&m, "Allow", &format!("s '#{n2}'"));
    m.wait_reply_containing(&c2, "hello from stranger two", T);
    ctl_ok(&m, &format!("block '{c1}'"));
    admin_ok(&m, "Block", &format!("s '{c2}'"));
    for (from, c) in [(STRANGER, &c1), (STRANGER2, &c2)] {
        let id = say(from, c, "are you still there?");
        assert_eq!(decided(&m, &id, &["held", "skip", "answer"]).1, "blocked");
        assert_eq!(
            m.sql(&format!("SELECT access FROM chats WHERE id = '{c}'")),
            "blocked"
        );
    }

    // --- archive and remove, through the helper and the log --------------------------------
    let home = |c: &str| format!("/var/lib/picortex/chats/{}", chat_tag(c));
    m.wait_settled(T);
    let r = ctl_ok(&m, &format!("archive '{group}'"));
    assert!(r.contains("Archived"), "{r}");
    assert_eq!(
        m.sql_n(&format!(
            "SELECT COUNT(*) FROM chats WHERE id = '{group}' AND archived_at IS NOT NULL"
        )),
        1
    );
    assert_ne!(
        m.sh(&format!("test -e {}", home(&group))).code,
        0,
        "home still there"
    );
    // The log knows: the next message restores the chat before its turn.
    mention(&group, "@bot back from the archive");
    m.wait_reply_containing(&group, "back from the archive", T);
    assert_eq!(
        m.sql_n(&format!(
            "SELECT COUNT(*) FROM chats WHERE id = '{group}' AND archived_at IS NULL"
        )),
        1
    );
    m.wait_settled(T);
    let out = admin_ok(&m, "Archive", &format!("s '{group}'"));
    assert!(out.contains('/'), "{out}");
    assert_eq!(
        m.sql_n(&format!(
            "SELECT COUNT(*) FROM chats WHERE id = '{group}' AND archived_at IS NOT NULL"
        )),
        1
    );
    ctl_ok(&m, &format!("remove '{c1}'"));
    admin_ok(&m, "Remove", &format!("s '{c2}'"));
    for c in [&c1, &c2] {
        assert_ne!(
            m.sh(&format!("getent passwd chat-{}", chat_tag(c))).code,
            0,
            "{c}'s user is still there"
        );
        assert_eq!(
            m.sql(&format!(
                "SELECT COALESCE(unix_user, 'none') || '|' || access FROM chats WHERE id = '{c}'"
            )),
            "none|blocked"
        );
    }

    // --- nobody is refused by polkit, and the refusal is logged ----------------------------
    let as_nobody = "setpriv --reuid=nobody --regid=nogroup --clear-groups --";
    let o = m.sh(&format!(
        "{as_nobody} picortexctl set '{group}' attention=silent"
    ));
    assert_eq!(o.code, 4, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("not authorised"), "{}", o.stderr);
    let o = m.sh(&format!("{as_nobody} picortexctl chats"));
    assert_eq!(o.code, 4, "{}{}", o.stdout, o.stderr);
    let o = m.sh(&format!(
        "{as_nobody} busctl call {DEST} SetMemoryMax ss '{group}' 1G"
    ));
    assert_ne!(o.code, 0, "{}", o.stdout);
    // busctl shows an AccessDenied error by its name's meaning.
    assert!(o.stderr.contains("Access denied"), "{}", o.stderr);
    assert_eq!(
        m.sql(&format!(
            "SELECT attention || '|' || memory_max FROM chats WHERE id = '{group}'"
        )),
        format!("mentions-only|{}", 384u64 << 20)
    );
    let j = m.journal("-u picortexd.service -p warning");
    for needle in [
        "refused SetAttention",
        "refused ListChats",
        "refused SetMemoryMax",
    ] {
        assert!(
            j.lines()
                .any(|l| l.contains(needle) && l.contains("uid 65534")),
            "no journal entry {needle:?} for nobody:\n{j}"
        );
    }

    // Every turn and every waiting chat was announced.
    let signals = m.read("/run/gw1-signals.log");
    for (member, what) in [
        ("TurnStarted", group.as_str()),
        ("TurnFinished", "budget_exhausted"),
        ("PendingAdded", c2.as_str()),
    ] {
        assert!(
            signals
                .split("Type=signal")
                .any(|s| s.contains(&format!("Member={member}")) && s.contains(what)),
            "no {member} signal with {what}:\n{signals}"
        );
    }

    // --- the name comes back after the bus daemon restarts --------------------------------
    m.ok("systemctl restart dbus.service");
    m.wait_for("Gateway1 back on the bus", Duration::from_secs(60), || {
        (ctl(&m, "status").code == 0).then_some(())
    });
    let s = ctl_ok(&m, "--json status");
    assert!(s.contains("\"chats\""), "{s}");
}
