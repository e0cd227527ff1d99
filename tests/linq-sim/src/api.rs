//! The partner API (`/api/partner/v3/…`): bearer auth, injected faults, the call log, and
//! thin handlers that parse, delegate to `State`, and render with `wire`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::{fmt_ts, new_trace_id, CallRecord, Now, Sim, State as SimState};
use crate::validate::{parse_content, valid_handle, Content};
use crate::webhooks;

type Shared = Arc<Sim>;
type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The trace id of the current call, put in every response body.
#[derive(Clone)]
struct Trace(String);

pub fn router(sim: Shared) -> Router {
    let v3 = Router::new()
        .route("/v3/chats", post(create_chat).get(list_chats))
        .route("/v3/chats/{chat_id}", get(get_chat).put(update_chat))
        .route(
            "/v3/chats/{chat_id}/messages",
            post(send_message).get(list_messages),
        )
        .route(
            "/v3/chats/{chat_id}/typing",
            post(start_typing).delete(stop_typing),
        )
        .route("/v3/chats/{chat_id}/read", post(mark_read))
        .route("/v3/messages", post(create_message))
        .route("/v3/messages/{message_id}", get(get_message))
        .route("/v3/messages/{message_id}/reactions", post(react))
        .route("/v3/attachments", post(create_attachment))
        .route("/v3/attachments/{attachment_id}", get(get_attachment));
    let guarded = Router::new()
        .nest("/api/partner", v3)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(sim.clone(), guard));
    // The media CDN: no partner token (its URLs are the capability), no API faults.
    Router::new()
        .route("/media/{id}", get(crate::media::serve))
        .route("/upload/{id}", axum::routing::put(crate::media::upload))
        .merge(guarded)
        .with_state(sim)
}

// ---- middleware: delay, outage, auth, injected faults, call log ----

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == token)
}

fn body_for_log(b: &Bytes) -> Value {
    if b.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned()))
    }
}

async fn guard(State(sim): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let at = fmt_ts(time::OffsetDateTime::now_utc());
    let trace = new_trace_id();
    let (mut parts, body) = req.into_parts();
    let method = parts.method.to_string();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    let bytes = to_bytes(body, 64 << 20).await.unwrap_or_default();
    parts.extensions.insert(Trace(trace.clone()));

    let (delay, down) = {
        let st = sim.lock();
        (st.faults.api_delay_ms, st.faults.api_down)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let early = if down {
        Some(ApiError::new(503, 4004, "Service temporarily unavailable"))
    } else if !authorized(&parts.headers, &sim.cfg.token) {
        Some(ApiError::unauthorized())
    } else {
        sim.lock().take_api_fault(&path)
    };
    let resp = match early {
        Some(e) => e.into_response_with(&trace),
        None => {
            next.run(Request::from_parts(parts, Body::from(bytes.clone())))
                .await
        }
    };

    let (rparts, rbody) = resp.into_parts();
    let rbytes = to_bytes(rbody, usize::MAX).await.unwrap_or_default();
    let status = rparts.status.as_u16();
    tracing::info!(%method, %path, status, "api call");
    {
        let mut st = sim.lock();
        let seq = st.next_seq();
        st.calls.push(CallRecord {
            seq,
            at,
            method,
            path,
            query,
            status,
            duration_ms: started.elapsed().as_millis() as u64,
            body: body_for_log(&bytes),
            response: body_for_log(&rbytes),
        });
    }
    sim.api_called.notify_waiters();
    Response::from_parts(rparts, Body::from(rbytes))
}

// ---- helpers ----

fn with_trace(t: &Trace, mut body: Value) -> Value {
    if let Value::Object(m) = &mut body {
        m.insert("trace_id".into(), json!(t.0));
    }
    body
}

fn ok(status: u16, t: &Trace, body: Value) -> Response {
    let s = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    (s, Json(with_trace(t, body))).into_response()
}

fn reply(t: &Trace, r: Result<Response>) -> Response {
    r.unwrap_or_else(|e| e.into_response_with(&t.0))
}

fn parse_json(b: &Bytes) -> Result<Value> {
    if b.is_empty() {
        return Err(ApiError::bad_body("Request body must be a JSON object"));
    }
    let v: Value = serde_json::from_slice(b)
        .map_err(|e| ApiError::bad_body(format!("Invalid JSON body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_body("Request body must be a JSON object"));
    }
    Ok(v)
}

fn message_content(v: &Value) -> Result<Content> {
    match v.get("message") {
        None | Some(Value::Null) => Err(ApiError::missing("message")),
        Some(m) => parse_content(m),
    }
}

/// `limit`/`cursor` paging over an already ordered list; the cursor is an offset.
fn page<T: Clone>(
    items: &[T],
    q: &HashMap<String, String>,
    default_limit: usize,
) -> Result<(Vec<T>, Value)> {
    let limit = match q.get("limit") {
        None => default_limit,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::new(400, 1005, "limit must be an integer from 1 to 100"))?,
    };
    let start = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => c
            .parse::<usize>()
            .map_err(|_| ApiError::new(400, 1005, "invalid cursor"))?,
    };
    let end = (start + limit).min(items.len());
    let slice = items
        .get(start.min(items.len())..end)
        .unwrap_or(&[])
        .to_vec();
    let next = if end < items.len() {
        json!(end.to_string())
    } else {
        Value::Null
    };
    Ok((slice, next))
}

fn recipients(v: &Value) -> Result<Vec<String>> {
    let to = match v.get("to") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Err(ApiError::missing("to")),
        Some(_) => return Err(ApiError::bad_body("to must be an array of handles")),
    };
    if to.is_empty() || to.len() > 31 {
        return Err(ApiError::new(400, 1005, "to must list 1 to 31 recipients"));
    }
    let mut out = Vec::new();
    for h in to {
        let h = h
            .as_str()
            .ok_or_else(|| ApiError::bad_body("to must be an array of strings"))?;
        if !valid_handle(h) {
            return Err(ApiError::new(
                400,
                1002,
                format!("'{h}' is not an E.164 phone number or email address"),
            ));
        }
        if !out.iter().any(|x| x == h) {
            out.push(h.to_string());
        }
    }
    Ok(out)
}

