//! The control interface (HTTP/1.1 JSON, on a Unix socket and optionally TCP): what tests and
//! the demo use to play the people on the other side, inspect what the gateway did, and
//! inject faults. Not part of Linq's API.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::state::{fmt_ts, path_matches, ApiFault, Direction, Faults, Message, Now, Sim};
use crate::validate::{utf16_len, valid_handle, ReplyTo};
use crate::webhooks;

type Shared = Arc<Sim>;

pub fn router(sim: Shared) -> Router {
    Router::new()
        .route("/control/health", get(health))
        .route("/control/inbound", post(inbound))
        .route("/control/event", post(event))
        .route("/control/redeliver", post(redeliver))
        .route("/control/release", post(release))
        .route("/control/messages", get(messages))
        .route("/control/sent", get(sent))
        .route("/control/calls", get(calls))
        .route("/control/deliveries", get(deliveries))
        .route("/control/chats", get(chats))
        .route("/control/config", get(get_config).post(set_config))
        .route(
            "/control/faults",
            get(get_faults).post(set_faults).delete(clear_faults),
        )
        .route("/control/reset", post(reset))
        .fallback(|| async { err(404, "no such control route") })
        .with_state(sim)
}

fn err(status: u16, msg: impl Into<String>) -> Response {
    let s = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (s, Json(json!({"error": msg.into()}))).into_response()
}

fn parse<T: DeserializeOwned>(b: &Bytes) -> Result<T, String> {
    let b: &[u8] = if b.is_empty() { b"{}" } else { b };
    serde_json::from_slice(b).map_err(|e| format!("bad JSON body: {e}"))
}

