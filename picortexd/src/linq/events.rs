//! Typed Linq webhook payloads, version `2026-02-03` (SPEC L2, L3, L5). Parse only after the
//! signature is verified. Lenient on fields Linq adds; strict on the fields the gateway acts on,
//! with errors that name the field. Event types we do not model parse as [`Event::Unknown`].

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The webhook payload version this module models (pin it with `?version=` on the target URL).
pub const PAYLOAD_VERSION: &str = "2026-02-03";

/// The common webhook envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    pub api_version: Option<String>,
    pub webhook_version: Option<String>,
    pub event_type: String,
    /// Linq's event id: the deduplication key for redeliveries.
    pub event_id: String,
    pub created_at: OffsetDateTime,
    pub trace_id: Option<String>,
    pub partner_id: Option<String>,
    pub data: T,
}

impl<T> Envelope<T> {
    /// False when Linq sends a payload version other than [`PAYLOAD_VERSION`] (worth a warning:
    /// message events differ between versions).
    pub fn is_expected_version(&self) -> bool {
        self.webhook_version.as_deref() == Some(PAYLOAD_VERSION)
    }
}

/// One webhook event, by `event_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    MessageReceived(MessageEvent),
    MessageSent(MessageEvent),
    MessageDelivered(MessageEvent),
    MessageRead(MessageEvent),
    MessageFailed(MessageFailed),
    MessageEdited(MessageEdited),
    ReactionAdded(ReactionEvent),
    ReactionRemoved(ReactionEvent),
    TypingStarted(TypingEvent),
    TypingStopped(TypingEvent),
    ChatCreated(Chat),
    ChatGroupNameUpdated(GroupNameUpdated),
    ParticipantAdded(ParticipantEvent),
    ParticipantRemoved(ParticipantEvent),
    /// Any other event type (Linq adds new ones regularly): acknowledge and ignore.
    Unknown {
        event_type: String,
    },
}

impl Event {
    /// The chat the event belongs to, when the payload names one.
    pub fn chat_id(&self) -> Option<&str> {
        match self {
            Event::MessageReceived(m)
            | Event::MessageSent(m)
            | Event::MessageDelivered(m)
            | Event::MessageRead(m) => Some(&m.chat.id),
            Event::MessageEdited(e) => Some(&e.chat.id),
            Event::MessageFailed(f) => f.chat_id.as_deref(),
            Event::ReactionAdded(r) | Event::ReactionRemoved(r) => r.chat_id.as_deref(),
            Event::TypingStarted(t) | Event::TypingStopped(t) => Some(&t.chat_id),
            Event::ChatCreated(c) => Some(&c.id),
            Event::ChatGroupNameUpdated(g) => Some(&g.chat_id),
            Event::ParticipantAdded(p) | Event::ParticipantRemoved(p) => p.chat_id.as_deref(),
            Event::Unknown { .. } => None,
        }
    }
}

/// A participant handle (`ChatHandle`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Handle {
    #[serde(default)]
    pub id: Option<String>,
    /// E.164 phone number or email address.
    pub handle: String,
    #[serde(default)]
    pub service: Option<String>,
    /// True for the bot's own line. Nullable in the API; absent/null means "not me".
    #[serde(default)]
    pub is_me: Option<bool>,
    /// `active`, `left` or `removed`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub joined_at: Option<String>,
    #[serde(default)]
    pub left_at: Option<String>,
}

