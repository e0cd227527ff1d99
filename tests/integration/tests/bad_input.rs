//! SPEC L1/L2: a table of bad webhooks. Each gets the expected status and a journal entry, and
//! none of them creates a message or a turn.

use picortex_integration::{json, now_unix, sign, Machine};

const OTHER_KEY: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn message(event_id: &str, chat: &str, msg: &str, text: &str) -> serde_json::Value {
    json!({
        "api_version": "v3", "webhook_version": "2026-02-03", "event_type": "message.received",
        "event_id": event_id, "created_at": "2026-11-22T14:11:40.433857150Z", "trace_id": "t", "partner_id": "p",
        "data": {
            "id": msg, "direction": "inbound", "service": "iMessage", "effect": null, "reply_to": null,
            "chat": {"id": chat, "is_group": false,
                     "owner_handle": {"id": "b", "handle": "+15550001000", "is_me": true, "service": "iMessage", "status": "active", "joined_at": "2026-01-01T00:00:00Z", "left_at": null},
                     "health_status": {"status": "HEALTHY", "doc_url": "x", "updated_at": "2026-11-22T14:11:40Z"}},
            "sender_handle": {"id": "s", "handle": "+15550002000", "is_me": false, "service": "iMessage", "status": "active", "joined_at": "2026-01-01T00:00:00Z", "left_at": null},
            "parts": [{"type": "text", "value": text, "mentions": null}],
            "sent_at": "2026-11-22T14:11:40Z", "delivered_at": null, "read_at": null
        }
    })
}

struct Case {
    name: &'static str,
    body: Vec<u8>,
    /// (header, value); signature headers are added unless `sign` is None.
    headers: Vec<(String, String)>,
    content_type: &'static str,
    method: &'static str,
    expect: u16,
}

fn post(m: &Machine, c: &Case) -> u16 {
    std::fs::write(m.path("/tmp/bad-body"), &c.body).expect("write body");
    let h: String = c
        .headers
        .iter()
        .map(|(k, v)| format!(" -H '{k}: {v}'"))
        .collect();
    let data = if c.method == "POST" {
        " --data-binary @/tmp/bad-body"
    } else {
        ""
    };
    let out = m.ok(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' -X {} -H 'Content-Type: {}'{h}{data} http://127.0.0.1:8470/api/linq/inbound",
        c.method, c.content_type
    ));
    out.trim().parse().unwrap_or(0)
}