async fn health(State(sim): State<Shared>) -> Response {
    let url = sim.lock().config.webhook_url.clone();
    Json(json!({"ok": true, "bot_handle": sim.cfg.bot_handle, "webhook_url": url})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InboundReq {
    from: String,
    #[serde(default)]
    text: String,
    chat_id: Option<String>,
    #[serde(default)]
    group: bool,
    #[serde(default)]
    participants: Vec<String>,
    display_name: Option<String>,
    reply_to: Option<String>,
    #[serde(default)]
    mentions_me: bool,
    /// `[start, end)` in UTF-16 units; defaults to the first word.
    mention_range: Option<[usize; 2]>,
    service: Option<String>,
    #[serde(default)]
    reconciled: bool,
    event_id: Option<String>,
    /// Media parts after the text (src/media.rs).
    #[serde(default)]
    media: Vec<crate::media::InboundMedia>,
}

/// A person sends the bot a message: record it and deliver `message.received`.
async fn inbound(State(sim): State<Shared>, body: Bytes) -> Response {
    let req: InboundReq = match parse(&body) {
        Ok(r) => r,
        Err(e) => return err(400, e),
    };
    if !valid_handle(&req.from) {
        return err(400, "from must be an E.164 number or an email address");
    }
    if let Some(bad) = req.participants.iter().find(|p| !valid_handle(p)) {
        return err(
            400,
            format!("participant {bad} is not an E.164 number or an email address"),
        );
    }
    let service = req.service.clone().unwrap_or_else(|| "iMessage".into());
    if !matches!(service.as_str(), "iMessage" | "SMS" | "RCS") {
        return err(400, "service must be iMessage, SMS or RCS");
    }
    let bot = sim.cfg.bot_handle.clone();
    let now = Now::get();
    let (chat_id, message_id, data) = {
        let mut st = sim.lock();
        let mut others: Vec<String> = Vec::new();
        if req.group {
            others.extend(req.participants.iter().filter(|p| **p != bot).cloned());
        }
        if !others.contains(&req.from) {
            others.push(req.from.clone());
        }
        if req.group && others.len() < 2 {
            return err(
                400,
                "a group needs at least two participants besides the bot",
            );
        }
        let existing = match &req.chat_id {
            Some(id) => st.chat(id).map(|c| c.id.clone()),
            None => st.find_chat_with(&others).map(|c| c.id.clone()),
        };
        let chat_id = match existing {
            Some(id) => id,
            None => st.create_chat(
                &bot,
                &others,
                &service,
                req.display_name.clone(),
                req.chat_id.clone(),
                now,
            ),
        };
        let mentions = if req.mentions_me && service == "iMessage" {
            let range = req.mention_range.unwrap_or_else(|| {
                let first = req.text.split_whitespace().next().unwrap_or(&req.text);
                [0, utf16_len(first)]
            });
            json!([{"handle": bot, "is_me": true, "range": range}])
        } else {
            Value::Null
        };
        let mut parts = Vec::new();
        if !req.text.is_empty() || req.media.is_empty() {
            parts.push(
                json!({"type": "text", "value": req.text, "reactions": null, "mentions": mentions}),
            );
        }
        for m in &req.media {
            match crate::media::part(&sim, m) {
                Ok(p) => parts.push(p),
                Err(e) => return err(400, e),
            }
        }
        let reply_to = req.reply_to.clone().map(|message_id| ReplyTo {
            message_id,
            part_index: 0,
        });
        let message_id = match st.record_inbound(
            &chat_id,
            &req.from,
            parts,
            reply_to,
            &service,
            req.reconciled,
            now,
        ) {
            Ok(id) => id,
            Err(e) => return err(e.status, e.message),
        };
        let data = st
            .message(&message_id)
            .map(|m| st.message_event_data(m))
            .unwrap_or(Value::Null);
        (chat_id, message_id, data)
    };
    let e = webhooks::emit(&sim, "message.received", data, req.event_id).await;
    Json(json!({"chat_id": chat_id, "message_id": message_id, "event_id": e.event_id, "status": e.status})).into_response()
}

#[derive(Deserialize)]
struct EventReq {
    event_type: String,
    data: Value,
    event_id: Option<String>,
}

/// Deliver an arbitrary event (reactions, participants, group names, …), signed as usual.
async fn event(State(sim): State<Shared>, body: Bytes) -> Response {
    let req: EventReq = match parse(&body) {
        Ok(r) => r,
        Err(e) => return err(400, e),
    };
    let chat_id = req
        .data
        .get("chat_id")
        .or_else(|| req.data.pointer("/chat/id"))
        .cloned()
        .unwrap_or(Value::Null);
    let message_id = match req.data.get("message_id") {
        Some(m) => m.clone(),
        None if req.event_type.starts_with("message.") => {
            req.data.get("id").cloned().unwrap_or(Value::Null)
        }
        None => Value::Null,
    };
    let e = webhooks::emit(&sim, &req.event_type, req.data, req.event_id).await;
    Json(json!({"chat_id": chat_id, "message_id": message_id, "event_id": e.event_id, "status": e.status})).into_response()
}

#[derive(Deserialize)]
struct RedeliverReq {
    event_id: String,
}

async fn redeliver(State(sim): State<Shared>, body: Bytes) -> Response {
    let req: RedeliverReq = match parse(&body) {
        Ok(r) => r,
        Err(e) => return err(400, e),
    };
    match webhooks::redeliver(&sim, &req.event_id).await {
        None => err(404, "unknown event_id"),
        Some(status) => Json(json!({"event_id": req.event_id, "status": status})).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseReq {
    #[serde(default)]
    order: Option<String>,
}

/// Send the held deliveries: `{"order": "fifo"|"reverse"}` (default fifo).
async fn release(State(sim): State<Shared>, body: Bytes) -> Response {
    let req: ReleaseReq = if body.is_empty() {
        ReleaseReq { order: None }
    } else {
        match parse(&body) {
            Ok(r) => r,
            Err(e) => return err(400, e),
        }
    };
    let reverse = match req.order.as_deref() {
        None | Some("fifo") => false,
        Some("reverse") => true,
        Some(o) => {
            return err(
                400,
                format!("order must be \"fifo\" or \"reverse\", not {o:?}"),
            )
        }
    };
    let sent = webhooks::release_held(&sim, reverse).await;
    let sent: Vec<Value> = sent
        .into_iter()
        .map(|(e, s)| json!({"event_id": e, "status": s}))
        .collect();
    Json(json!({ "released": sent })).into_response()
}

#[derive(Deserialize)]
struct ChatFilter {
    chat_id: Option<String>,
}

/// `GET /control/sent`'s query: with `more_than` and `wait_ms`, the answer waits (at most
/// `wait_ms`, capped at `MAX_WAIT_MS`) until the list is longer than `more_than`, so a client
/// waiting for a reply asks once instead of polling the simulator it is measuring.
#[derive(Deserialize)]
struct SentQuery {
    chat_id: Option<String>,
    more_than: Option<usize>,
    wait_ms: Option<u64>,
}

const MAX_WAIT_MS: u64 = 60_000;

/// The messages `/control/messages` and `/control/sent` list, oldest first.
fn selected<'a>(
    messages: &'a [Message],
    chat_id: Option<&'a str>,
    only_outbound: bool,
) -> impl Iterator<Item = &'a Message> {
    messages
        .iter()
        .filter(move |m| chat_id.is_none_or(|c| m.chat_id == c))
        .filter(move |m| !only_outbound || m.direction == Direction::Outbound)
}

fn message_view(m: &Message) -> Value {
    json!({
        "id": m.id,
        "chat_id": m.chat_id,
        "direction": m.direction,
        "from": m.from,
        "text": m.text(),
        "parts": m.parts,
        "reply_to": m.reply_to.as_ref().map(|r| r.message_id.clone()),
        "idempotency_key": m.idempotency_key,
        "service": m.service,
        "delivery_status": m.delivery_status,
        "created_at": fmt_ts(m.created_at),
    })
}

fn list_messages(sim: &Sim, chat_id: Option<&str>, only_outbound: bool) -> Response {
    let st = sim.lock();
    let v: Vec<Value> = selected(&st.messages, chat_id, only_outbound)
        .map(message_view)
        .collect();
    Json(v).into_response()
}

async fn messages(State(sim): State<Shared>, Query(f): Query<ChatFilter>) -> Response {
    list_messages(&sim, f.chat_id.as_deref(), false)
}

async fn sent(State(sim): State<Shared>, Query(f): Query<SentQuery>) -> Response {
    let chat = f.chat_id.as_deref();
    if let (Some(n), Some(ms)) = (f.more_than, f.wait_ms) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms.min(MAX_WAIT_MS));
        loop {
            // Registered before the count, so a send between the two still wakes this one.
            let called = sim.api_called.notified();
            tokio::pin!(called);
            called.as_mut().enable();
            if selected(&sim.lock().messages, chat, true).count() > n {
                break;
            }
            if tokio::time::timeout_at(deadline, called).await.is_err() {
                break;
            }
        }
    }
    list_messages(&sim, chat, true)
}