impl Handle {
    pub fn is_me(&self) -> bool {
        self.is_me == Some(true)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HealthStatus {
    /// `HEALTHY`, `AT_RISK`, `CRITICAL` or `OPTED_OUT`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub doc_url: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// The chat summary embedded in message events (no participants, no display name).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatRef {
    pub id: String,
    pub is_group: bool,
    /// The bot's own line in this chat.
    #[serde(default)]
    pub owner_handle: Option<Handle>,
    #[serde(default)]
    pub health_status: Option<HealthStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Mention {
    #[serde(default)]
    pub handle: Option<String>,
    /// True when the bot's line was mentioned.
    #[serde(default)]
    pub is_me: bool,
    /// `[start, end)` in UTF-16 code units.
    #[serde(default)]
    pub range: Option<Vec<u32>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TextPart {
    pub value: String,
    #[serde(default)]
    pub mentions: Option<Vec<Mention>>,
    /// Deprecated: handle of the first mention only.
    #[serde(default)]
    pub mention: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MediaPart {
    #[serde(default)]
    pub id: Option<String>,
    /// Download promptly: on some tiers the URL expires within minutes.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub size_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LinkPart {
    pub value: String,
}

/// One part of a message, by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type")]
pub enum Part {
    #[serde(rename = "text")]
    Text(TextPart),
    #[serde(rename = "media")]
    Media(MediaPart),
    #[serde(rename = "link")]
    Link(LinkPart),
    /// `imessage_app`, `app_clip` and anything newer.
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReplyTo {
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub part_index: Option<u32>,
}

/// Data of `message.received`, `message.sent`, `message.delivered` and `message.read`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MessageEvent {
    pub id: String,
    pub chat: ChatRef,
    pub direction: Direction,
    pub sender_handle: Handle,
    pub parts: Vec<Part>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub preferred_service: Option<String>,
    #[serde(default)]
    pub reply_to: Option<ReplyTo>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub sent_at: Option<String>,
    #[serde(default)]
    pub delivered_at: Option<String>,
    #[serde(default)]
    pub read_at: Option<String>,
    /// Set only on messages Linq recovered late.
    #[serde(default)]
    pub reconciled_at: Option<String>,
}

impl MessageEvent {
    /// The text parts joined by newlines (parts are separate bubbles); empty if there are none.
    pub fn text(&self) -> String {
        let texts: Vec<&str> = self
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.value.as_str()),
                _ => None,
            })
            .collect();
        texts.join("\n")
    }

    /// Sent by the bot's own line: never answer these (L3).
    pub fn is_from_bot(&self) -> bool {
        self.direction == Direction::Outbound || self.sender_handle.is_me()
    }

    /// Recovered late by Linq: history, not something to auto-answer (L3).
    pub fn is_reconciled(&self) -> bool {
        self.reconciled_at.is_some()
    }

    /// Some text part @mentions the bot's line. Only iMessage senders produce mentions, so
    /// callers still need a name/keyword fallback for SMS/RCS.
    pub fn mentions_bot(&self) -> bool {
        let owner = self.chat.owner_handle.as_ref().map(|h| h.handle.as_str());
        self.parts.iter().any(|p| match p {
            Part::Text(t) => match &t.mentions {
                Some(ms) => ms.iter().any(|m| m.is_me),
                // Older payloads carry only the deprecated first-mention handle.
                None => owner.is_some() && t.mention.as_deref() == owner,
            },
            _ => false,
        })
    }

    /// The message this one replies to in a thread.
    pub fn reply_to_id(&self) -> Option<&str> {
        self.reply_to.as_ref()?.message_id.as_deref()
    }

    pub fn media(&self) -> impl Iterator<Item = &MediaPart> {
        self.parts.iter().filter_map(|p| match p {
            Part::Media(m) => Some(m),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EditedPart {
    pub index: u32,
    pub text: String,
}

/// Data of `message.edited`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MessageEdited {
    pub id: String,
    pub chat: ChatRef,
    pub direction: Direction,
    pub sender_handle: Handle,
    pub part: EditedPart,
    #[serde(default)]
    pub edited_at: Option<String>,
}

impl MessageEdited {
    pub fn is_from_bot(&self) -> bool {
        self.direction == Direction::Outbound || self.sender_handle.is_me()
    }
}

/// Data of `message.failed`. A `message.delivered` may still follow.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MessageFailed {
    pub code: i64,
    #[serde(default)]
    pub failed_at: Option<String>,
    #[serde(default)]
    pub chat_id: Option<String>,
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub detail_code: Option<i64>,
    #[serde(default)]
    pub service: Option<String>,
}

/// Data of `reaction.added` / `reaction.removed` (no `is_group`, no message text).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReactionEvent {
    /// `love|like|dislike|laugh|emphasize|question|custom|sticker` (kept open: the list grows).
    pub reaction_type: String,
    pub is_from_me: bool,
    #[serde(default)]
    pub chat_id: Option<String>,
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub part_index: Option<u32>,
    #[serde(default)]
    pub custom_emoji: Option<String>,
    #[serde(default)]
    pub from_handle: Option<Handle>,
    #[serde(default)]
    pub reaction_id: Option<String>,
    #[serde(default)]
    pub reacted_at: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
}

impl ReactionEvent {
    pub fn is_from_bot(&self) -> bool {
        self.is_from_me || self.from_handle.as_ref().is_some_and(Handle::is_me)
    }
}

/// Data of `chat.typing_indicator.started` / `.stopped`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TypingEvent {
    pub chat_id: String,
    /// Newer payloads say who is typing.
    #[serde(default)]
    pub actor_handle: Option<Handle>,
}

/// A chat with its participants: data of `chat.created` and the `GET /v3/chats/{id}` response.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Chat {
    pub id: String,
    pub is_group: bool,
    /// Always includes the bot's own line (`is_me: true`).
    pub handles: Vec<Handle>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub is_archived: bool,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub health_status: Option<HealthStatus>,
}

impl Chat {
    /// The bot's own line in this chat.
    pub fn me(&self) -> Option<&Handle> {
        self.handles.iter().find(|h| h.is_me())
    }

