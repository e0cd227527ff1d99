//! Reading and checking the `TurnRequest` on stdin. The gateway validated it already; this is
//! the second check at the second door (the request decides what runs as the chat's user).

use crate::preflight::Refusal;
use picortex_proto::ids::{ChatId, ChatTag, TurnId};
use picortex_proto::turn::{TurnRequest, MAX_REQUEST_BYTES};
use std::io::Read;

/// `--permission-mode` values the CLI documents (research/claude-cli.md §3).
pub const PERMISSION_MODES: &[&str] = &[
    "default",
    "manual",
    "acceptEdits",
    "plan",
    "auto",
    "dontAsk",
    "bypassPermissions",
];

/// Read at most [`MAX_REQUEST_BYTES`] and parse; unknown fields are refused by the type.
/// Read the request; `Ok(None)` when stdin closed without a byte (a spare unit the gateway let go).
pub fn read_request_or_none(input: impl Read) -> Result<Option<TurnRequest>, Refusal> {
    let mut buf = Vec::new();
    input
        .take(MAX_REQUEST_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Refusal(format!("cannot read the request: {e}")))?;
    if buf.is_empty() {
        return Ok(None);
    }
    parse_request(&buf).map(Some)
}

fn parse_request(buf: &[u8]) -> Result<TurnRequest, Refusal> {
    if buf.len() as u64 > MAX_REQUEST_BYTES {
        return Err(Refusal(format!(
            "request is larger than {MAX_REQUEST_BYTES} bytes"
        )));
    }
    serde_json::from_slice(buf).map_err(|e| Refusal(format!("bad request: {e}")))
}

pub fn read_request(input: impl Read) -> Result<TurnRequest, Refusal> {
    read_request_or_none(input)?.ok_or_else(|| Refusal("bad request: empty input".into()))
}

pub use picortex_proto::ids::is_session_id;

/// Check the request against the `--turn` argument and the rules of the argv it will become.
pub fn validate_request(req: &TurnRequest, turn: &TurnId) -> Result<(), Refusal> {
    let refuse = |m: String| Err(Refusal(m));
    if req.turn_id != turn.as_str() {
        return refuse(format!(
            "request is for turn {:?}, not {}",
            trunc(&req.turn_id),
            turn
        ));
    }
    if let Err(e) = ChatId::parse(&req.chat_id) {
        return refuse(e.to_string());
    }
    if !is_session_id(&req.session_id) {
        return refuse(format!(
            "session id {:?} is not a UUID",
            trunc(&req.session_id)
        ));
    }
    if !PERMISSION_MODES.contains(&req.permission_mode.as_str()) {
        return refuse(format!(
            "unknown permission mode {:?}",
            trunc(&req.permission_mode)
        ));
    }
    if req.prompt.trim().is_empty() {
        return refuse("the prompt is empty".to_owned());
    }
    if let Some(s) = &req.append_system_prompt {
        if s.contains('\0') {
            return refuse("the appended system prompt contains NUL".to_owned());
        }
    }
    if let Some(m) = &req.model {
        // It becomes an argv element after --model: a name, never an option.
        let ok = !m.is_empty()
            && m.len() <= 100
            && !m.starts_with('-')
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:@[]".contains(&b));
        if !ok {
            return refuse(format!("model {:?} is not a model name", trunc(m)));
        }
    }
    Ok(())
}

/// The request's chat must be the chat this user belongs to: the user's tag is a prefix of
/// sha256(chat id) (longer tags resolve collisions, SPEC P1).
pub fn check_chat(req: &TurnRequest, tag: &ChatTag) -> Result<(), Refusal> {
    let id = ChatId::parse(&req.chat_id).map_err(|e| Refusal(e.to_string()))?;
    if id.digest_hex().starts_with(tag.as_str()) {
        Ok(())
    } else {
        Err(Refusal(format!(
            "chat {} does not belong to user chat-{tag}",
            id
        )))
    }
}

fn trunc(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TURN: &str = "0123456789abcdef0123456789abcdef";

    fn req() -> TurnRequest {
        TurnRequest {
            turn_id: TURN.into(),
            chat_id: "4c6113a3-cb58-46e5-a29c-326444779872".into(),
            session_id: "c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10".into(),
            resume: false,
            prompt: "hello".into(),
            permission_mode: "dontAsk".into(),
            append_system_prompt: None,
            kind: Default::default(),
            model: None,
        }
    }

    fn turn() -> TurnId {
        TurnId::parse(TURN).unwrap()
    }

    #[test]
    fn a_good_request_passes() {
        let json = serde_json::to_vec(&req()).unwrap();
        let r = read_request(&json[..]).unwrap();
        assert_eq!(r, req());
        validate_request(&r, &turn()).unwrap();
    }

    #[test]
    fn unknown_fields_and_oversize_requests_are_refused() {
        let mut v = serde_json::to_value(req()).unwrap();
        v["shell"] = "rm -rf /".into();
        let e = read_request(v.to_string().as_bytes()).unwrap_err();
        assert!(e.0.contains("unknown field `shell`"), "{e}");
        let mut big = req();
        big.prompt = "x".repeat(MAX_REQUEST_BYTES as usize);
        let e = read_request(&serde_json::to_vec(&big).unwrap()[..]).unwrap_err();
        assert!(e.0.contains("larger than"), "{e}");
        assert!(read_request(&b"not json"[..]).is_err());
        assert!(read_request(&b""[..]).is_err());
        assert!(
            read_request_or_none(&b""[..]).unwrap().is_none(),
            "empty stdin is a released spare"
        );
    }

    #[test]
    fn mismatches_are_refused() {
        let other = TurnId::parse("ffffffffffffffffffffffffffffffff").unwrap();
        assert!(validate_request(&req(), &other)
            .unwrap_err()
            .0
            .contains("not ffff"));
        for r in [
            TurnRequest {
                session_id: "c91fb9572f1e4c4b9a515b1d0c3e7a10".into(),
                ..req()
            },
            TurnRequest {
                session_id: "--dangerously-skip-permissions".into(),
                ..req()
            },
            TurnRequest {
                permission_mode: "yolo".into(),
                ..req()
            },
            TurnRequest {
                permission_mode: "--model".into(),
                ..req()
            },
            TurnRequest {
                model: Some("--dangerously-skip-permissions".into()),
                ..req()
            },
            TurnRequest {
                chat_id: "../etc".into(),
                ..req()
            },
            TurnRequest {
                prompt: " \n".into(),
                ..req()
            },
            TurnRequest {
                append_system_prompt: Some("a\0b".into()),
                ..req()
            },
        ] {
            assert!(validate_request(&r, &turn()).is_err(), "{r:?} accepted");
        }
    }

    #[test]
    fn the_chat_must_match_the_user() {
        let id = ChatId::parse(&req().chat_id).unwrap();
        check_chat(&req(), &id.tag()).unwrap();
        check_chat(&req(), &id.tag_with_len(12)).unwrap();
        let e = check_chat(&req(), &ChatTag::parse("00000000").unwrap()).unwrap_err();
        assert!(e.0.contains("does not belong"), "{e}");
    }
}