#[derive(Deserialize)]
struct CallFilter {
    path_prefix: Option<String>,
    method: Option<String>,
}

async fn calls(State(sim): State<Shared>, Query(f): Query<CallFilter>) -> Response {
    let st = sim.lock();
    let v: Vec<_> = st
        .calls
        .iter()
        .filter(|c| {
            f.path_prefix
                .as_deref()
                .is_none_or(|p| path_matches(&c.path, p))
        })
        .filter(|c| {
            f.method
                .as_deref()
                .is_none_or(|m| c.method.eq_ignore_ascii_case(m))
        })
        .collect();
    Json(json!(v)).into_response()
}

#[derive(Deserialize)]
struct DeliveryFilter {
    event_type: Option<String>,
    event_id: Option<String>,
}

async fn deliveries(State(sim): State<Shared>, Query(f): Query<DeliveryFilter>) -> Response {
    let st = sim.lock();
    let v: Vec<Value> = st
        .deliveries
        .iter()
        .filter(|d| f.event_type.as_deref().is_none_or(|t| d.event_type == t))
        .filter(|d| f.event_id.as_deref().is_none_or(|id| d.event_id == id))
        .map(|d| {
            let mut v = json!(d);
            let payload = st
                .events
                .get(&d.event_id)
                .and_then(|e| serde_json::from_str::<Value>(&e.body).ok());
            v["payload"] = payload.unwrap_or(Value::Null);
            v
        })
        .collect();
    Json(v).into_response()
}

async fn chats(State(sim): State<Shared>) -> Response {
    let st = sim.lock();
    let v: Vec<Value> = st
        .chats
        .iter()
        .map(|c| {
            let mut v = st.chat_json(c);
            v["typing"] = json!(c.typing);
            v["message_count"] = json!(st.messages.iter().filter(|m| m.chat_id == c.id).count());
            v
        })
        .collect();
    Json(v).into_response()
}

async fn get_config(State(sim): State<Shared>) -> Response {
    Json(json!(sim.lock().config)).into_response()
}

/// Fields present are set; `webhook_url: null` removes the URL.
async fn set_config(State(sim): State<Shared>, body: Bytes) -> Response {
    let v: Value = match parse(&body) {
        Ok(v) => v,
        Err(e) => return err(400, e),
    };
    let mut st = sim.lock();
    if let Some(u) = v.get("webhook_url") {
        match u {
            Value::Null => st.config.webhook_url = None,
            Value::String(s) => st.config.webhook_url = Some(s.clone()),
            _ => return err(400, "webhook_url must be a string or null"),
        }
    }
    if let Some(e) = v.get("echo_outbound") {
        match e.as_bool() {
            Some(b) => st.config.echo_outbound = b,
            None => return err(400, "echo_outbound must be a boolean"),
        }
    }
    if let Some(r) = v.get("retry_base_ms") {
        match r.as_u64() {
            Some(n) => st.config.retry_base_ms = n,
            None => return err(400, "retry_base_ms must be a non-negative integer"),
        }
    }
    Json(json!(st.config)).into_response()
}

