//! The documents that cross a turn unit's boundary, in both directions, all from untrusted bytes:
//! - a `TurnRequest` (what picortex-run reads on stdin): what parses survives a JSON round trip,
//!   the reader agrees with the parser, and a request picortex-run's validation accepts becomes an
//!   argv where every option value is where it belongs;
//! - a `TurnResult` (what the gateway reads back): what its reader (`parse_result_document`)
//!   accepts is one line for the expected turn that passes `TurnResult::validate`, a valid
//!   one-line document is accepted, what parses survives a round trip, and the gateway's reply
//!   comes out cleaned and split without a panic;
//! - the agent's stdout, through picortex-run's parsing and classification into the one result
//!   line it writes: a line the gateway's reader accepts, saying the same (or `bad_output`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use picortex_proto::ids::{ChatId, TurnId};
use picortex_proto::turn::{
    parse_result_document, Outcome, TurnKind, TurnRequest, TurnResult, MAX_REQUEST_BYTES,
    MAX_RESULT_BYTES,
};
use picortex_run::agent::{build_argv, SessionArg};
use picortex_run::output::parse_output;
use picortex_run::request::{read_request_or_none, validate_request, PERMISSION_MODES};
use picortex_run::turn::{classify, result_line, Attempt};
use picortexd::config::Config;
use std::sync::OnceLock;

const TURN: &str = "0123456789abcdef0123456789abcdef";
const SESSION: &str = "2915e81c-5068-4796-ace2-21d2c94ad298";

fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(Config::default)
}

/// serde_json parses floats best-effort by default, so a cost may come back one ulp off.
fn same_result(a: &TurnResult, b: &TurnResult) -> bool {
    let close = match (a.cost_usd, b.cost_usd) {
        (Some(x), Some(y)) => x == y || (x - y).abs() <= x.abs().max(y.abs()) * 1e-15,
        (x, y) => x == y,
    };
    let strip = |r: &TurnResult| TurnResult {
        cost_usd: None,
        ..r.clone()
    };
    close && strip(a) == strip(b)
}

fn request(data: &[u8]) {
    let parsed = serde_json::from_slice::<TurnRequest>(data);
    // picortex-run's reader: the same verdict as the parser for anything within its limit.
    match read_request_or_none(data) {
        Ok(Some(r)) => assert_eq!(parsed.as_ref().ok(), Some(&r)),
        Ok(None) => assert!(data.is_empty()),
        Err(_) => assert!(parsed.is_err() || data.len() as u64 > MAX_REQUEST_BYTES),
    }
    let Ok(req) = parsed else { return };
    let again: TurnRequest = serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
    assert_eq!(again, req);

    let turn = TurnId::parse(&req.turn_id).unwrap_or_else(|_| TurnId::parse(TURN).unwrap());
    if validate_request(&req, &turn).is_err() {
        return;
    }
    assert_eq!(req.turn_id, turn.as_str());
    let chat = ChatId::parse(&req.chat_id).unwrap();
    assert!(picortex_run::request::check_chat(&req, &chat.tag()).is_ok());
    assert!(PERMISSION_MODES.contains(&req.permission_mode.as_str()));
    assert!(!req.prompt.trim().is_empty());

    let session = if req.resume {
        SessionArg::Resume(req.session_id.clone())
    } else {
        SessionArg::New(req.session_id.clone())
    };
    let argv = build_argv(&picortex_run::AgentConfig::default(), &req, &session);
    let after = |flag: &str| {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1))
    };
    assert_eq!(argv[0], "claude");
    assert_eq!(after("--permission-mode"), Some(&req.permission_mode));
    if let Some(m) = &req.model {
        assert_eq!(after("--model"), Some(m));
        assert!(
            !m.starts_with('-'),
            "model {m:?} would be read as an option"
        );
    }
    assert_eq!(
        argv.iter().any(|a| a == "--no-session-persistence"),
        req.kind == TurnKind::Discriminate
    );
    let n = argv.len();
    let flag = if req.resume {
        "--resume"
    } else {
        "--session-id"
    };
    assert_eq!(argv[n - 2..], [flag.to_owned(), req.session_id.clone()]);

    // The discriminator's request is still one picortex-run takes.
    let d = picortex_run::discriminate::request(&req, "Score it.");
    assert!(validate_request(&d, &turn).is_ok());
}