#[test]
fn bad_webhooks_are_refused_and_create_nothing() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();
    let secret = m.read("/etc/linq-sim/webhook-secret");
    // A real chat, answered once, so the baseline has one message each way and one turn.
    let first = sim.text("+15550002000", None, "baseline");
    let chat = first["chat_id"].as_str().unwrap().to_owned();
    let good_event = first["event_id"].as_str().unwrap().to_owned();
    m.wait_for(
        "the baseline reply",
        std::time::Duration::from_secs(30),
        || (!sim.sent(&chat).is_empty()).then_some(()),
    );
    m.wait_settled(std::time::Duration::from_secs(30));
    let (msgs0, turns0) = (
        m.sql_n("SELECT COUNT(*) FROM messages"),
        m.sql_n("SELECT COUNT(*) FROM turns"),
    );

    let now = now_unix();
    let signed = |id: &str, ts: i64, body: &[u8], key: &str| -> Vec<(String, String)> {
        let (s, _) = sign(key, id, ts, std::str::from_utf8(body).unwrap_or(""));
        vec![
            ("webhook-id".into(), id.into()),
            ("webhook-timestamp".into(), ts.to_string()),
            ("webhook-signature".into(), s),
        ]
    };
    // Signatures over raw bytes (for the non-UTF-8 case).
    let signed_raw = |id: &str, ts: i64, body: &[u8]| -> Vec<(String, String)> {
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.trim().trim_start_matches("whsec_"))
            .unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        let sig = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        vec![
            ("webhook-id".into(), id.into()),
            ("webhook-timestamp".into(), ts.to_string()),
            ("webhook-signature".into(), sig),
        ]
    };
    let ev = |n: u32| format!("00000000-0000-4000-8000-{n:012}");
    let body_of = |n: u32, text: &str| {
        message(
            &ev(n),
            &chat,
            &format!("10000000-0000-4000-8000-{n:012}"),
            text,
        )
        .to_string()
        .into_bytes()
    };
    let json_case = |name, n: u32, mutate: &dyn Fn(&mut serde_json::Value), expect| {
        let mut v = message(
            &ev(n),
            &chat,
            &format!("10000000-0000-4000-8000-{n:012}"),
            "bad",
        );
        mutate(&mut v);
        let body = v.to_string().into_bytes();
        Case {
            name,
            headers: signed(&ev(n), now, &body, &secret),
            body,
            content_type: "application/json",
            method: "POST",
            expect,
        }
    };
    let replay_body = sim.get(&format!("/control/deliveries?event_id={good_event}"))[0]["payload"]
        .to_string()
        .into_bytes();

    let mut cases = vec![
        {
            let b = body_of(1, "forged");
            Case {
                name: "forged signature",
                headers: signed(&ev(1), now, &b, OTHER_KEY),
                body: b,
                content_type: "application/json",
                method: "POST",
                expect: 401,
            }
        },
        {
            let b = body_of(2, "stale");
            Case {
                name: "stale timestamp",
                headers: signed(&ev(2), now - 600, &b, &secret),
                body: b,
                content_type: "application/json",
                method: "POST",
                expect: 401,
            }
        },
        {
            let b = body_of(3, "future");
            Case {
                name: "timestamp from the future",
                headers: signed(&ev(3), now + 600, &b, &secret),
                body: b,
                content_type: "application/json",
                method: "POST",
                expect: 401,
            }
        },
        Case {
            name: "replayed event id",
            headers: signed(&good_event, now, &replay_body, &secret),
            body: replay_body.clone(),
            content_type: "application/json",
            method: "POST",
            expect: 409,
        },
        Case {
            name: "no signature",
            headers: vec![],
            body: body_of(4, "unsigned"),
            content_type: "application/json",
            method: "POST",
            expect: 401,
        },
        {
            let b = body_of(5, "garbled");
            Case {
                name: "garbled signature",
                headers: vec![
                    ("webhook-id".into(), ev(5)),
                    ("webhook-timestamp".into(), now.to_string()),
                    ("webhook-signature".into(), "v1,!!!notbase64".into()),
                ],
                body: b,
                content_type: "application/json",
                method: "POST",
                expect: 401,
            }
        },
        {
            let b = body_of(6, "ts");
            Case {
                name: "timestamp not a number",
                headers: vec![
                    ("webhook-id".into(), ev(6)),
                    ("webhook-timestamp".into(), "soon".into()),
                    ("webhook-signature".into(), "v1,AAAA".into()),
                ],
                body: b,
                content_type: "application/json",
                method: "POST",
                expect: 400,
            }
        },
        {
            let b = body_of(7, "legacy");
            Case {
                name: "wrong legacy signature",
                headers: vec![
                    ("X-Webhook-Signature".into(), "00".repeat(32)),
                    ("X-Webhook-Timestamp".into(), now.to_string()),
                ],
                body: b,
                content_type: "application/json",
                method: "POST",
                expect: 401,
            }
        },
        {
            let mut b = body_of(8, "truncated");
            b.truncate(b.len() / 2);
            Case {
                name: "truncated JSON",
                headers: signed(&ev(8), now, &b, &secret),
                body: b,
                content_type: "application/json",
                method: "POST",
                expect: 400,
            }
        },
        {
            let b = message(
                &ev(9),
                &chat,
                "10000000-0000-4000-8000-000000000009",
                &"x".repeat(300 * 1024),
            )
            .to_string()
            .into_bytes();
            Case {
                name: "oversized body",
                headers: signed(&ev(9), now, &b, &secret),
                body: b,
                content_type: "application/json",
                method: "POST",
                expect: 413,
            }
        },
        {
            let b = body_of(10, "ct");
            Case {
                name: "wrong content type",
                headers: signed(&ev(10), now, &b, &secret),
                body: b,
                content_type: "text/plain",
                method: "POST",
                expect: 415,
            }
        },
        {
            let b = b"hello, not json".to_vec();
            Case {
                name: "not JSON",
                headers: signed(&ev(11), now, &b, &secret),
                body: b,
                content_type: "application/json",
                method: "POST",
                expect: 400,
            }
        },
        json_case(
            "wrong type (is_group is a string)",
            12,
            &|v| v["data"]["chat"]["is_group"] = json!("yes"),
            400,
        ),
        json_case(
            "wrong type (parts is an object)",
            13,
            &|v| v["data"]["parts"] = json!({"text": "x"}),
            400,
        ),
        json_case(
            "missing field (data.chat)",
            14,
            &|v| {
                v["data"].as_object_mut().unwrap().remove("chat");
            },
            400,
        ),
        json_case(
            "missing field (event_id)",
            15,
            &|v| {
                v.as_object_mut().unwrap().remove("event_id");
            },
            400,
        ),
        json_case(
            "chat id that is a path",
            16,
            &|v| v["data"]["chat"]["id"] = json!("../../etc/passwd"),
            400,
        ),
        json_case(
            "huge reply_to",
            17,
            &|v| v["data"]["reply_to"] = json!({"message_id": "a".repeat(10_000), "part_index": 0}),
            400,
        ),
        json_case(
            "unknown direction",
            18,
            &|v| v["data"]["direction"] = json!("sideways"),
            400,
        ),
        {
            let mut b = vec![0xff, 0xfe, b'{'];
            b.extend_from_slice(&body_of(19, "x"));
            Case {
                name: "non-UTF-8 body",
                headers: signed_raw(&ev(19), now, &b),
                body: b,
                content_type: "application/json",
                method: "POST",
                expect: 400,
            }
        },
        Case {
            name: "empty body",
            headers: signed(&ev(20), now, b"", &secret),
            body: vec![],
            content_type: "application/json",
            method: "POST",
            expect: 400,
        },
        Case {
            name: "GET instead of POST",
            headers: vec![],
            body: vec![],
            content_type: "application/json",
            method: "GET",
            expect: 405,
        },
        json_case(
            "unknown event type (accepted, ignored)",
            21,
            &|v| {
                v["event_type"] = json!("hologram.projected");
                v["data"] = json!({"beam": 1});
            },
            200,
        ),
        json_case(
            "bot's own message echoed back (accepted, not answered)",
            22,
            &|v| {
                v["data"]["direction"] = json!("outbound");
                v["data"]["sender_handle"]["is_me"] = json!(true);
                v["event_type"] = json!("message.sent");
            },
            200,
        ),
        json_case(
            "late reconciled message (accepted, not answered)",
            23,
            &|v| v["data"]["reconciled_at"] = json!("2026-11-22T14:00:00Z"),
            200,
        ),
    ];
    let mut failures = Vec::new();
    for c in cases.iter_mut() {
        let got = post(&m, c);
        if got != c.expect {
            failures.push(format!("{}: expected {}, got {got}", c.name, c.expect));
        }
    }
    assert!(cases.len() >= 15);
    assert!(failures.is_empty(), "{failures:#?}");

    m.wait_settled(std::time::Duration::from_secs(30));
    // The two accepted-but-not-answered messages are in the log (as history), nothing else is.
    assert_eq!(
        m.sql_n("SELECT COUNT(*) FROM messages"),
        msgs0 + 2,
        "a bad webhook created a message"
    );
    assert_eq!(
        m.sql_n("SELECT COUNT(*) FROM turns"),
        turns0,
        "a bad webhook created a turn"
    );
    assert_eq!(sim.sent(&chat).len(), 1, "a bad webhook got an answer");
    let rejected = m.journal("SYSLOG_IDENTIFIER=picortexd | grep -c 'webhook rejected' || true");
    assert!(
        rejected.trim().parse::<usize>().unwrap_or(0)
            >= cases
                .iter()
                .filter(|c| c.expect >= 400 && c.expect != 405)
                .count(),
        "refusals missing from the journal: {rejected}"
    );
}