    /// Everyone but the bot.
    pub fn others(&self) -> impl Iterator<Item = &Handle> {
        self.handles.iter().filter(|h| !h.is_me())
    }
}

/// Data of `chat.group_name_updated`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GroupNameUpdated {
    pub chat_id: String,
    #[serde(default)]
    pub old_value: Option<String>,
    #[serde(default)]
    pub new_value: Option<String>,
    #[serde(default)]
    pub changed_by_handle: Option<Handle>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// Data of `participant.added` / `participant.removed`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ParticipantEvent {
    #[serde(default)]
    pub chat_id: Option<String>,
    #[serde(default)]
    pub participant: Option<Handle>,
    /// Deprecated plain handle; use [`ParticipantEvent::handle`].
    #[serde(default)]
    pub handle: Option<String>,
    #[serde(default)]
    pub added_at: Option<String>,
    #[serde(default)]
    pub removed_at: Option<String>,
}

impl ParticipantEvent {
    /// The participant's handle, from the full object or the deprecated field.
    pub fn handle(&self) -> Option<&str> {
        self.participant
            .as_ref()
            .map(|p| p.handle.as_str())
            .or(self.handle.as_deref())
    }
}

/// Why a body could not be parsed. Messages name the event type and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("webhook body is not JSON: {0}")]
    NotJson(String),
    #[error("{event_type}: required field `{field}` is missing or null")]
    MissingField { event_type: String, field: String },
    #[error("{event_type}: field `{field}` has the wrong type or value: {detail}")]
    WrongType {
        event_type: String,
        field: String,
        detail: String,
    },
}

/// Parses an RFC 3339 timestamp with any fractional precision (Linq uses nanoseconds in the
/// envelope and milliseconds inside `data`).
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// Parses a (verified) webhook body.
pub fn parse_event(body: &[u8]) -> Result<Envelope<Event>, EventError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(wrong("(envelope)", "(body)", "expected a JSON object"));
    };

    let event_type = required_str(&obj, "(envelope)", "event_type")?.to_owned();
    let et = event_type.as_str();
    let event_id = required_str(&obj, et, "event_id")?.to_owned();
    let created_raw = required_str(&obj, et, "created_at")?;
    let created_at = parse_rfc3339(created_raw)
        .ok_or_else(|| wrong(et, "created_at", "expected an RFC 3339 timestamp"))?;
    let opt = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let api_version = opt("api_version");
    let webhook_version = opt("webhook_version");
    let trace_id = opt("trace_id");
    let partner_id = opt("partner_id");
    let data = obj.remove("data").unwrap_or(Value::Null);

    let event = match et {
        "message.received" => Event::MessageReceived(typed(et, data, MESSAGE_REQUIRED)?),
        "message.sent" => Event::MessageSent(typed(et, data, MESSAGE_REQUIRED)?),
        "message.delivered" => Event::MessageDelivered(typed(et, data, MESSAGE_REQUIRED)?),
        "message.read" => Event::MessageRead(typed(et, data, MESSAGE_REQUIRED)?),
        "message.edited" => Event::MessageEdited(typed(et, data, EDITED_REQUIRED)?),
        "message.failed" => Event::MessageFailed(typed(et, data, &[("code", Kind::Int)])?),
        "reaction.added" => Event::ReactionAdded(typed(et, data, REACTION_REQUIRED)?),
        "reaction.removed" => Event::ReactionRemoved(typed(et, data, REACTION_REQUIRED)?),
        "chat.typing_indicator.started" => Event::TypingStarted(typed(et, data, CHAT_ID_REQUIRED)?),
        "chat.typing_indicator.stopped" => Event::TypingStopped(typed(et, data, CHAT_ID_REQUIRED)?),
        "chat.created" => Event::ChatCreated(typed(et, data, CHAT_REQUIRED)?),
        "chat.group_name_updated" => {
            Event::ChatGroupNameUpdated(typed(et, data, CHAT_ID_REQUIRED)?)
        }
        "participant.added" => Event::ParticipantAdded(typed(et, data, &[])?),
        "participant.removed" => Event::ParticipantRemoved(typed(et, data, &[])?),
        _ => Event::Unknown {
            event_type: event_type.clone(),
        },
    };

    Ok(Envelope {
        api_version,
        webhook_version,
        event_type,
        event_id,
        created_at,
        trace_id,
        partner_id,
        data: event,
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    Int,
    Array,
    OneOf(&'static [&'static str]),
}