async fn get_faults(State(sim): State<Shared>) -> Response {
    Json(json!(sim.lock().faults)).into_response()
}

/// Fields present are set (`api: null` removes the API fault); the rest stay.
async fn set_faults(State(sim): State<Shared>, body: Bytes) -> Response {
    let v: Value = match parse(&body) {
        Ok(v) => v,
        Err(e) => return err(400, e),
    };
    let mut st = sim.lock();
    let mut f = st.faults.clone();
    if let Some(a) = v.get("api") {
        f.api = match serde_json::from_value::<Option<ApiFault>>(a.clone()) {
            Ok(x) => x,
            Err(e) => return err(400, format!("bad api fault: {e}")),
        };
        if let Some(a) = &f.api {
            if !(100..=599).contains(&a.status) {
                return err(400, "api.status must be an HTTP status");
            }
        }
    }
    macro_rules! field {
        ($name:ident, $conv:ident) => {
            if let Some(x) = v.get(stringify!($name)) {
                match x.$conv() {
                    Some(val) => f.$name = val,
                    None => return err(400, concat!(stringify!($name), " has the wrong type")),
                }
            }
        };
    }
    field!(api_delay_ms, as_u64);
    field!(api_down, as_bool);
    field!(duplicate_deliveries, as_bool);
    field!(hold_deliveries, as_bool);
    st.faults = f;
    Json(json!(st.faults)).into_response()
}

async fn clear_faults(State(sim): State<Shared>) -> Response {
    let mut st = sim.lock();
    st.faults = Faults::default();
    Json(json!(st.faults)).into_response()
}

async fn reset(State(sim): State<Shared>) -> Response {
    sim.lock().reset();
    Json(json!({"ok": true})).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::state::{Now, RuntimeConfig, SimConfig};

    const TOKEN: &str = "test-token";
    const BOT: &str = "+15550001000";

    async fn serve(router: Router) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, router).await });
        format!("http://{addr}")
    }

    /// A reply sent through the API ends a control request waiting for it, and one waiting for a
    /// message that never comes answers with what there is when its time is up.
    #[tokio::test]
    async fn a_waiting_sent_request_answers_when_the_bot_sends() {
        let sim = Arc::new(
            Sim::new(
                SimConfig {
                    token: TOKEN.into(),
                    secret: crate::webhooks::Secret::parse("whsec_dGVzdC1zZWNyZXQ=").unwrap(),
                    bot_handle: BOT.into(),
                    partner_id: "p".into(),
                    subscription_id: "s".into(),
                    media_base: "http://127.0.0.1:1".into(),
                },
                RuntimeConfig {
                    webhook_url: None,
                    echo_outbound: false,
                    retry_base_ms: 200,
                },
            )
            .unwrap(),
        );
        let chat = sim.lock().create_chat(
            BOT,
            &["+15550002000".to_string()],
            "iMessage",
            None,
            None,
            Now::get(),
        );
        let api = serve(crate::api::router(sim.clone())).await;
        let control = serve(router(sim.clone())).await;
        let http = reqwest::Client::new();
        let sent = |more_than: usize, wait_ms: u64| {
            let (http, control, chat) = (http.clone(), control.clone(), chat.clone());
            async move {
                let v: Vec<Value> = http
                    .get(format!(
                        "{control}/control/sent?chat_id={chat}&more_than={more_than}&wait_ms={wait_ms}"
                    ))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v
            }
        };

        // Nothing sent: answered empty once its wait is over.
        let t = std::time::Instant::now();
        assert!(sent(0, 300).await.is_empty());
        assert!(t.elapsed() >= Duration::from_millis(300));

        let waiting = tokio::spawn(sent(0, 30_000));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "answered before anything was sent");
        let st = http
            .post(format!("{api}/api/partner/v3/chats/{chat}/messages"))
            .bearer_auth(TOKEN)
            .json(&json!({"message": {"parts": [{"type": "text", "value": "the reply"}]}}))
            .send()
            .await
            .unwrap()
            .status();
        assert!(st.is_success(), "{st}");
        let got = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the waiting request was not woken by the send")
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["text"], "the reply");
        // Already more than asked for: answered at once.
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), sent(0, 30_000))
                .await
                .expect("not answered at once")
                .len(),
            1
        );
    }
}
