//! The simulator's in-memory world: chats, messages, idempotency keys, the per-chat rate
//! limiter, opt-outs, injected faults, and the logs of API calls and webhook deliveries.
//! Everything here is synchronous and I/O-free; the HTTP layers lock it briefly and never
//! hold the lock across an `.await`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ApiError;
use crate::validate::{Content, ReplyTo};
use crate::webhooks::Secret;

/// Linq's documented per sender–recipient pair limit: 30 messages per 60 seconds.
pub const RATE_LIMIT_MAX: usize = 30;
pub const RATE_LIMIT_WINDOW: Duration = Duration::from_secs(60);

/// Fixed settings, from the command line.
pub struct SimConfig {
    pub token: String,
    pub secret: Secret,
    pub bot_handle: String,
    pub partner_id: String,
    pub subscription_id: String,
    /// Origin of the simulated media CDN (`GET /media/{id}` on the API listener).
    pub media_base: String,
}

/// The whole simulator, shared by the API, control and delivery tasks.
pub struct Sim {
    pub cfg: SimConfig,
    pub state: Mutex<State>,
    pub http: reqwest::Client,
    /// The simulated CDN's files (src/media.rs).
    pub media: crate::media::Store,
    /// Attachments created with `POST /v3/attachments` (src/media.rs).
    pub attachments: crate::media::Attachments,
    /// Woken after every API call, for control requests waiting on its effects
    /// (`GET /control/sent?…&wait_ms=`).
    pub api_called: tokio::sync::Notify,
}

impl Sim {
    pub fn new(cfg: SimConfig, runtime: RuntimeConfig) -> anyhow::Result<Sim> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .user_agent("Linq-Webhooks/2026-02-03 (linq-sim)")
            .build()?;
        Ok(Sim {
            cfg,
            state: Mutex::new(State::new(runtime)),
            http,
            media: Default::default(),
            attachments: Default::default(),
            api_called: tokio::sync::Notify::new(),
        })
    }

    /// Lock the state; a panic elsewhere must not wedge the simulator.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Wall clock for timestamps and a monotonic clock for the rate limiter.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub wall: OffsetDateTime,
    pub mono: Instant,
}

impl Now {
    pub fn get() -> Now {
        Now {
            wall: OffsetDateTime::now_utc(),
            mono: Instant::now(),
        }
    }
}

