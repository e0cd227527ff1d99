//! Issue "a text gets an answer": the whole path in a real systemd, checked from outside.

use std::time::Duration;

use picortex_integration::{chat_tag, json, now_unix, sign, Machine};

const OWNER: &str = "+15550002000";
const T: Duration = Duration::from_secs(60);

fn proc_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {key} in /proc status"))
}

#[test]
fn gateway_is_socket_activated_unprivileged_and_healthy() {
    let m = Machine::boot();
    m.start_picortex();
    assert_eq!(
        m.sh("systemctl is-active picortexd.service").stdout.trim(),
        "inactive",
        "started before any connection"
    );
    assert_eq!(
        m.ok("systemctl is-active picortexd.socket").trim(),
        "active"
    );

    let out = m.ok("curl -s -D - http://127.0.0.1:8470/health");
    let (head, body) = out.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-request-id:"),
        "no X-Request-ID: {head}"
    );
    let h: serde_json::Value = serde_json::from_str(body).expect("health json");
    assert_eq!(h["db_ok"], true, "{h}");
    assert_eq!(h["bus_ok"], true, "{h}");
    assert!(h["version"].is_string() && h["uptime_s"].is_u64(), "{h}");

    assert_eq!(
        m.ok("systemctl is-active picortexd.service").trim(),
        "active"
    );
    let status = m.unit_status("picortexd.service");
    let uid = m.ok("id -u picortex").trim().to_owned();
    assert_eq!(
        proc_field(&status, "Uid")
            .split_whitespace()
            .collect::<Vec<_>>(),
        vec![uid.as_str(); 4]
    );
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            proc_field(&status, cap),
            "0000000000000000",
            "{cap} not empty"
        );
    }
    assert_eq!(proc_field(&status, "NoNewPrivs"), "1");
    // A caller's request id comes back.
    let out = m.ok("curl -s -D - -H 'X-Request-ID: op-check-42' http://127.0.0.1:8470/health");
    assert!(
        out.to_ascii_lowercase()
            .contains("x-request-id: op-check-42"),
        "{out}"
    );
}

#[test]
fn a_text_gets_an_answer_as_the_chats_own_user_and_the_session_continues() {
    let m = Machine::boot();
    m.start_picortex();
    assert_eq!(
        m.sh("systemctl is-active picortex-provision.service")
            .stdout
            .trim(),
        "inactive",
        "helper runs before anyone called it"
    );

    let sim = m.sim();
    let first = sim.text(OWNER, None, "hello");
    let chat = first["chat_id"].as_str().expect("chat_id").to_owned();
    let msg1 = first["message_id"].as_str().expect("message_id").to_owned();
    let replies = m.wait_replies(&chat, 1, T);
    let r1 = &replies[0];
    let text1 = r1["text"].as_str().unwrap_or_default();
    assert!(
        text1.contains("standin: you said \"hello\""),
        "reply does not quote the agent: {r1}"
    );
    assert_eq!(
        r1["reply_to"].as_str(),
        Some(msg1.as_str()),
        "not an in-thread reply: {r1}"
    );

    // The chat's own user and 0700 home.
    let tag = chat_tag(&chat);
    let user = format!("chat-{tag}");
    let pw = m.ok(&format!("getent passwd {user}"));
    let home = format!("/var/lib/picortex/chats/{tag}");
    assert!(
        pw.trim().ends_with(&format!(":{home}:/usr/sbin/nologin")),
        "{pw}"
    );
    let st = m.ok(&format!("stat -c '%a %U' {home}"));
    assert_eq!(st.trim(), format!("700 {user}"));

    // The helper was started by the gateway's call, as root.
    let helper_uids = m.journal(
        "_SYSTEMD_UNIT=picortex-provision.service -o verbose | grep -E '^ *_UID=' | sort -u",
    );
    assert_eq!(
        helper_uids.trim(),
        "_UID=0",
        "helper did not run as root: {helper_uids}"
    );
    // A turn that left nothing in outbox/ (picortex-run says so) costs the helper no
    // CollectOutbox call; media.rs has the turns that do.
    let calls = m.journal("_SYSTEMD_UNIT=picortex-provision.service");
    assert!(calls.contains("StartTurn by"), "{calls}");
    assert!(!calls.contains("CollectOutbox"), "{calls}");

    // The turn ran in a picortex-turn-*.service, as the chat user, in the chat's slice.
    let slice = format!("picortex-chat-{tag}.slice");
    let run_lines = m.journal(&format!(
        "SYSLOG_IDENTIFIER=picortex-run PICORTEX_CHAT={chat} -o verbose"
    ));
    assert!(
        run_lines.contains(&format!("_SYSTEMD_SLICE={slice}")),
        "turn not in {slice}:\n{run_lines}"
    );
    assert!(
        run_lines.contains("_SYSTEMD_UNIT=picortex-turn-"),
        "not a turn unit:\n{run_lines}"
    );
    let uid = m.ok(&format!("id -u {user}")).trim().to_owned();
    assert!(
        run_lines.contains(&format!("_UID={uid}\n")),
        "turn did not run as {user}:\n{run_lines}"
    );
    assert_eq!(
        m.ok(&format!("systemctl show -P MemoryMax {slice}")).trim(),
        (256u64 << 20).to_string()
    );

    // Second message: same session, and the agent remembers the first.
    sim.text(OWNER, Some(&chat), "what did I say?");
    let replies = m.wait_replies(&chat, 2, T);
    let text2 = replies[1]["text"].as_str().unwrap_or_default();
    assert!(
        text2.contains("turn 2 of session"),
        "second turn did not resume the session: {text2}"
    );
    assert!(
        text2.contains("before that you said \"hello\""),
        "no continuity: {text2}"
    );
    let sess = |t: &str| {
        t.split("of session ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .map(str::to_owned)
    };
    assert_eq!(sess(text1), sess(text2), "different sessions");

    // A non-root, non-gateway caller is refused by polkit, and the refusal is audited.
    let o = m.sh("runuser -u nobody -- busctl call org.picortex.Provision1 /org/picortex/Provision1 org.picortex.Provision1 EnsureChat s abc");
    assert_ne!(o.code, 0, "nobody was allowed to call EnsureChat");
    assert!(
        o.stderr.to_lowercase().contains("access denied") || o.stderr.contains("not authorised"),
        "{}",
        o.stderr
    );
    let audit =
        m.journal("SYSLOG_IDENTIFIER=picortex-provision PICORTEX_OUTCOME=refused -o verbose");
    assert!(
        audit.contains("PICORTEX_CALLER_UID=65534"),
        "refusal not audited:\n{audit}"
    );
    assert!(audit.contains("PICORTEX_OP=EnsureChat"), "{audit}");
}

/// Posts a webhook from inside the machine and returns the HTTP status.
fn post_webhook(m: &Machine, headers: &[(&str, String)], body: &str) -> u16 {
    std::fs::write(m.path("/tmp/body.json"), body).expect("write body");
    let h: String = headers
        .iter()
        .map(|(k, v)| format!(" -H '{k}: {v}'"))
        .collect();
    let out = m.ok(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' -X POST -H 'Content-Type: application/json'{h} --data-binary @/tmp/body.json http://127.0.0.1:8470/api/linq/inbound"
    ));
    out.trim().parse().expect("status")
}

