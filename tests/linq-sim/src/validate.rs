//! The rules Linq applies to a `MessageContent` before it accepts a send, and the
//! normalisation of request parts into the response shape (`TextPartResponse`, …).
//! Pure functions: no state, no I/O.

use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::error::ApiError;

pub const MAX_TEXT_CHARS: usize = 10_000;
pub const MAX_PARTS: usize = 100;
pub const MAX_URL_MEDIA: usize = 40;
pub const MAX_IDEMPOTENCY_KEY: usize = 255;
pub const MAX_LINK_CHARS: usize = 2_048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    pub message_id: String,
    pub part_index: u32,
}

impl ReplyTo {
    pub fn to_json(&self) -> Value {
        json!({"message_id": self.message_id, "part_index": self.part_index})
    }
}

/// A validated outbound message.
#[derive(Debug, Clone)]
pub struct Content {
    /// Parts in response shape, each with `reactions: null`.
    pub parts: Vec<Value>,
    pub reply_to: Option<ReplyTo>,
    pub idempotency_key: Option<String>,
    /// `{type: "screen"|"bubble", name}`.
    pub effect: Option<Value>,
    pub preferred_service: Option<String>,
}

impl Content {
    /// A link part, or a URL inside a text part (the first message of a chat may have neither).
    pub fn has_link(&self) -> bool {
        self.parts.iter().any(|p| match p["type"].as_str() {
            Some("link") => true,
            Some("text") => p["value"].as_str().is_some_and(looks_like_url),
            _ => false,
        })
    }

    pub fn has_mention(&self) -> bool {
        self.parts
            .iter()
            .any(|p| p.get("mention").is_some_and(|m| !m.is_null()))
    }
}

fn looks_like_url(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.contains("http://") || l.contains("https://") || l.contains("www.")
}

/// Length in UTF-16 code units, the unit Linq uses for ranges.
pub fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Validate `message` (a `MessageContent` object) and normalise it.
pub fn parse_content(message: &Value) -> Result<Content, ApiError> {
    let obj = message
        .as_object()
        .ok_or_else(|| ApiError::bad_body("message must be an object"))?;
    let parts_v = match obj.get("parts") {
        Some(Value::Array(a)) => a,
        Some(Value::Null) | None => {
            if obj.contains_key("experience") {
                return Err(ApiError::bad_content(
                    "experience messages are not supported by the simulator",
                ));
            }
            return Err(ApiError::missing("message.parts"));
        }
        Some(_) => return Err(ApiError::bad_body("message.parts must be an array")),
    };
    if parts_v.is_empty() {
        return Err(ApiError::bad_content(
            "message.parts must contain at least 1 part",
        ));
    }
    if parts_v.len() > MAX_PARTS {
        return Err(ApiError::bad_content(format!(
            "message.parts may contain at most {MAX_PARTS} parts"
        )));
    }

    let mut parts = Vec::with_capacity(parts_v.len());
    let mut url_media = 0usize;
    let mut prev_text = false;
    for (i, p) in parts_v.iter().enumerate() {
        let po = p
            .as_object()
            .ok_or_else(|| ApiError::bad_body(format!("message.parts[{i}] must be an object")))?;
        let ty = match po.get("type") {
            Some(Value::String(t)) => t.as_str(),
            None | Some(Value::Null) => {
                return Err(ApiError::missing(&format!("message.parts[{i}].type")))
            }
            Some(_) => {
                return Err(ApiError::bad_body(format!(
                    "message.parts[{i}].type must be a string"
                )))
            }
        };
        let is_text = ty == "text";
        match ty {
            "text" => {
                if prev_text {
                    return Err(ApiError::bad_content(
                        "Consecutive text parts are not allowed; separate text parts with media parts",
                    ));
                }
                parts.push(text_part(i, po)?);
            }
            "media" => {
                let (part, by_url) = media_part(i, po)?;
                if by_url {
                    url_media += 1;
                    if url_media > MAX_URL_MEDIA {
                        return Err(ApiError::bad_content(format!(
                            "At most {MAX_URL_MEDIA} media parts may use a url; pre-upload the rest"
                        )));
                    }
                }
                parts.push(part);
            }
            "link" => {
                if parts_v.len() != 1 {
                    return Err(ApiError::bad_content(
                        "A link part must be the only part in the message",
                    ));
                }
                let value = req_str(po, i, "value")?;
                if value.is_empty() || value.chars().count() > MAX_LINK_CHARS {
                    return Err(ApiError::bad_content(format!(
                        "message.parts[{i}].value must be a URL of 1 to {MAX_LINK_CHARS} characters"
                    )));
                }
                parts.push(json!({"type": "link", "value": value, "reactions": null}));
            }
            other => {
                return Err(ApiError::bad_content(format!(
                    "message.parts[{i}].type '{other}' is not supported (text, media, link)"
                )))
            }
        }
        prev_text = is_text;
    }

    let reply_to = match obj.get("reply_to") {
        None | Some(Value::Null) => None,
        Some(Value::Object(r)) => {
            let message_id = match r.get("message_id") {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                None | Some(Value::Null) => {
                    return Err(ApiError::missing("message.reply_to.message_id"))
                }
                Some(_) => {
                    return Err(ApiError::bad_body(
                        "message.reply_to.message_id must be a string",
                    ))
                }
            };
            let part_index = match r.get("part_index") {
                None | Some(Value::Null) => 0,
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        ApiError::bad_body("message.reply_to.part_index must be an integer >= 0")
                    })?,
            };
            Some(ReplyTo {
                message_id,
                part_index,
            })
        }
        Some(_) => return Err(ApiError::bad_body("message.reply_to must be an object")),
    };

    let idempotency_key = match obj.get("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => {
            if k.chars().count() > MAX_IDEMPOTENCY_KEY {
                return Err(ApiError::bad_content(format!(
                    "idempotency_key may be at most {MAX_IDEMPOTENCY_KEY} characters"
                )));
            }
            (!k.is_empty()).then(|| k.clone())
        }
        Some(_) => {
            return Err(ApiError::bad_body(
                "message.idempotency_key must be a string",
            ))
        }
    };

    let effect = match obj.get("effect") {
        None | Some(Value::Null) => None,
        Some(Value::Object(e)) => Some(parse_effect(e)?),
        Some(_) => return Err(ApiError::bad_body("message.effect must be an object")),
    };

    let preferred_service = match obj.get("preferred_service") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if matches!(s.as_str(), "iMessage" | "SMS" | "RCS") => {
            Some(s.clone())
        }
        Some(_) => {
            return Err(ApiError::bad_content(
                "message.preferred_service must be one of iMessage, SMS, RCS",
            ))
        }
    };

    Ok(Content {
        parts,
        reply_to,
        idempotency_key,
        effect,
        preferred_service,
    })
}