/// RFC 3339 in UTC with nanoseconds, as Linq writes `created_at`.
pub fn fmt_ts(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

pub fn new_id() -> String {
    Uuid::new_v4().to_string()
}

/// Linq's trace ids are 32 lowercase hex digits.
pub fn new_trace_id() -> String {
    Uuid::new_v4().simple().to_string()
}

/// Settings the control interface may change at run time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeConfig {
    pub webhook_url: Option<String>,
    pub echo_outbound: bool,
    pub retry_base_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApiFault {
    pub status: u16,
    pub count: u32,
    #[serde(default)]
    pub retry_after_s: Option<u64>,
    #[serde(default)]
    pub path_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Faults {
    pub api: Option<ApiFault>,
    pub api_delay_ms: u64,
    pub api_down: bool,
    pub duplicate_deliveries: bool,
    /// Keep new deliveries back (state "held") until `/control/release`, which sends them in
    /// the order asked for: how a test makes Linq deliver out of order.
    #[serde(default)]
    pub hold_deliveries: bool,
}

/// A participant of one chat (Linq's `ChatHandle`).
#[derive(Debug, Clone)]
pub struct Handle {
    pub id: String,
    pub handle: String,
    pub joined_at: OffsetDateTime,
    pub service: String,
    pub is_me: bool,
}

#[derive(Debug, Clone)]
pub struct Chat {
    pub id: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub display_name: Option<String>,
    /// A display name was set explicitly; such groups are not reused by `POST /v3/chats`.
    pub named: bool,
    pub group_chat_icon: Option<String>,
    pub handles: Vec<Handle>,
    pub is_group: bool,
    pub service: String,
    pub typing: bool,
}

impl Chat {
    pub fn me(&self) -> &Handle {
        // Every chat is created with the bot's handle first.
        &self.handles[0]
    }
    pub fn handle(&self, h: &str) -> Option<&Handle> {
        self.handles.iter().find(|x| x.handle == h)
    }
    pub fn others(&self) -> impl Iterator<Item = &Handle> {
        self.handles.iter().filter(|h| !h.is_me)
    }
    fn other_set(&self) -> HashSet<&str> {
        self.others().map(|h| h.handle.as_str()).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub chat_id: String,
    pub direction: Direction,
    pub from: String,
    /// Response-shaped parts (`reactions` included).
    pub parts: Vec<Value>,
    pub reply_to: Option<ReplyTo>,
    pub idempotency_key: Option<String>,
    pub effect: Option<Value>,
    pub service: String,
    pub preferred_service: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub sent_at: Option<OffsetDateTime>,
    pub delivered_at: Option<OffsetDateTime>,
    pub read_at: Option<OffsetDateTime>,
    /// pending | queued | sent | delivered | received | read | failed
    pub delivery_status: String,
    pub reconciled_at: Option<OffsetDateTime>,
}

impl Message {
    /// The text parts joined with newlines.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["value"].as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub seq: u64,
    pub at: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    pub duration_ms: u64,
    pub body: Value,
    pub response: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub attempt: u32,
    pub at: String,
    pub webhook_timestamp: i64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: u64,
    pub event_id: String,
    pub event_type: String,
    pub url: Option<String>,
    pub created_at: String,
    /// pending | delivered | failed (non-retryable 4xx) | exhausted | no_webhook_url
    pub state: String,
    pub duplicate: bool,
    pub redelivery: bool,
    pub attempts: Vec<Attempt>,
}

#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event_type: String,
    pub body: String,
}

/// Sliding-window limiter keyed by chat (one sender–recipient pair or group).
#[derive(Debug, Default)]
pub struct RateLimiter {
    hits: HashMap<String, VecDeque<Instant>>,
}

impl RateLimiter {
    /// Take one slot, or say how many seconds until one frees up.
    pub fn acquire(&mut self, key: &str, now: Instant) -> Result<(), u64> {
        let q = self.hits.entry(key.to_string()).or_default();
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RATE_LIMIT_WINDOW)
        {
            q.pop_front();
        }
        if q.len() >= RATE_LIMIT_MAX {
            let oldest = q.front().copied().unwrap_or(now);
            let wait = RATE_LIMIT_WINDOW.saturating_sub(now.duration_since(oldest));
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(secs.max(1));
        }
        q.push_back(now);
        Ok(())
    }
}

/// What an accepted send produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub message_id: String,
    /// The idempotency key was seen before: this is the original message, nothing new was sent.
    pub replay: bool,
}

pub struct State {
    pub chats: Vec<Chat>,
    pub messages: Vec<Message>,
    idempotency: HashMap<(String, String), String>,
    rate: RateLimiter,
    pub opted_out: HashSet<String>,
    pub calls: Vec<CallRecord>,
    pub deliveries: Vec<Delivery>,
    pub events: HashMap<String, StoredEvent>,
    pub config: RuntimeConfig,
    pub faults: Faults,
    next_seq: u64,
}

const OPT_OUT_KEYWORDS: &[&str] = &["STOP", "UNSUBSCRIBE", "OPTOUT", "CANCEL", "END", "QUIT"];

/// Linq's opt-out rule: the whole trimmed message is a keyword (exact case), or "opt out" in
/// any casing with or without a space or hyphen.
pub fn is_opt_out(text: &str) -> bool {
    let t = text.trim();
    OPT_OUT_KEYWORDS.contains(&t) || t.to_lowercase().replace([' ', '-'], "") == "optout"
}

impl State {
    pub fn new(config: RuntimeConfig) -> State {
        State {
            chats: Vec::new(),
            messages: Vec::new(),
            idempotency: HashMap::new(),
            rate: RateLimiter::default(),
            opted_out: HashSet::new(),
            calls: Vec::new(),
            deliveries: Vec::new(),
            events: HashMap::new(),
            config,
            faults: Faults::default(),
            next_seq: 1,
        }
    }