#[test]
fn forged_stale_and_replayed_webhooks_are_refused_and_start_nothing() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();
    let secret = m.read("/etc/linq-sim/webhook-secret");

    // A real message through the simulator: answered once.
    let first = sim.text(OWNER, None, "once only");
    let chat = first["chat_id"].as_str().unwrap().to_owned();
    let event_id = first["event_id"].as_str().unwrap().to_owned();
    m.wait_replies(&chat, 1, T);
    let deliveries = sim.get(&format!("/control/deliveries?event_id={event_id}"));
    let body = deliveries[0]["payload"].to_string();
    assert!(body.contains("once only"), "{body}");
    let headers = |id: &str, ts: i64, sig: String| {
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ]
    };

    // Replayed: the same event, correctly signed (Standard Webhooks, then legacy headers only).
    let ts = now_unix();
    let (sig, legacy) = sign(&secret, &event_id, ts, &body);
    assert_eq!(post_webhook(&m, &headers(&event_id, ts, sig), &body), 409);
    assert_eq!(
        post_webhook(
            &m,
            &[
                ("X-Webhook-Signature", legacy),
                ("X-Webhook-Timestamp", ts.to_string())
            ],
            &body
        ),
        409
    );

    // Forged: a new event signed with another key.
    let forged = body
        .replace(&event_id, "11111111-2222-4333-8444-555555555555")
        .replace("once only", "forged");
    let (bad, _) = sign(
        "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "11111111-2222-4333-8444-555555555555",
        ts,
        &forged,
    );
    assert_eq!(
        post_webhook(
            &m,
            &headers("11111111-2222-4333-8444-555555555555", ts, bad),
            &forged
        ),
        401
    );
    // Stale: correctly signed, but ten minutes old.
    let stale_ts = now_unix() - 600;
    let (sig, _) = sign(
        &secret,
        "11111111-2222-4333-8444-555555555555",
        stale_ts,
        &forged,
    );
    assert_eq!(
        post_webhook(
            &m,
            &headers("11111111-2222-4333-8444-555555555555", stale_ts, sig),
            &forged
        ),
        401
    );
    // Unsigned.
    assert_eq!(post_webhook(&m, &[], &forged), 401);

    // A redelivery by the simulator (same event, fresh signature) is not processed again.
    let (st, _) = sim.request(
        "POST",
        "/control/redeliver",
        Some(&json!({"event_id": event_id})),
    );
    assert!((200..300).contains(&st));

    m.wait_settled(Duration::from_secs(30));
    let sent = sim.sent(&chat);
    assert_eq!(sent.len(), 1, "expected exactly one reply: {sent:?}");
    let turns = m.journal("SYSLOG_IDENTIFIER=picortex-run | grep -c 'turn started' || true");
    assert_eq!(turns.trim(), "1", "rejected webhooks started turns");
    let refusals = m.journal("SYSLOG_IDENTIFIER=picortexd | grep -c 'webhook rejected' || true");
    assert!(
        refusals.trim().parse::<u32>().unwrap_or(0) >= 5,
        "refusals not logged: {refusals}"
    );
}