fn req_str<'a>(po: &'a Map<String, Value>, i: usize, field: &str) -> Result<&'a str, ApiError> {
    match po.get(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(ApiError::missing(&format!("message.parts[{i}].{field}"))),
        Some(_) => Err(ApiError::bad_body(format!(
            "message.parts[{i}].{field} must be a string"
        ))),
    }
}

fn text_part(i: usize, po: &Map<String, Value>) -> Result<Value, ApiError> {
    let value = req_str(po, i, "value")?;
    if value.is_empty() {
        return Err(ApiError::bad_content(format!(
            "message.parts[{i}].value must not be empty"
        )));
    }
    if value.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::bad_content(format!(
            "message.parts[{i}].value exceeds the maximum length of {MAX_TEXT_CHARS} characters"
        )));
    }
    let mut out = json!({"type": "text", "value": value, "reactions": null, "mentions": null});
    if let Some(d) = po.get("text_decorations").filter(|d| !d.is_null()) {
        if !d.is_array() {
            return Err(ApiError::bad_body(format!(
                "message.parts[{i}].text_decorations must be an array"
            )));
        }
        out["text_decorations"] = d.clone();
    }
    if let Some(m) = po.get("mention").filter(|m| !m.is_null()) {
        let handle = m.as_str().ok_or_else(|| {
            ApiError::bad_body(format!("message.parts[{i}].mention must be a string"))
        })?;
        let range = match po.get("mention_range") {
            None | Some(Value::Null) => json!([0, utf16_len(value)]),
            Some(r) => {
                let ok = r
                    .as_array()
                    .is_some_and(|a| a.len() == 2 && a.iter().all(|x| x.as_u64().is_some()));
                if !ok {
                    return Err(ApiError::bad_body(format!(
                        "message.parts[{i}].mention_range must be [start, end]"
                    )));
                }
                r.clone()
            }
        };
        out["mention"] = json!(handle);
        out["mention_range"] = po.get("mention_range").cloned().unwrap_or(Value::Null);
        out["mentions"] = json!([{"handle": handle, "is_me": false, "range": range}]);
    }
    Ok(out)
}