    /// Forget chats, messages, logs and faults; keep the run-time config.
    pub fn reset(&mut self) {
        *self = State::new(self.config.clone());
    }

    pub fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    pub fn chat(&self, id: &str) -> Option<&Chat> {
        self.chats.iter().find(|c| c.id == id)
    }

    pub fn chat_mut(&mut self, id: &str) -> Option<&mut Chat> {
        self.chats.iter_mut().find(|c| c.id == id)
    }

    pub fn message(&self, id: &str) -> Option<&Message> {
        self.messages.iter().find(|m| m.id == id)
    }

    pub fn message_mut(&mut self, id: &str) -> Option<&mut Message> {
        self.messages.iter_mut().find(|m| m.id == id)
    }

    /// An unnamed chat whose other participants are exactly `others` (how Linq reuses chats).
    pub fn find_chat_with(&self, others: &[String]) -> Option<&Chat> {
        let want: HashSet<&str> = others.iter().map(String::as_str).collect();
        let group = want.len() > 1;
        self.chats
            .iter()
            .find(|c| !c.named && c.is_group == group && c.other_set() == want)
    }

    /// Create a chat between the bot and `others` (deduplicated; more than one makes a group).
    pub fn create_chat(
        &mut self,
        bot: &str,
        others: &[String],
        service: &str,
        display_name: Option<String>,
        id: Option<String>,
        now: Now,
    ) -> String {
        let mut uniq: Vec<String> = Vec::new();
        for o in others {
            if o != bot && !uniq.contains(o) {
                uniq.push(o.clone());
            }
        }
        let mk = |h: &str, is_me: bool| Handle {
            id: new_id(),
            handle: h.to_string(),
            joined_at: now.wall,
            service: service.to_string(),
            is_me,
        };
        let mut handles = vec![mk(bot, true)];
        handles.extend(uniq.iter().map(|h| mk(h, false)));
        let id = id.unwrap_or_else(new_id);
        let named = display_name.is_some();
        self.chats.push(Chat {
            id: id.clone(),
            created_at: now.wall,
            updated_at: now.wall,
            display_name: display_name.or_else(|| Some(uniq.join(", "))),
            named,
            group_chat_icon: None,
            is_group: uniq.len() > 1,
            handles,
            service: service.to_string(),
            typing: false,
        });
        id
    }

    /// Add `handle` to a chat if it is not a participant yet (a sender we had not seen).
    pub fn ensure_participant(&mut self, chat_id: &str, handle: &str, now: Now) {
        if let Some(c) = self.chat_mut(chat_id) {
            if c.handle(handle).is_none() {
                let service = c.service.clone();
                c.handles.push(Handle {
                    id: new_id(),
                    handle: handle.to_string(),
                    joined_at: now.wall,
                    service,
                    is_me: false,
                });
                c.is_group = c.others().count() > 1;
            }
        }
    }

    /// Whether sends into this chat are blocked by an opt-out (1:1 chats only).
    pub fn chat_opted_out(&self, chat: &Chat) -> bool {
        !chat.is_group && chat.others().any(|h| self.opted_out.contains(&h.handle))
    }