fn check_from(sim: &Sim, from: Option<&str>) -> Result<()> {
    match from {
        None => Ok(()),
        Some(f) if !valid_handle(f) => Err(ApiError::new(
            400,
            1002,
            "Phone number must be in E.164 format",
        )),
        Some(f) if f != sim.cfg.bot_handle => Err(ApiError::new(
            403,
            2006,
            format!("This partner has no permission to send from {f}"),
        )),
        Some(_) => Ok(()),
    }
}

/// Find the chat with exactly these recipients (or open one, applying first-message rules)
/// and send into it. Returns (chat id, whether it was created, the send outcome).
fn open_and_send(
    st: &mut SimState,
    bot: &str,
    to: &[String],
    content: Content,
    override_optout: bool,
    now: Now,
) -> Result<(String, bool, crate::state::Sent)> {
    if let Some(id) = st.find_chat_with(to).map(|c| c.id.clone()) {
        let sent = st.send_outbound(&id, content, override_optout, now)?;
        return Ok((id, false, sent));
    }
    if content.has_link() {
        return Err(ApiError::new(
            400,
            1005,
            "The first message of a new chat cannot contain a link",
        ));
    }
    if content.reply_to.is_some() || content.effect.is_some() {
        return Err(ApiError::new(
            400,
            1005,
            "The first message of a new chat cannot have reply_to or an effect",
        ));
    }
    let id = st.create_chat(bot, to, "iMessage", None, None, now);
    match st.send_outbound(&id, content, override_optout, now) {
        Ok(sent) => Ok((id, true, sent)),
        Err(e) => {
            st.chats.retain(|c| c.id != id);
            Err(e)
        }
    }
}

// ---- chats ----

async fn create_chat(
    State(sim): State<Shared>,
    Extension(t): Extension<Trace>,
    body: Bytes,
) -> Response {
    let r = (|| {
        let v = parse_json(&body)?;
        match v.get("from") {
            Some(Value::String(f)) => check_from(&sim, Some(f))?,
            None | Some(Value::Null) => return Err(ApiError::missing("from")),
            Some(_) => return Err(ApiError::bad_body("from must be a string")),
        }
        let to = recipients(&v)?;
        let content = message_content(&v)?;
        let override_optout = v
            .get("override_optout")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut st = sim.lock();
        let (chat_id, _created, sent) = open_and_send(
            &mut st,
            &sim.cfg.bot_handle,
            &to,
            content,
            override_optout,
            Now::get(),
        )?;
        let chat = st.chat(&chat_id).ok_or_else(ApiError::chat_not_found)?;
        let msg = st
            .message(&sent.message_id)
            .ok_or_else(ApiError::message_not_found)?;
        let full = st.chat_json(chat);
        let body = json!({"chat": {
            "id": chat.id,
            "display_name": chat.display_name,
            "service": chat.service,
            "is_group": chat.is_group,
            "handles": full["handles"],
            "health_status": full["health_status"],
            "message": st.sent_message_json(msg),
        }});
        Ok((sent, body))
    })();
    reply(
        &t,
        r.map(|(sent, body)| {
            if !sent.replay {
                webhooks::after_send(sim.clone(), sent.message_id);
            }
            ok(if sent.replay { 200 } else { 201 }, &t, body)
        }),
    )
}