/// Returns the response-shaped part and whether it is a URL (not pre-uploaded) media part.
fn media_part(i: usize, po: &Map<String, Value>) -> Result<(Value, bool), ApiError> {
    let url = po.get("url").and_then(Value::as_str);
    let att = po.get("attachment_id").and_then(Value::as_str);
    match (url, att) {
        (Some(u), None) => {
            if !u.starts_with("https://") {
                return Err(ApiError::bad_content(format!(
                    "message.parts[{i}].url must be an HTTPS URL"
                )));
            }
            let filename = u
                .split(['?', '#'])
                .next()
                .and_then(|p| p.rsplit('/').next())
                .filter(|f| !f.is_empty())
                .unwrap_or("file")
                .to_string();
            let part = json!({
                "type": "media", "id": Uuid::new_v4().to_string(), "url": u,
                "filename": filename, "mime_type": mime_for(&filename), "size_bytes": 0, "reactions": null,
            });
            // URLs on Linq's own CDN count as pre-uploaded.
            Ok((part, !u.starts_with("https://cdn.linqapp.com/")))
        }
        (None, Some(a)) => {
            let part = json!({
                "type": "media", "id": a, "url": format!("https://cdn.linqapp.com/attachments/{a}/file"),
                "filename": "file", "mime_type": "application/octet-stream", "size_bytes": 0, "reactions": null,
            });
            Ok((part, false))
        }
        _ => Err(ApiError::bad_content(format!(
            "message.parts[{i}] must have exactly one of url or attachment_id"
        ))),
    }
}

fn mime_for(filename: &str) -> &'static str {
    let ext = filename
        .rsplit('.')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "vcf" => "text/vcard",
        _ => "application/octet-stream",
    }
}

const SCREEN_EFFECTS: &[&str] = &[
    "confetti",
    "fireworks",
    "lasers",
    "sparkles",
    "celebration",
    "hearts",
    "love",
    "balloons",
    "happy_birthday",
    "echo",
    "spotlight",
];
const BUBBLE_EFFECTS: &[&str] = &["slam", "loud", "gentle", "invisible"];

/// Accepts the SDK shape `{type, name}` and the older `{screen_effect}` / `{bubble_effect}`.
fn parse_effect(e: &Map<String, Value>) -> Result<Value, ApiError> {
    let s = |k: &str| e.get(k).and_then(Value::as_str);
    let (ty, name) = match (s("type"), s("name"), s("screen_effect"), s("bubble_effect")) {
        (Some(t), Some(n), None, None) => (t, n),
        (None, None, Some(n), None) => ("screen", n),
        (None, None, None, Some(n)) => ("bubble", n),
        _ => {
            return Err(ApiError::bad_content(
                "message.effect must be {type: screen|bubble, name}; only one effect",
            ))
        }
    };
    let known = match ty {
        "screen" => SCREEN_EFFECTS,
        "bubble" => BUBBLE_EFFECTS,
        _ => {
            return Err(ApiError::bad_content(
                "message.effect.type must be screen or bubble",
            ))
        }
    };
    if !known.contains(&name) {
        return Err(ApiError::bad_content(format!(
            "unknown {ty} effect '{name}'"
        )));
    }
    Ok(json!({"type": ty, "name": name}))
}