    /// Accept a message from the bot into a chat: idempotency, reply target, opt-out and the
    /// rate limit, in that order. A replayed key returns the original message untouched.
    pub fn send_outbound(
        &mut self,
        chat_id: &str,
        content: Content,
        override_optout: bool,
        now: Now,
    ) -> Result<Sent, ApiError> {
        let chat = self.chat(chat_id).ok_or_else(ApiError::chat_not_found)?;
        if content.has_mention() && !chat.is_group {
            return Err(ApiError::new(
                409,
                2023,
                "Mentions are only supported in group chats",
            ));
        }
        if let Some(k) = &content.idempotency_key {
            if let Some(id) = self.idempotency.get(&(chat_id.to_string(), k.clone())) {
                return Ok(Sent {
                    message_id: id.clone(),
                    replay: true,
                });
            }
        }
        if let Some(r) = &content.reply_to {
            let target = self.message(&r.message_id).filter(|m| m.chat_id == chat_id);
            let Some(target) = target else {
                return Err(ApiError::new(
                    404,
                    2002,
                    "reply_to.message_id is not a message of this chat",
                ));
            };
            if r.part_index as usize >= target.parts.len() {
                return Err(ApiError::new(
                    400,
                    1005,
                    "reply_to.part_index is out of range",
                ));
            }
        }
        if !override_optout && self.chat_opted_out(chat) {
            return Err(ApiError::new(
                403,
                2024,
                "The recipient has opted out of messages from this line",
            ));
        }
        let chat_service = chat.service.clone();
        let bot = chat.me().handle.clone();
        if let Err(retry_after) = self.rate.acquire(chat_id, now.mono) {
            return Err(ApiError::rate_limited(retry_after));
        }
        let id = new_id();
        let service = content.preferred_service.clone().unwrap_or(chat_service);
        if let Some(k) = &content.idempotency_key {
            self.idempotency
                .insert((chat_id.to_string(), k.clone()), id.clone());
        }
        self.messages.push(Message {
            id: id.clone(),
            chat_id: chat_id.to_string(),
            direction: Direction::Outbound,
            from: bot,
            parts: content.parts,
            reply_to: content.reply_to,
            idempotency_key: content.idempotency_key,
            effect: content.effect,
            service,
            preferred_service: content.preferred_service,
            created_at: now.wall,
            updated_at: now.wall,
            sent_at: None,
            delivered_at: None,
            read_at: None,
            delivery_status: "queued".into(),
            reconciled_at: None,
        });
        if let Some(c) = self.chat_mut(chat_id) {
            c.updated_at = now.wall;
            c.typing = false;
        }
        Ok(Sent {
            message_id: id,
            replay: false,
        })
    }

    /// Record a message a person sent to the bot. Updates opt-out state like Linq does.
    #[allow(clippy::too_many_arguments)]
    pub fn record_inbound(
        &mut self,
        chat_id: &str,
        from: &str,
        parts: Vec<Value>,
        reply_to: Option<ReplyTo>,
        service: &str,
        reconciled: bool,
        now: Now,
    ) -> Result<String, ApiError> {
        if let Some(r) = &reply_to {
            if self
                .message(&r.message_id)
                .is_none_or(|m| m.chat_id != chat_id)
            {
                return Err(ApiError::message_not_found());
            }
        }
        self.ensure_participant(chat_id, from, now);
        let chat = self.chat(chat_id).ok_or_else(ApiError::chat_not_found)?;
        let is_group = chat.is_group;
        let id = new_id();
        let msg = Message {
            id: id.clone(),
            chat_id: chat_id.to_string(),
            direction: Direction::Inbound,
            from: from.to_string(),
            parts,
            reply_to,
            idempotency_key: None,
            effect: None,
            service: service.to_string(),
            preferred_service: None,
            created_at: now.wall,
            updated_at: now.wall,
            sent_at: Some(if reconciled {
                now.wall - time::Duration::minutes(10)
            } else {
                now.wall
            }),
            delivered_at: None,
            read_at: None,
            delivery_status: "received".into(),
            reconciled_at: reconciled.then_some(now.wall),
        };
        let text = msg.text();
        if is_opt_out(&text) {
            if !is_group {
                self.opted_out.insert(from.to_string());
            }
        } else {
            self.opted_out.remove(from);
        }
        self.messages.push(msg);
        if let Some(c) = self.chat_mut(chat_id) {
            c.updated_at = now.wall;
        }
        Ok(id)
    }

    /// `POST /v3/chats/{id}/read`: every inbound message in the chat becomes read.
    pub fn mark_read(&mut self, chat_id: &str, now: Now) {
        for m in self
            .messages
            .iter_mut()
            .filter(|m| m.chat_id == chat_id && m.direction == Direction::Inbound)
        {
            if m.read_at.is_none() {
                m.read_at = Some(now.wall);
                m.delivery_status = "read".into();
                m.updated_at = now.wall;
            }
        }
    }