impl Kind {
    fn matches(self, v: &Value) -> bool {
        match self {
            Kind::Str => v.is_string(),
            Kind::Bool => v.is_boolean(),
            Kind::Int => v.is_i64() || v.is_u64(),
            Kind::Array => v.is_array(),
            Kind::OneOf(allowed) => v.as_str().is_some_and(|s| allowed.contains(&s)),
        }
    }

    fn expected(self) -> String {
        match self {
            Kind::Str => "expected a string".into(),
            Kind::Bool => "expected a boolean".into(),
            Kind::Int => "expected an integer".into(),
            Kind::Array => "expected an array".into(),
            Kind::OneOf(allowed) => format!("expected one of {}", allowed.join(", ")),
        }
    }
}

/// Fields the gateway acts on, as dotted paths under `data`. Checked before serde so errors name
/// the full path (serde alone reports only the leaf name).
type Required = &'static [(&'static str, Kind)];

const DIRECTION: Kind = Kind::OneOf(&["inbound", "outbound"]);
const MESSAGE_REQUIRED: Required = &[
    ("id", Kind::Str),
    ("chat.id", Kind::Str),
    ("chat.is_group", Kind::Bool),
    ("direction", DIRECTION),
    ("sender_handle.handle", Kind::Str),
    ("parts", Kind::Array),
];
const EDITED_REQUIRED: Required = &[
    ("id", Kind::Str),
    ("chat.id", Kind::Str),
    ("chat.is_group", Kind::Bool),
    ("direction", DIRECTION),
    ("sender_handle.handle", Kind::Str),
    ("part.index", Kind::Int),
    ("part.text", Kind::Str),
];
const REACTION_REQUIRED: Required = &[("reaction_type", Kind::Str), ("is_from_me", Kind::Bool)];
const CHAT_ID_REQUIRED: Required = &[("chat_id", Kind::Str)];
const CHAT_REQUIRED: Required = &[
    ("id", Kind::Str),
    ("is_group", Kind::Bool),
    ("handles", Kind::Array),
];

fn typed<T: DeserializeOwned>(
    event_type: &str,
    data: Value,
    required: Required,
) -> Result<T, EventError> {
    let obj = match &data {
        Value::Object(o) => o,
        Value::Null => return Err(missing(event_type, "data")),
        _ => return Err(wrong(event_type, "data", "expected an object")),
    };
    for (path, kind) in required {
        match lookup(obj, path) {
            None | Some(Value::Null) => return Err(missing(event_type, &format!("data.{path}"))),
            Some(v) if !kind.matches(v) => {
                return Err(wrong(event_type, &format!("data.{path}"), &kind.expected()))
            }
            Some(_) => {}
        }
    }
    serde_json::from_value(data).map_err(|e| classify_serde(event_type, &e))
}

fn lookup<'a>(obj: &'a Map<String, Value>, dotted: &str) -> Option<&'a Value> {
    let mut parts = dotted.split('.');
    let mut cur = obj.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// Maps a serde error on a field we did not pre-check (e.g. a part without `value`).
fn classify_serde(event_type: &str, e: &serde_json::Error) -> EventError {
    let msg = e.to_string();
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        return missing(event_type, &format!("data.…{name}"));
    }
    wrong(event_type, "data", &msg)
}

