//! Webhooks in: signature verification, then parsing and the gateway's validation of the event.
//!
//! Input: 8 control bytes, then the body (the seeds are the fixtures of `picortexd/src/linq`
//! behind 8 zero bytes). Each input is used three ways:
//! - the body is parsed as an event and validated as ingest would, and what validation lets
//!   through must carry Linq ids;
//! - the body is signed with a known secret (both schemes, timestamps with leading zeros, extra
//!   signature entries) and must verify inside the tolerance, be `Stale` outside it, and be
//!   refused with one byte flipped;
//! - headers made from the body's first lines are verified at a fuzzed clock; anything accepted
//!   must carry a correct signature by an independent computation, within the tolerance.

#![no_main]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use picortex_proto::ids::is_linq_id;
use picortexd::linq::events::{parse_event, Event};
use picortexd::linq::verify::{Scheme, Verified, Verifier, VerifyError};
use sha2::Sha256;

const SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY: [u8; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31,
];
const TOLERANCE: i64 = 300;

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn events(body: &[u8]) {
    let Ok(env) = parse_event(body) else {
        return;
    };
    let _ = env.is_expected_version();
    match &env.data {
        Event::MessageReceived(m)
        | Event::MessageSent(m)
        | Event::MessageDelivered(m)
        | Event::MessageRead(m) => {
            let _ = (
                m.text(),
                m.is_from_bot(),
                m.is_reconciled(),
                m.mentions_bot(),
            );
            let _ = (m.reply_to_id(), m.media().count());
        }
        Event::MessageEdited(e) => {
            let _ = e.is_from_bot();
        }
        Event::ReactionAdded(r) | Event::ReactionRemoved(r) => {
            let _ = r.is_from_bot();
        }
        Event::ChatCreated(c) => {
            let _ = (c.me(), c.others().count());
            let _ = picortexd::ingest::members_of(c);
        }
        Event::ParticipantAdded(p) | Event::ParticipantRemoved(p) => {
            let _ = p.handle();
        }
        _ => {}
    }
    if picortexd::ingest::validate(&env).is_ok() {
        assert!(is_linq_id(&env.event_id), "{:?}", env.event_id);
        if let Some(chat) = env.data.chat_id() {
            assert!(is_linq_id(chat), "{chat:?}");
        }
        if let Event::MessageReceived(m) = &env.data {
            assert!(is_linq_id(&m.id));
            let h = &m.sender_handle.handle;
            assert!(!h.is_empty() && h.len() <= 320);
        }
    }
}

/// A correctly signed delivery must verify; stale or tampered ones must not.
fn signed(ctrl: &[u8; 8], body: &[u8], verifier: &Verifier) {
    let ts = i64::from(u32::from_le_bytes([ctrl[0], ctrl[1], ctrl[2], ctrl[3]]));
    // Leading zeros are part of what is signed, and the number is the same.
    let ts_raw = if ctrl[4] & 1 == 1 {
        format!("000{ts}")
    } else {
        ts.to_string()
    };
    let id = if ctrl[4] & 2 == 2 {
        "2915e81c-5068-4796-ace2-21d2c94ad298".to_owned()
    } else {
        format!(
            "msg_{:x}",
            u32::from_le_bytes([ctrl[4], ctrl[5], ctrl[6], ctrl[7]])
        )
    };
    let skew = i64::from(ctrl[5] as i8) * 2; // within ±256 s
    let now = ts + skew;
    let late = ts + TOLERANCE + 1 + i64::from(ctrl[6]);

    let sig = B64.encode(hmac(
        &KEY,
        &[id.as_bytes(), b".", ts_raw.as_bytes(), b".", body],
    ));
    let sig_header = match ctrl[4] >> 6 {
        0 => format!("v1,{sig}"),
        1 => format!("v2,{sig} v1,AAAA v1,{sig}"),
        2 => format!("v1a,{sig}  v1,{sig} v1,!!"),
        _ => format!("  v1,{sig}\t"),
    };
    let h = headers(&[
        ("webhook-id", id.as_str()),
        ("webhook-timestamp", ts_raw.as_str()),
        ("webhook-signature", sig_header.as_str()),
    ]);
    assert_eq!(
        verifier.verify(&h, body, now),
        Ok(Verified {
            event_id: Some(id.clone()),
            timestamp: ts,
            scheme: Scheme::StandardWebhooks
        })
    );
    assert!(matches!(
        verifier.verify(&h, body, late),
        Err(VerifyError::Stale { .. })
    ));

    let legacy_sig = hex::encode(hmac(SECRET.as_bytes(), &[ts_raw.as_bytes(), b".", body]));
    let legacy_sig = if ctrl[4] & 4 == 4 {
        format!("sha256={legacy_sig}")
    } else {
        legacy_sig
    };
    let lh = headers(&[
        ("x-webhook-signature", legacy_sig.as_str()),
        ("x-webhook-timestamp", ts_raw.as_str()),
    ]);
    assert_eq!(
        verifier.verify(&lh, body, now),
        Ok(Verified {
            event_id: None,
            timestamp: ts,
            scheme: Scheme::Legacy
        })
    );

    if !body.is_empty() {
        let mut tampered = body.to_vec();
        let i = usize::from(u16::from_le_bytes([ctrl[6], ctrl[7]])) % tampered.len();
        tampered[i] ^= ctrl[3] | 1;
        assert_eq!(
            verifier.verify(&h, &tampered, now),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verifier.verify(&lh, &tampered, now),
            Err(VerifyError::BadSignature)
        );
    }
}