    /// Add or remove the bot's tapback on a message part.
    pub fn react(&mut self, message_id: &str, req: &Value, now: Now) -> Result<(), ApiError> {
        let op = match req.get("operation").and_then(Value::as_str) {
            Some(o @ ("add" | "remove")) => o,
            None => return Err(ApiError::missing("operation")),
            Some(_) => return Err(ApiError::bad_content("operation must be add or remove")),
        };
        let ty = match req.get("type").and_then(Value::as_str) {
            Some(
                t @ ("love" | "like" | "dislike" | "laugh" | "emphasize" | "question" | "custom"
                | "sticker"),
            ) => t,
            None => return Err(ApiError::missing("type")),
            Some(_) => return Err(ApiError::bad_content("type is not a known reaction type")),
        };
        let custom = req.get("custom_emoji").and_then(Value::as_str);
        if ty == "custom" && custom.is_none() {
            return Err(ApiError::missing("custom_emoji"));
        }
        if ty == "sticker" {
            if op == "remove" {
                return Err(ApiError::new(400, 1005, "Stickers cannot be removed"));
            }
            let sources = ["emoji", "url", "attachment_id"]
                .iter()
                .filter(|k| req.get(**k).is_some_and(|v| !v.is_null()))
                .count();
            if sources != 1 {
                return Err(ApiError::bad_content(
                    "exactly one of emoji, url or attachment_id is required for a sticker",
                ));
            }
        }
        let part_index = match req.get("part_index") {
            None | Some(Value::Null) => 0usize,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| ApiError::bad_body("part_index must be an integer >= 0"))?
                as usize,
        };
        let msg = self
            .message(message_id)
            .ok_or_else(ApiError::message_not_found)?;
        if part_index >= msg.parts.len() {
            return Err(ApiError::new(400, 1005, "part_index is out of range"));
        }
        let chat = self
            .chat(&msg.chat_id)
            .ok_or_else(ApiError::chat_not_found)?;
        let me = crate::wire::handle_json(chat.me());
        let msg = self
            .message_mut(message_id)
            .ok_or_else(ApiError::message_not_found)?;
        msg.updated_at = now.wall;
        let part = &mut msg.parts[part_index];
        let mut list = part["reactions"].as_array().cloned().unwrap_or_default();
        let same = |r: &Value| {
            r["is_me"] == true
                && r["type"] == ty
                && (ty != "custom" || r["custom_emoji"].as_str() == custom)
        };
        if op == "add" {
            if !list.iter().any(same) || ty == "sticker" {
                list.push(json!({
                    "id": new_id(), "handle": me, "is_me": true, "type": ty,
                    "custom_emoji": custom, "sticker": null,
                }));
            }
        } else {
            list.retain(|r| !same(r));
        }
        part["reactions"] = if list.is_empty() {
            Value::Null
        } else {
            Value::Array(list)
        };
        Ok(())
    }

    /// Consume one injected API failure if one matches `path`.
    pub fn take_api_fault(&mut self, path: &str) -> Option<ApiError> {
        let f = self.faults.api.as_mut()?;
        if f.count == 0 {
            return None;
        }
        if let Some(p) = &f.path_prefix {
            if !path_matches(path, p) {
                return None;
            }
        }
        f.count -= 1;
        Some(ApiError::injected(f.status, f.retry_after_s))
    }
}