async fn list_chats(
    State(sim): State<Shared>,
    Extension(t): Extension<Trace>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let r = (|| {
        let st = sim.lock();
        let from_ok = q.get("from").is_none_or(|f| f == &sim.cfg.bot_handle);
        let chats: Vec<Value> = st
            .chats
            .iter()
            .rev()
            .filter(|_| from_ok)
            .filter(|c| {
                q.get("to")
                    .is_none_or(|to| c.others().any(|h| &h.handle == to))
            })
            .map(|c| st.chat_json(c))
            .collect();
        let (chats, next) = page(&chats, &q, 20)?;
        Ok(ok(200, &t, json!({"chats": chats, "next_cursor": next})))
    })();
    reply(&t, r)
}

async fn get_chat(
    State(sim): State<Shared>,
    Extension(t): Extension<Trace>,
    Path(chat_id): Path<String>,
) -> Response {
    let st = sim.lock();
    let r = st
        .chat(&chat_id)
        .map(|c| ok(200, &t, st.chat_json(c)))
        .ok_or_else(ApiError::chat_not_found);
    reply(&t, r)
}

async fn update_chat(
    State(sim): State<Shared>,
    Extension(t): Extension<Trace>,
    Path(chat_id): Path<String>,
    body: Bytes,
) -> Response {
    let r = (|| {
        let v = parse_json(&body)?;
        let name = v
            .get("display_name")
            .and_then(Value::as_str)
            .map(str::to_string);
        let icon = v
            .get("group_chat_icon")
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut st = sim.lock();
        let chat = st.chat_mut(&chat_id).ok_or_else(ApiError::chat_not_found)?;
        if !chat.is_group {
            return Err(ApiError::new(
                409,
                1006,
                "Direct message chats cannot be updated",
            ));
        }
        let now = time::OffsetDateTime::now_utc();
        let mut event = None;
        if let Some(n) = name {
            let old = chat.display_name.replace(n.clone());
            chat.named = true;
            event = Some(json!({
                "chat_id": chat.id, "updated_at": fmt_ts(now),
                "changed_by_handle": crate::wire::handle_json(chat.me()),
                "old_value": old, "new_value": n,
            }));
        }
        if icon.is_some() {
            chat.group_chat_icon = icon;
        }
        chat.updated_at = now;
        Ok(event)
    })();
    reply(
        &t,
        r.map(|event| {
            if let Some(data) = event {
                let sim = sim.clone();
                tokio::spawn(async move {
                    webhooks::emit(&sim, "chat.group_name_updated", data, None).await;
                });
            }
            ok(200, &t, json!({"chat_id": chat_id, "status": "accepted"}))
        }),
    )
}

// ---- attachments (src/media.rs) ----

async fn create_attachment(
    State(sim): State<Shared>,
    Extension(t): Extension<Trace>,
    body: Bytes,
) -> Response {
    let r = parse_json(&body).and_then(|v| {
        let now = crate::state::fmt_ts(Now::get().wall);
        crate::media::create(&sim, &v, &now)
    });
    reply(&t, r.map(|b| ok(201, &t, b)))
}

async fn get_attachment(
    State(sim): State<Shared>,
    Extension(t): Extension<Trace>,
    Path(id): Path<String>,
) -> Response {
    reply(
        &t,
        crate::media::retrieve(&sim, &id).map(|b| ok(200, &t, b)),
    )
}

// ---- messages ----

async fn send_message(
    State(sim): State<Shared>,
    Extension(t): Extension<Trace>,
    Path(chat_id): Path<String>,
    body: Bytes,
) -> Response {
    let r = (|| {
        if sim.lock().chat(&chat_id).is_none() {
            return Err(ApiError::chat_not_found());
        }
        let v = parse_json(&body)?;
        let mut content = message_content(&v)?;
        crate::media::resolve_parts(&sim, &mut content.parts)?;
        let override_optout = v
            .get("override_optout")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut st = sim.lock();
        let sent = st.send_outbound(&chat_id, content, override_optout, Now::get())?;
        let msg = st
            .message(&sent.message_id)
            .ok_or_else(ApiError::message_not_found)?;
        Ok((
            sent.clone(),
            json!({"chat_id": chat_id, "message": st.sent_message_json(msg)}),
        ))
    })();
    reply(
        &t,
        r.map(|(sent, body)| {
            if !sent.replay {
                webhooks::after_send(sim.clone(), sent.message_id);
            }
            ok(if sent.replay { 200 } else { 202 }, &t, body)
        }),
    )
}