fn required_str<'a>(
    obj: &'a Map<String, Value>,
    event_type: &str,
    key: &str,
) -> Result<&'a str, EventError> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(missing(event_type, key)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(wrong(event_type, key, "expected a string")),
    }
}

fn missing(event_type: &str, field: &str) -> EventError {
    EventError::MissingField {
        event_type: event_type.to_owned(),
        field: field.to_owned(),
    }
}

fn wrong(event_type: &str, field: &str, detail: &str) -> EventError {
    EventError::WrongType {
        event_type: event_type.to_owned(),
        field: field.to_owned(),
        detail: detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECEIVED_1TO1: &str = include_str!("fixtures/message.received-1to1.json");
    const RECEIVED_GROUP: &str = include_str!("fixtures/message.received-group-mention.json");
    const SENT: &str = include_str!("fixtures/message.sent.json");
    const DELIVERED: &str = include_str!("fixtures/message.delivered.json");
    const REACTION_ADDED: &str = include_str!("fixtures/reaction.added.json");
    const TYPING_STARTED: &str = include_str!("fixtures/chat.typing_indicator.started.json");

    fn parse(s: &str) -> Envelope<Event> {
        parse_event(s.as_bytes()).unwrap_or_else(|e| panic!("parse failed: {e}"))
    }

    /// Wraps `data` in an envelope of the given type.
    fn envelope(event_type: &str, data: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "api_version": "v3",
            "webhook_version": "2026-02-03",
            "event_type": event_type,
            "event_id": "00000000-0000-4000-8000-000000000001",
            "created_at": "2026-02-05T19:52:18.101373886Z",
            "trace_id": "t",
            "partner_id": "p",
            "data": data,
            "some_future_field": {"x": 1}
        }))
        .expect("json")
    }

    /// The 1:1 fixture's data, for mutation in negative tests.
    fn message_data() -> Value {
        let v: Value = serde_json::from_str(RECEIVED_1TO1).expect("fixture");
        v["data"].clone()
    }

    fn message(ev: &Envelope<Event>) -> &MessageEvent {
        match &ev.data {
            Event::MessageReceived(m)
            | Event::MessageSent(m)
            | Event::MessageDelivered(m)
            | Event::MessageRead(m) => m,
            other => panic!("not a message event: {other:?}"),
        }
    }

    #[test]
    fn received_one_to_one() {
        let ev = parse(RECEIVED_1TO1);
        assert_eq!(ev.event_type, "message.received");
        assert_eq!(ev.event_id, "156a6ae0-101b-4b8f-9925-2ee633f37847");
        assert!(ev.is_expected_version());
        assert_eq!(ev.created_at.nanosecond(), 433_857_150);
        assert_eq!(ev.created_at.unix_timestamp(), 1_795_356_700);
        assert_eq!(
            ev.partner_id.as_deref(),
            Some("6f1c2b7e-0000-4000-8000-000000000001")
        );
        assert!(matches!(ev.data, Event::MessageReceived(_)));
        let m = message(&ev);
        assert_eq!(m.id, "e95b68ed-f65e-4559-8acc-637fa1af71d3");
        assert_eq!(m.chat.id, "4c6113a3-cb58-46e5-a29c-326444779872");
        assert_eq!(
            ev.data.chat_id(),
            Some("4c6113a3-cb58-46e5-a29c-326444779872")
        );
        assert!(!m.chat.is_group);
        assert_eq!(
            m.chat.owner_handle.as_ref().map(|h| h.handle.as_str()),
            Some("+15550001000")
        );
        assert_eq!(m.sender_handle.handle, "+15550002000");
        assert_eq!(m.text(), "is the deploy done?");
        assert!(!m.is_from_bot());
        assert!(!m.is_reconciled());
        assert!(!m.mentions_bot());
        assert_eq!(m.reply_to_id(), None);
        assert_eq!(
            m.chat
                .health_status
                .as_ref()
                .and_then(|h| h.status.as_deref()),
            Some("HEALTHY")
        );
    }

    #[test]
    fn received_group_mention() {
        let ev = parse(RECEIVED_GROUP);
        let m = message(&ev);
        assert!(m.chat.is_group);
        assert!(m.mentions_bot());
        assert!(!m.is_from_bot());
        assert_eq!(m.text(), "@Cortex @Cortex summarize this thread");
        let Part::Text(t) = &m.parts[0] else {
            panic!("text part expected")
        };
        let mention = &t.mentions.as_ref().expect("mentions")[0];
        assert_eq!(mention.range.as_deref(), Some(&[0, 7][..]));
    }

    #[test]
    fn sent_and_delivered_are_from_the_bot() {
        for (fixture, is_sent) in [(SENT, true), (DELIVERED, false)] {
            let ev = parse(fixture);
            assert_eq!(matches!(ev.data, Event::MessageSent(_)), is_sent);
            assert_eq!(matches!(ev.data, Event::MessageDelivered(_)), !is_sent);
            let m = message(&ev);
            assert_eq!(m.direction, Direction::Outbound);
            assert!(m.is_from_bot());
        }
    }

    #[test]
    fn is_me_alone_marks_bot_messages() {
        let mut data = message_data();
        data["sender_handle"]["is_me"] = Value::Bool(true);
        let ev = parse_event(&envelope("message.received", data)).expect("parse");
        assert!(message(&ev).is_from_bot());
    }

    #[test]
    fn reaction_added() {
        let ev = parse(REACTION_ADDED);
        let Event::ReactionAdded(r) = &ev.data else {
            panic!("reaction expected: {:?}", ev.data)
        };
        assert_eq!(r.reaction_type, "love");
        assert_eq!(
            r.message_id.as_deref(),
            Some("4ff3b7f3-293d-4564-b463-fff9faca3980")
        );
        assert_eq!(r.part_index, Some(0));
        assert!(!r.is_from_bot());
        assert_eq!(
            r.from_handle.as_ref().map(|h| h.handle.as_str()),
            Some("+15550002000")
        );
        assert_eq!(
            ev.data.chat_id(),
            Some("84aefd33-4460-4b15-a62d-f1c2e6c03824")
        );
    }

    #[test]
    fn typing_started() {
        let ev = parse(TYPING_STARTED);
        let Event::TypingStarted(t) = &ev.data else {
            panic!("typing expected")
        };
        assert_eq!(t.chat_id, "8463eea9-7f92-42e7-a4da-57a4e8e52107");
        assert_eq!(
            t.actor_handle.as_ref().map(|h| h.handle.as_str()),
            Some("+15550002000")
        );
        // Old shape: only chat_id.
        let ev = parse_event(&envelope(
            "chat.typing_indicator.stopped",
            serde_json::json!({"chat_id": "c1"}),
        ))
        .expect("parse");
        assert_eq!(
            ev.data,
            Event::TypingStopped(TypingEvent {
                chat_id: "c1".into(),
                actor_handle: None
            })
        );
    }

    #[test]
    fn reconciled_reply_with_media_and_unknown_parts() {
        let mut data = message_data();
        data["reconciled_at"] = Value::from("2026-11-22T14:20:00.123Z");
        data["reply_to"] = serde_json::json!({"message_id": "orig-1", "part_index": 0});
        data["parts"] = serde_json::json!([
            {"type": "text", "value": "look", "mentions": null, "text_decorations": []},
            {"type": "media", "id": "a1", "url": "https://cdn.linqapp.com/x.jpg",
             "filename": "x.jpg", "mime_type": "image/jpeg", "size_bytes": 1234},
            {"type": "imessage_app", "url": "https://x", "app": {"bundle_id": "b"}},
            {"type": "text", "value": "at this"}
        ]);
        let ev = parse_event(&envelope("message.received", data)).expect("parse");
        let m = message(&ev);
        assert!(m.is_reconciled());
        assert_eq!(m.reply_to_id(), Some("orig-1"));
        assert_eq!(m.text(), "look\nat this");
        assert_eq!(m.parts[2], Part::Other);
        assert_eq!(m.media().count(), 1);

        // `reconciled_at: null` is not reconciled.
        let mut data = message_data();
        data["reconciled_at"] = Value::Null;
        let ev = parse_event(&envelope("message.read", data)).expect("parse");
        assert!(!message(&ev).is_reconciled());
    }

    #[test]
    fn deprecated_single_mention_of_owner_counts() {
        let mut data = message_data();
        data["parts"] = serde_json::json!([
            {"type": "text", "value": "@bot hi", "mention": "+15550001000"}
        ]);
        let ev = parse_event(&envelope("message.received", data)).expect("parse");
        assert!(message(&ev).mentions_bot());
        let mut data = message_data();
        data["parts"] = serde_json::json!([
            {"type": "text", "value": "@ann hi", "mentions": [{"handle": "+1555", "is_me": false, "range": [0, 4]}]}
        ]);
        let ev = parse_event(&envelope("message.received", data)).expect("parse");
        assert!(!message(&ev).mentions_bot());
    }

    #[test]
    fn other_event_types() {
        let handle = serde_json::json!({"id": "h", "handle": "+15550002000", "service": "iMessage",
            "joined_at": "2026-01-01T00:00:00Z", "is_me": false, "status": "active"});
        let mut chat = message_data()["chat"].clone();
        chat["future"] = Value::from(1);

        let ev = parse_event(&envelope(
            "message.edited",
            serde_json::json!({"id": "m1", "chat": chat, "direction": "inbound",
                "sender_handle": handle, "edited_at": "2026-11-22T14:20:00Z",
                "part": {"index": 0, "text": "fixed"}}),
        ))
        .expect("edited");
        let Event::MessageEdited(e) = &ev.data else {
            panic!("edited")
        };
        assert_eq!((e.part.index, e.part.text.as_str()), (0, "fixed"));
        assert!(!e.is_from_bot());

        let ev = parse_event(&envelope(
            "message.failed",
            serde_json::json!({"code": 4001, "failed_at": "2026-11-22T14:20:00Z",
                "chat_id": "c", "message_id": "m", "reason": "nope"}),
        ))
        .expect("failed");
        let Event::MessageFailed(f) = &ev.data else {
            panic!("failed")
        };
        assert_eq!((f.code, f.message_id.as_deref()), (4001, Some("m")));

        let ev = parse_event(&envelope(
            "reaction.removed",
            serde_json::json!({"is_from_me": true, "reaction_type": "like", "chat_id": "c"}),
        ))
        .expect("reaction.removed");
        let Event::ReactionRemoved(r) = &ev.data else {
            panic!("reaction")
        };
        assert!(r.is_from_bot());

        let ev = parse_event(&envelope(
            "chat.created",
            serde_json::json!({"id": "c", "display_name": null, "is_group": true,
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                "health_status": {"doc_url": "d", "status": "HEALTHY", "updated_at": "x"},
                "handles": [handle, {"id": "me", "handle": "+15550001000", "is_me": true,
                    "service": "iMessage", "joined_at": "2026-01-01T00:00:00Z"}]}),
        ))
        .expect("chat.created");
        let Event::ChatCreated(c) = &ev.data else {
            panic!("chat")
        };
        assert_eq!(c.me().map(|h| h.handle.as_str()), Some("+15550001000"));
        assert_eq!(c.others().count(), 1);

        let ev = parse_event(&envelope(
            "chat.group_name_updated",
            serde_json::json!({"chat_id": "c", "updated_at": "2026-01-01T00:00:00Z",
                "old_value": null, "new_value": "Ops", "changed_by_handle": handle}),
        ))
        .expect("group name");
        let Event::ChatGroupNameUpdated(g) = &ev.data else {
            panic!("group name")
        };
        assert_eq!(g.new_value.as_deref(), Some("Ops"));

        for (t, key) in [
            ("participant.added", "added_at"),
            ("participant.removed", "removed_at"),
        ] {
            let ev = parse_event(&envelope(
                t,
                serde_json::json!({"chat_id": "c", "handle": "+15550002000",
                    "participant": handle, key: "2026-01-01T00:00:00Z"}),
            ))
            .expect("participant");
            match &ev.data {
                Event::ParticipantAdded(p) | Event::ParticipantRemoved(p) => {
                    assert_eq!(p.handle(), Some("+15550002000"))
                }
                other => panic!("participant expected: {other:?}"),
            }
        }
        let ev = parse_event(&envelope(
            "participant.removed",
            serde_json::json!({"handle": "x@y.z"}),
        ))
        .expect("deprecated participant");
        let Event::ParticipantRemoved(p) = &ev.data else {
            panic!("participant")
        };
        assert_eq!(p.handle(), Some("x@y.z"));
    }

    #[test]
    fn unknown_event_types_parse() {
        for (t, data) in [
            (
                "poll.vote_added",
                serde_json::json!({"anything": [1, 2, 3]}),
            ),
            ("chat.group_icon_updated", Value::Null),
            ("phone_number.status_updated", Value::from("weird")),
        ] {
            let ev = parse_event(&envelope(t, data)).expect("unknown parses");
            assert_eq!(
                ev.data,
                Event::Unknown {
                    event_type: t.into()
                }
            );
            assert_eq!(ev.data.chat_id(), None);
        }
    }

    #[test]
    fn created_at_precisions() {
        for (s, nanos) in [
            ("2026-02-05T19:52:18Z", 0),
            ("2026-02-05T19:52:18.1Z", 100_000_000),
            ("2026-02-05T19:52:18.101Z", 101_000_000),
            ("2026-02-05T19:52:18.101373886Z", 101_373_886),
            ("2026-02-05T14:52:18.101373886-05:00", 101_373_886),
        ] {
            let t = parse_rfc3339(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(t.nanosecond(), nanos, "{s}");
            assert_eq!(t.unix_timestamp(), 1_770_321_138, "{s}");
        }
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(matches!(
            parse_event(b"<html>502</html>"),
            Err(EventError::NotJson(_))
        ));
        assert!(matches!(parse_event(b""), Err(EventError::NotJson(_))));
        assert!(matches!(
            parse_event(b"[1,2]"),
            Err(EventError::WrongType { .. })
        ));

        let no_type = br#"{"event_id":"e","created_at":"2026-02-05T19:52:18Z","data":{}}"#;
        assert_eq!(
            parse_event(no_type),
            Err(EventError::MissingField {
                event_type: "(envelope)".into(),
                field: "event_type".into()
            })
        );
        let bad_time = br#"{"event_type":"x.y","event_id":"e","created_at":"5pm","data":{}}"#;
        assert!(matches!(
            parse_event(bad_time),
            Err(EventError::WrongType { ref field, .. }) if field == "created_at"
        ));

        type Case = (&'static str, fn(&mut Value), &'static str, bool);
        let cases: [Case; 8] = [
            ("id", |d| d["id"] = Value::Null, "data.id", true),
            (
                "chat.id",
                |d| {
                    d["chat"].as_object_mut().map(|c| c.remove("id"));
                },
                "data.chat.id",
                true,
            ),
            (
                "chat.is_group",
                |d| d["chat"]["is_group"] = Value::from("no"),
                "data.chat.is_group",
                false,
            ),
            (
                "direction",
                |d| d["direction"] = Value::from("sideways"),
                "data.direction",
                false,
            ),
            (
                "sender",
                |d| {
                    d.as_object_mut().map(|o| o.remove("sender_handle"));
                },
                "data.sender_handle.handle",
                true,
            ),
            (
                "sender.handle",
                |d| d["sender_handle"]["handle"] = Value::from(5),
                "data.sender_handle.handle",
                false,
            ),
            (
                "parts",
                |d| d["parts"] = Value::from("hi"),
                "data.parts",
                false,
            ),
            ("chat", |d| d["chat"] = Value::from(1), "data.chat.id", true),
        ];
        for (name, mutate, field, is_missing) in cases {
            let mut data = message_data();
            mutate(&mut data);
            let err = parse_event(&envelope("message.received", data)).expect_err(name);
            match (&err, is_missing) {
                (
                    EventError::MissingField {
                        field: f,
                        event_type,
                    },
                    true,
                )
                | (
                    EventError::WrongType {
                        field: f,
                        event_type,
                        ..
                    },
                    false,
                ) => {
                    assert_eq!(f, field, "{name}");
                    assert_eq!(event_type, "message.received");
                }
                _ => panic!("{name}: unexpected {err:?}"),
            }
            assert!(err.to_string().contains(field), "{name}: {err}");
        }

        // A part without `value` is caught by serde and still reported as a missing field.
        let mut data = message_data();
        data["parts"] = serde_json::json!([{"type": "text"}]);
        let err = parse_event(&envelope("message.received", data)).expect_err("part");
        assert!(
            matches!(err, EventError::MissingField { ref field, .. } if field.ends_with("value")),
            "{err}"
        );

        // Missing data on a known type.
        let err = parse_event(&envelope("reaction.added", Value::Null)).expect_err("no data");
        assert!(matches!(err, EventError::MissingField { ref field, .. } if field == "data"));
    }
}