/// `prefix` matches the full path or the path below `/api/partner`.
pub fn path_matches(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
        || path
            .strip_prefix("/api/partner")
            .is_some_and(|p| p.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::parse_content;

    const BOT: &str = "+15550001000";
    const ALICE: &str = "+15550002000";

    fn state() -> State {
        State::new(RuntimeConfig {
            webhook_url: None,
            echo_outbound: true,
            retry_base_ms: 200,
        })
    }

    fn text(s: &str, key: Option<&str>) -> Content {
        let mut m = json!({"parts": [{"type": "text", "value": s}]});
        if let Some(k) = key {
            m["idempotency_key"] = json!(k);
        }
        parse_content(&m).unwrap()
    }

    fn dm(st: &mut State, now: Now) -> String {
        st.create_chat(BOT, &[ALICE.to_string()], "iMessage", None, None, now)
    }

    #[test]
    fn idempotent_send_returns_original_and_records_once() {
        let mut st = state();
        let now = Now::get();
        let c = dm(&mut st, now);
        let a = st
            .send_outbound(&c, text("hi", Some("k1")), false, now)
            .unwrap();
        let b = st
            .send_outbound(&c, text("hi again", Some("k1")), false, now)
            .unwrap();
        assert!(!a.replay);
        assert!(b.replay);
        assert_eq!(a.message_id, b.message_id);
        assert_eq!(st.messages.len(), 1);
        assert_eq!(st.messages[0].text(), "hi");
        // The same key in another chat is a different message.
        let c2 = st.create_chat(BOT, &["+15550003000".into()], "iMessage", None, None, now);
        let d = st
            .send_outbound(&c2, text("hi", Some("k1")), false, now)
            .unwrap();
        assert!(!d.replay);
        assert_ne!(d.message_id, a.message_id);
    }

    #[test]
    fn rate_limit_is_30_per_minute_per_chat() {
        let mut st = state();
        let t0 = Now::get();
        let c = dm(&mut st, t0);
        let other = st.create_chat(BOT, &["+15550003000".into()], "iMessage", None, None, t0);
        for i in 0..RATE_LIMIT_MAX {
            let now = Now {
                mono: t0.mono + Duration::from_millis(i as u64 * 100),
                ..t0
            };
            st.send_outbound(&c, text("x", None), false, now).unwrap();
        }
        let at = Now {
            mono: t0.mono + Duration::from_secs(10),
            ..t0
        };
        let e = st
            .send_outbound(&c, text("x", None), false, at)
            .unwrap_err();
        assert_eq!((e.status, e.code), (429, 1007));
        assert_eq!(e.retry_after, Some(50));
        // Other chats are unaffected, and replays are not counted.
        st.send_outbound(&other, text("x", None), false, at)
            .unwrap();
        // After the window the oldest slot frees up.
        let later = Now {
            mono: t0.mono + Duration::from_millis(60_050),
            ..t0
        };
        st.send_outbound(&c, text("x", None), false, later).unwrap();
        assert_eq!(st.messages.len(), RATE_LIMIT_MAX + 2);
    }

    #[test]
    fn replay_is_not_rate_limited() {
        let mut st = state();
        let now = Now::get();
        let c = dm(&mut st, now);
        st.send_outbound(&c, text("x", Some("k")), false, now)
            .unwrap();
        for _ in 1..RATE_LIMIT_MAX {
            st.send_outbound(&c, text("x", None), false, now).unwrap();
        }
        assert!(
            st.send_outbound(&c, text("x", Some("k")), false, now)
                .unwrap()
                .replay
        );
        assert_eq!(
            st.send_outbound(&c, text("x", None), false, now)
                .unwrap_err()
                .code,
            1007
        );
    }

    #[test]
    fn reply_to_must_be_in_the_chat() {
        let mut st = state();
        let now = Now::get();
        let c = dm(&mut st, now);
        let c2 = st.create_chat(BOT, &["+15550003000".into()], "iMessage", None, None, now);
        let m = st
            .record_inbound(
                &c2,
                "+15550003000",
                vec![json!({"type":"text","value":"a"})],
                None,
                "iMessage",
                false,
                now,
            )
            .unwrap();
        let mut content = text("re", None);
        content.reply_to = Some(ReplyTo {
            message_id: m.clone(),
            part_index: 0,
        });
        assert_eq!(
            st.send_outbound(&c, content.clone(), false, now)
                .unwrap_err()
                .code,
            2002
        );
        assert!(st.send_outbound(&c2, content, false, now).is_ok());
        assert_eq!(
            st.send_outbound("nope", text("x", None), false, now)
                .unwrap_err()
                .code,
            2001
        );
    }

    #[test]
    fn opt_out_blocks_dm_until_they_write_again() {
        let mut st = state();
        let now = Now::get();
        let c = dm(&mut st, now);
        let stop = vec![json!({"type":"text","value":" STOP "})];
        st.record_inbound(&c, ALICE, stop, None, "iMessage", false, now)
            .unwrap();
        let e = st
            .send_outbound(&c, text("x", None), false, now)
            .unwrap_err();
        assert_eq!((e.status, e.code), (403, 2024));
        assert!(st.send_outbound(&c, text("bye", None), true, now).is_ok());
        st.record_inbound(
            &c,
            ALICE,
            vec![json!({"type":"text","value":"ok hi"})],
            None,
            "iMessage",
            false,
            now,
        )
        .unwrap();
        assert!(st.send_outbound(&c, text("x", None), false, now).is_ok());
        assert!(
            is_opt_out("Opt-Out")
                && is_opt_out("opt out")
                && !is_opt_out("stop")
                && !is_opt_out("please STOP")
        );
    }

    #[test]
    fn chats_are_reused_by_participant_set() {
        let mut st = state();
        let now = Now::get();
        let c = dm(&mut st, now);
        assert_eq!(
            st.find_chat_with(&[ALICE.into()]).map(|c| c.id.clone()),
            Some(c)
        );
        let g = st.create_chat(
            BOT,
            &[ALICE.into(), "+15550003000".into()],
            "iMessage",
            None,
            None,
            now,
        );
        assert!(st.chat(&g).unwrap().is_group);
        assert_eq!(
            st.find_chat_with(&["+15550003000".into(), ALICE.into()])
                .map(|c| c.id.clone()),
            Some(g)
        );
        assert!(st.find_chat_with(&["+15550009999".into()]).is_none());
    }

    #[test]
    fn reactions_add_and_remove() {
        let mut st = state();
        let now = Now::get();
        let c = dm(&mut st, now);
        let m = st
            .record_inbound(
                &c,
                ALICE,
                vec![json!({"type":"text","value":"a","reactions":null})],
                None,
                "iMessage",
                false,
                now,
            )
            .unwrap();
        st.react(&m, &json!({"operation":"add","type":"love"}), now)
            .unwrap();
        assert_eq!(
            st.message(&m).unwrap().parts[0]["reactions"][0]["type"],
            "love"
        );
        st.react(&m, &json!({"operation":"remove","type":"love"}), now)
            .unwrap();
        assert!(st.message(&m).unwrap().parts[0]["reactions"].is_null());
        assert_eq!(
            st.react(&m, &json!({"operation":"add","type":"custom"}), now)
                .unwrap_err()
                .code,
            1001
        );
        assert_eq!(
            st.react(
                &m,
                &json!({"operation":"add","type":"love","part_index":3}),
                now
            )
            .unwrap_err()
            .code,
            1005
        );
        assert_eq!(
            st.react("zz", &json!({"operation":"add","type":"love"}), now)
                .unwrap_err()
                .code,
            2002
        );
    }

    #[test]
    fn faults_are_consumed_and_filtered_by_path() {
        let mut st = state();
        st.faults.api = Some(ApiFault {
            status: 429,
            count: 2,
            retry_after_s: Some(3),
            path_prefix: Some("/v3/chats".into()),
        });
        assert!(st.take_api_fault("/api/partner/v3/messages/x").is_none());
        let e = st
            .take_api_fault("/api/partner/v3/chats/x/messages")
            .unwrap();
        assert_eq!((e.status, e.code, e.retry_after), (429, 1007, Some(3)));
        assert!(st.take_api_fault("/api/partner/v3/chats").is_some());
        assert!(st.take_api_fault("/api/partner/v3/chats").is_none());
    }

    #[test]
    fn timestamps_have_nanoseconds() {
        let t = time::macros::datetime!(2026-02-05 19:52:18.1 UTC);
        assert_eq!(fmt_ts(t), "2026-02-05T19:52:18.100000000Z");
    }
}