/// `POST /v3/messages`: send by recipients; Linq picks (or opens) the chat.
async fn create_message(
    State(sim): State<Shared>,
    Extension(t): Extension<Trace>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = (|| {
        let v = parse_json(&body)?;
        check_from(&sim, v.get("from").and_then(Value::as_str))?;
        let to = recipients(&v)?;
        let mut content = message_content(&v)?;
        crate::media::resolve_parts(&sim, &mut content.parts)?;
        if content.idempotency_key.is_none() {
            content.idempotency_key = headers
                .get("idempotency-key")
                .and_then(|h| h.to_str().ok())
                .filter(|k| !k.is_empty())
                .map(str::to_string);
        }
        let override_optout = v
            .get("override_optout")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut st = sim.lock();
        let (chat_id, created, sent) = open_and_send(
            &mut st,
            &sim.cfg.bot_handle,
            &to,
            content,
            override_optout,
            Now::get(),
        )?;
        let chat = st.chat(&chat_id).ok_or_else(ApiError::chat_not_found)?;
        let msg = st
            .message(&sent.message_id)
            .ok_or_else(ApiError::message_not_found)?;
        let body = json!({
            "chat_id": chat_id,
            "created_new_chat": created,
            "from": sim.cfg.bot_handle,
            "from_selection": {
                "reason": if created { "new_best_number" } else { "reused_active_chat" },
                "reused_existing_chat": !created,
            },
            "handles": chat.handles.iter().map(crate::wire::handle_json).collect::<Vec<_>>(),
            "is_group": chat.is_group,
            "message": st.sent_message_json(msg),
            "service": chat.service,
            "previous_chat_id": null,
        });
        Ok((sent, body))
    })();
    reply(
        &t,
        r.map(|(sent, body)| {
            if !sent.replay {
                webhooks::after_send(sim.clone(), sent.message_id);
            }
            ok(if sent.replay { 200 } else { 202 }, &t, body)
        }),
    )
}

async fn list_messages(
    State(sim): State<Shared>,
    Extension(t): Extension<Trace>,
    Path(chat_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let r = (|| {
        let st = sim.lock();
        st.chat(&chat_id).ok_or_else(ApiError::chat_not_found)?;
        // Newest first.
        let msgs: Vec<Value> = st
            .messages
            .iter()
            .rev()
            .filter(|m| m.chat_id == chat_id)
            .map(|m| st.message_json(m))
            .collect();
        let (msgs, next) = page(&msgs, &q, 50)?;
        Ok(ok(200, &t, json!({"messages": msgs, "next_cursor": next})))
    })();
    reply(&t, r)
}

async fn get_message(
    State(sim): State<Shared>,
    Extension(t): Extension<Trace>,
    Path(message_id): Path<String>,
) -> Response {
    let st = sim.lock();
    let r = st
        .message(&message_id)
        .map(|m| ok(200, &t, st.message_json(m)))
        .ok_or_else(ApiError::message_not_found);
    reply(&t, r)
}

async fn react(
    State(sim): State<Shared>,
    Extension(t): Extension<Trace>,
    Path(message_id): Path<String>,
    body: Bytes,
) -> Response {
    let r = (|| {
        let v = parse_json(&body)?;
        sim.lock().react(&message_id, &v, Now::get())?;
        Ok(ok(
            202,
            &t,
            json!({"status": "accepted", "message": "Reaction queued"}),
        ))
    })();
    reply(&t, r)
}

// ---- typing / read ----

fn typing(sim: &Sim, chat_id: &str, on: bool) -> Result<Response> {
    let mut st = sim.lock();
    let chat = st.chat_mut(chat_id).ok_or_else(ApiError::chat_not_found)?;
    if chat.is_group {
        return Err(ApiError::new(
            403,
            2016,
            "Typing indicators are not supported in group chats",
        ));
    }
    chat.typing = on;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn start_typing(
    State(sim): State<Shared>,
    Extension(t): Extension<Trace>,
    Path(chat_id): Path<String>,
) -> Response {
    reply(&t, typing(&sim, &chat_id, true))
}

async fn stop_typing(
    State(sim): State<Shared>,
    Extension(t): Extension<Trace>,
    Path(chat_id): Path<String>,
) -> Response {
    reply(&t, typing(&sim, &chat_id, false))
}

async fn mark_read(
    State(sim): State<Shared>,
    Extension(t): Extension<Trace>,
    Path(chat_id): Path<String>,
) -> Response {
    let mut st = sim.lock();
    let r = match st.chat(&chat_id) {
        None => Err(ApiError::chat_not_found()),
        Some(_) => {
            st.mark_read(&chat_id, Now::get());
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    };
    reply(&t, r)
}

async fn not_found(Extension(t): Extension<Trace>) -> Response {
    ApiError::new(404, 2001, "Resource not found").into_response_with(&t.0)
}