/// What the gateway does with a result document: the reply, cleaned and split for a phone.
fn reply_to(r: &TurnResult) {
    let cfg = config();
    let reply = picortexd::reply::compose(None, Some(r), cfg);
    let text = picortexd::linq::clean::for_phone(&reply.text, cfg.linq.max_reply_chars);
    let parts = picortexd::linq::split::split_reply(&text, cfg.linq.max_part_chars);
    assert!(parts
        .iter()
        .all(|p| !p.is_empty() && p.encode_utf16().count() <= cfg.linq.max_part_chars));
}

fn result(data: &[u8]) {
    // The gateway's reader: one bounded, validated line for the expected turn, or a refusal.
    match parse_result_document(data, TURN) {
        Ok(Some(r)) => {
            assert_eq!(r.turn_id, TURN);
            assert!(r.validate().is_ok());
            assert_eq!(data.iter().position(|&b| b == b'\n'), Some(data.len() - 1));
            reply_to(&r);
        }
        Ok(None) => assert!(data.is_empty()),
        Err(_) => {}
    }
    let Ok(r) = serde_json::from_slice::<TurnResult>(data) else {
        return;
    };
    let again: TurnResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert!(same_result(&again, &r), "{r:?} -> {again:?}");
    // A document that parses and validates, on one line, is what the reader accepts.
    if r.validate().is_ok() && !data.contains(&b'\n') && !data.contains(&b'\r') {
        let mut doc = data.to_vec();
        doc.push(b'\n');
        match parse_result_document(&doc, &r.turn_id) {
            Ok(Some(read)) => assert!(same_result(&read, &r)),
            other => panic!("a valid one-line document is refused: {other:?}"),
        }
        reply_to(&r);
    }
}

fn agent_stdout(data: &[u8]) {
    let b = |i: usize| data.get(i).copied().unwrap_or(0);
    let attempt = Attempt {
        session: if b(0) & 1 == 0 {
            SessionArg::New(SESSION.into())
        } else {
            SessionArg::Resume(SESSION.into())
        },
        output: parse_output(data),
        stdout_overflow: b(1) == 0xff,
        stderr_tail: String::from_utf8_lossy(data.get(..64).unwrap_or(data)).into_owned(),
        exit_code: (b(2) & 1 == 1).then(|| i32::from(b(3) as i8)),
        signal: (b(2) & 6 == 6).then(|| i32::from(b(4) & 31)),
        oom_killed: b(2) & 8 == 8,
        wall_ms: u64::from(b(5)) * 1000,
    };
    let _ = picortex_run::turn::recovery(&attempt);
    let written = classify(TURN, &attempt);
    assert_eq!(written.turn_id, TURN);
    if written.outcome == Outcome::Ok {
        assert!(written
            .text
            .as_deref()
            .is_some_and(|t| !t.trim().is_empty()));
    }
    if let Some(c) = written.cost_usd {
        assert!(c.is_finite() && c >= 0.0, "cost {c}");
    }

    // Whatever the agent printed, the line picortex-run writes is one the gateway accepts, and
    // it says what classify decided (or bad_output, with the reason, if that was out of bounds).
    let line = result_line(&written);
    assert!((line.len() as u64) < MAX_RESULT_BYTES);
    let read = match parse_result_document(line.as_bytes(), TURN) {
        Ok(Some(r)) => r,
        other => panic!("the gateway refuses picortex-run's line {line:?}: {other:?}"),
    };
    if written.validate().is_ok() {
        assert!(same_result(&read, &written), "{written:?} -> {read:?}");
    } else {
        assert_eq!(read.outcome, Outcome::BadOutput);
    }
    reply_to(&read);
}

fuzz_target!(|data: &[u8]| {
    request(data);
    result(data);
    agent_stdout(data);
});