const NAMES: [&str; 8] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-webhook-signature",
    "x-webhook-timestamp",
    "webhook-signature",
    "x-webhook-event",
    "content-type",
];

/// Whatever headers arrive: no panic, and an accepted delivery is genuinely signed.
fn arbitrary_headers(ctrl: &[u8; 8], rest: &[u8], verifier: &Verifier) {
    let n = usize::from(ctrl[0] % 6);
    let mut lines = rest.splitn(n + 1, |&b| b == b'\n');
    let mut h = HeaderMap::new();
    for k in 0..n {
        let Some(line) = lines.next() else { break };
        let name = NAMES[usize::from(ctrl[1].rotate_left(3 * k as u32)) % NAMES.len()];
        if let Ok(v) = HeaderValue::from_bytes(line) {
            h.append(name, v);
        }
    }
    let body = lines.next().unwrap_or_default();
    let now = i64::from_le_bytes(*ctrl);

    let Ok(got) = verifier.verify(&h, body, now) else {
        return;
    };
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    let ts_raw = match got.scheme {
        Scheme::StandardWebhooks => get("webhook-timestamp"),
        Scheme::Legacy => get("x-webhook-timestamp"),
    }
    .unwrap();
    assert_eq!(ts_raw.parse::<i64>().ok(), Some(got.timestamp));
    assert!(now.abs_diff(got.timestamp) <= TOLERANCE as u64);
    match got.scheme {
        Scheme::StandardWebhooks => {
            let id = get("webhook-id").unwrap();
            assert_eq!(got.event_id.as_deref(), Some(id));
            let want = hmac(&KEY, &[id.as_bytes(), b".", ts_raw.as_bytes(), b".", body]);
            let sigs = get("webhook-signature").unwrap();
            assert!(
                sigs.split_whitespace().any(|e| e
                    .strip_prefix("v1,")
                    .and_then(|s| B64.decode(s).ok())
                    .is_some_and(|s| s == want)),
                "accepted without a matching v1 signature: {sigs:?}"
            );
        }
        Scheme::Legacy => {
            let want = hmac(SECRET.as_bytes(), &[ts_raw.as_bytes(), b".", body]);
            let sig = get("x-webhook-signature").unwrap();
            let sig = sig.strip_prefix("sha256=").unwrap_or(sig);
            assert_eq!(hex::decode(sig).ok(), Some(want));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((ctrl, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    events(rest);
    let verifier = Verifier::new(SECRET).unwrap();
    signed(ctrl, rest, &verifier);
    arbitrary_headers(ctrl, rest, &verifier);
    // Whatever the credentials file holds: an error, never a panic.
    if let Some(line) = rest.split(|&b| b == b'\n').next() {
        let _ = Verifier::new(&String::from_utf8_lossy(line));
    }
});