/// E.164 (`+` then 2–15 digits, no leading 0) or an email address.
pub fn valid_handle(h: &str) -> bool {
    if let Some(d) = h.strip_prefix('+') {
        return (2..=15).contains(&d.len())
            && d.bytes().all(|b| b.is_ascii_digit())
            && !d.starts_with('0');
    }
    let mut it = h.splitn(2, '@');
    matches!((it.next(), it.next()), (Some(a), Some(b)) if !a.is_empty() && b.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(parts: Value) -> Result<Content, ApiError> {
        parse_content(&json!({ "parts": parts }))
    }

    #[test]
    fn plain_text_is_normalised() {
        let c = content(json!([{"type": "text", "value": "hi"}])).unwrap();
        assert_eq!(
            c.parts,
            vec![json!({"type": "text", "value": "hi", "reactions": null, "mentions": null})]
        );
        assert!(!c.has_link());
    }

    #[test]
    fn text_length_limit_is_10000_chars() {
        let ok = "é".repeat(MAX_TEXT_CHARS);
        assert!(content(json!([{"type": "text", "value": ok}])).is_ok());
        let long = "a".repeat(MAX_TEXT_CHARS + 1);
        let e = content(json!([{"type": "text", "value": long}])).unwrap_err();
        assert_eq!((e.status, e.code), (400, 1004));
    }

    #[test]
    fn empty_and_missing_values() {
        assert_eq!(
            content(json!([{"type": "text", "value": ""}]))
                .unwrap_err()
                .code,
            1004
        );
        assert_eq!(content(json!([{"type": "text"}])).unwrap_err().code, 1001);
        assert_eq!(content(json!([])).unwrap_err().code, 1004);
        assert_eq!(parse_content(&json!({})).unwrap_err().code, 1001);
        assert_eq!(parse_content(&json!("x")).unwrap_err().code, 1003);
        assert_eq!(content(json!([{"type": "poll"}])).unwrap_err().code, 1004);
    }

    #[test]
    fn consecutive_text_parts_rejected_but_separated_ok() {
        let e = content(json!([{"type": "text", "value": "a"}, {"type": "text", "value": "b"}]))
            .unwrap_err();
        assert_eq!(e.code, 1004);
        let c = content(json!([
            {"type": "text", "value": "a"},
            {"type": "media", "url": "https://example.com/p/cat.jpg"},
            {"type": "text", "value": "b"}
        ]))
        .unwrap();
        assert_eq!(c.parts[1]["filename"], "cat.jpg");
        assert_eq!(c.parts[1]["mime_type"], "image/jpeg");
    }

    #[test]
    fn link_must_be_alone() {
        assert!(
            content(json!([{"type": "link", "value": "https://example.com"}]))
                .unwrap()
                .has_link()
        );
        let e = content(json!([
            {"type": "link", "value": "https://example.com"},
            {"type": "media", "url": "https://example.com/a.png"}
        ]))
        .unwrap_err();
        assert_eq!(e.code, 1004);
    }

    #[test]
    fn media_needs_exactly_one_https_source() {
        assert_eq!(content(json!([{"type": "media"}])).unwrap_err().code, 1004);
        assert_eq!(
            content(json!([{"type": "media", "url": "http://x.com/a.png"}]))
                .unwrap_err()
                .code,
            1004
        );
        let both = json!([{"type": "media", "url": "https://x.com/a.png", "attachment_id": "u"}]);
        assert_eq!(content(both).unwrap_err().code, 1004);
        let parts: Vec<Value> = (0..41)
            .map(|n| json!({"type": "media", "url": format!("https://x.com/{n}.png")}))
            .collect();
        assert_eq!(content(Value::Array(parts)).unwrap_err().code, 1004);
    }

    #[test]
    fn part_count_limit() {
        let mut parts = Vec::new();
        for n in 0..101 {
            parts.push(json!({"type": "media", "attachment_id": format!("a{n}")}));
        }
        assert_eq!(content(Value::Array(parts)).unwrap_err().code, 1004);
    }

    #[test]
    fn reply_to_effect_key_service() {
        let c = parse_content(&json!({
            "parts": [{"type": "text", "value": "x"}],
            "reply_to": {"message_id": "m1"},
            "idempotency_key": "k1",
            "effect": {"screen_effect": "confetti"},
            "preferred_service": "SMS"
        }))
        .unwrap();
        assert_eq!(
            c.reply_to,
            Some(ReplyTo {
                message_id: "m1".into(),
                part_index: 0
            })
        );
        assert_eq!(c.idempotency_key.as_deref(), Some("k1"));
        assert_eq!(
            c.effect,
            Some(json!({"type": "screen", "name": "confetti"}))
        );
        assert_eq!(c.preferred_service.as_deref(), Some("SMS"));

        let bad_key = "k".repeat(256);
        let e = parse_content(
            &json!({"parts": [{"type": "text", "value": "x"}], "idempotency_key": bad_key}),
        );
        assert_eq!(e.unwrap_err().code, 1004);
        let e = parse_content(
            &json!({"parts": [{"type": "text", "value": "x"}], "reply_to": {"part_index": 1}}),
        );
        assert_eq!(e.unwrap_err().code, 1001);
        let e = parse_content(
            &json!({"parts": [{"type": "text", "value": "x"}], "effect": {"type": "screen", "name": "nope"}}),
        );
        assert_eq!(e.unwrap_err().code, 1004);
    }

    #[test]
    fn urls_in_text_count_as_links() {
        assert!(
            content(json!([{"type": "text", "value": "see https://x.io"}]))
                .unwrap()
                .has_link()
        );
    }

    #[test]
    fn outbound_mention_is_recorded() {
        let c = content(json!([{"type": "text", "value": "Juan hi", "mention": "+14155550000", "mention_range": [0, 4]}]))
            .unwrap();
        assert!(c.has_mention());
        assert_eq!(c.parts[0]["mentions"][0]["range"], json!([0, 4]));
    }

    #[test]
    fn handles() {
        assert!(valid_handle("+15550001000"));
        assert!(valid_handle("a@b.co"));
        assert!(!valid_handle("15550001000"));
        assert!(!valid_handle("+0555"));
        assert!(!valid_handle("+1"));
    }
}
