//! The HTTP side (SPEC L1, L2, O2, O4): `POST /api/linq/inbound` takes Linq's webhooks and
//! `GET /health` reports. A webhook is read with a size limit, verified, parsed, stored and
//! answered; everything after that (turns, replies) happens elsewhere, so Linq gets its 2xx fast.
//! Every response carries `X-Request-ID`, and every log line of a request carries `REQUEST_ID`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::bus::Bus;
use crate::config::Config;
use crate::ingest::Applied;
use crate::linq::client::LinqClient;
use crate::linq::events::{parse_event, Event};
use crate::linq::verify::Verifier;
use crate::store::queries::Ingested;
use crate::store::Store;
use crate::store::{authority, channel};

pub struct App {
    pub store: Store,
    pub verifier: Verifier,
    pub cfg: Arc<Config>,
    pub bus: Arc<Bus>,
    pub linq: Arc<LinqClient>,
    pub turns_wake: Arc<Notify>,
    pub outbox_wake: Arc<Notify>,
    /// The owner and the bot's names, for quarantine, commands and the gate.
    pub ctx: Arc<crate::ingest::Ctx>,
    /// Webhooks in flight, and those that crashed the gateway too often (see `poison`).
    pub poison: crate::poison::Guard,
    pub started: Instant,
}

#[derive(Clone)]
pub struct RequestId(pub String);

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/linq/inbound", post(inbound))
        .route("/health", get(health))
        .fallback(|| async { reject(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(app)
        .layer(middleware::from_fn(request_id))
}

fn valid_request_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Take the caller's `X-Request-ID` if it is sane, or make one; put it on the response and on
/// every log line of the request.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| valid_request_id(s))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn reject(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "status": "rejected", "error": msg }))).into_response()
}

/// Refuse a webhook: log why (the journal is where an operator looks) and say it plainly.
fn refuse(status: StatusCode, why: &str) -> Response {
    tracing::warn!(
        status = status.as_u16(),
        reason = why,
        "webhook rejected: {why}"
    );
    reject(status, why)
}

async fn read_limited(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body larger than {max} bytes"),
        ));
    }
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body larger than {max} bytes"),
        )),
        Err(e) => Err(refuse(
            StatusCode::BAD_REQUEST,
            &format!("could not read body: {e}"),
        )),
    }
}

async fn inbound(
    State(app): State<Arc<App>>,
    axum::Extension(RequestId(rid)): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let json_ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_ct {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content type must be application/json",
        );
    }
    let body = match read_limited(&headers, body, app.cfg.http.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let verified = match app.verifier.verify(&headers, &body, now) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
                &e.to_string(),
            )
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "body is not UTF-8");
    };
    let env = match parse_event(&body) {
        Ok(e) => e,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("not a Linq event: {e}")),
    };
    if let Some(hid) = verified.event_id.as_ref().filter(|h| **h != env.event_id) {
        // Both are signed; Linq documents webhook-id as the event id, so a difference is odd but
        // not an attack. The body's event_id stays the deduplication key.
        tracing::warn!(webhook_id = %hid, "webhook-id header differs from the body's event_id");
    }
    if !env.is_expected_version() {
        tracing::warn!(
            version = env.webhook_version.as_deref().unwrap_or("none"),
            "unexpected webhook payload version; pin ?version=2026-02-03 on the subscription"
        );
    }
    crate::failpoint::hit("webhook-received");
    if let Err(why) = crate::ingest::validate(&env) {
        return refuse(StatusCode::BAD_REQUEST, &why);
    }
    let event_id = env.event_id.clone();
    if app.poison.is_poisoned(&event_id) {
        return quarantine(&app, env, &rid, text).await;
    }
    let _in_flight = app.poison.enter(&event_id);
    crate::failpoint::hit_every_time("webhook-poison", text.contains("#poison"));
    // New messages get the gate's reason, and unknown event types a note, at info level;
    // delivery/read/typing events are frequent and decide nothing, so they stay at debug
    // (journald rate-limits a burst, and drops lines).
    let is_message = matches!(env.data, Event::MessageReceived(_) | Event::MessageSent(_));
    let is_unknown = matches!(env.data, Event::Unknown { .. });
    let span = tracing::info_span!("event", event_id = %event_id, event_type = %env.event_type, chat = env.data.chat_id().unwrap_or(""));
    async move {
        let (body, ctx) = (text.to_owned(), app.ctx.clone());
        let applied = app.store.call(move |t| crate::ingest::apply(t, &env, &rid, &body, &ctx)).await;
        match applied {
            Ok(Applied { ingested: Some(Ingested::Duplicate), .. }) => {
                refuse(StatusCode::CONFLICT, "event already received (replay or redelivery); not processed again")
            }
            Ok(Applied { ingested: Some(Ingested::Stored { turn_id, reason }), fetch_details, mark_read, wake_turns, wake_outbox, pending_added, wake_consent }) => {
                crate::failpoint::hit("webhook-stored");
                if let Some(t) = &turn_id {
                    tracing::info!(turn = %t, gate = %reason, "message stored; turn queued");
                    app.turns_wake.notify_one();
                } else if is_message {
                    tracing::info!(gate = %reason, "message stored; no turn");
                } else if is_unknown {
                    tracing::info!(effect = %reason, "unknown event type stored and ignored");
                } else {
                    tracing::debug!(effect = %reason, "event stored");
                }
                if wake_turns {
                    app.turns_wake.notify_one();
                }
                if wake_outbox {
                    app.outbox_wake.notify_one();
                }
                for (n, chat) in pending_added {
                    app.bus.pending_added(n, &chat).await;
                }
                if wake_consent {
                    crate::consent::worker::wake();
                }
                app.after_ingest(fetch_details, mark_read);
                (StatusCode::OK, Json(json!({ "status": "accepted", "event_id": event_id, "turn": turn_id.is_some() }))).into_response()
            }
            Ok(Applied { ingested: None, .. }) => reject(StatusCode::INTERNAL_SERVER_ERROR, "event not applied"),
            Err(e) => {
                tracing::error!(error = %e, "cannot store event; answering 503 so Linq retries");
                reject(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable; retry")
            }
        }
    }
    .instrument(span)
    .await
}

/// A webhook that crashed the gateway `poison::STRIKES` times: stored as it came, never
/// processed, answered 200 so Linq stops, and reported.
async fn quarantine(
    app: &App,
    env: crate::linq::events::Envelope<Event>,
    rid: &str,
    body: &str,
) -> Response {
    let (id, kind, rid, body) = (
        env.event_id.clone(),
        env.event_type.clone(),
        rid.to_owned(),
        body.to_owned(),
    );
    let (i2, k2) = (id.clone(), kind.clone());
    let stored = app
        .store
        .call(move |t| crate::store::queries::record_event(t, &i2, &k2, &rid, &body))
        .await;
    tracing::error!(
        event_id = %id,
        event_type = %kind,
        strikes = crate::poison::STRIKES,
        "webhook {id} crashed the gateway {} times; stored in the events table and not processed",
        crate::poison::STRIKES
    );
    match stored {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({ "status": "quarantined", "event_id": id })),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot store event; answering 503 so Linq retries");
            reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable; retry",
            )
        }
    }
}

impl App {
    /// Side effects towards Linq that must not delay the webhook's answer: read receipts for
    /// messages the bot will handle, and the details (name, participants) of a new group.
    fn after_ingest(&self, fetch_details: Option<String>, mark_read: Option<String>) {
        if let Some(chat) = mark_read {
            let linq = self.linq.clone();
            tokio::spawn(async move {
                if let Err(e) = linq.mark_read(&chat).await {
                    tracing::debug!(chat = %chat, error = %e, "read receipt not sent");
                }
            });
        }
        if let Some(chat) = fetch_details {
            let (linq, store, ctx) = (self.linq.clone(), self.store.clone(), self.ctx.clone());
            let (turns_wake, outbox_wake) = (self.turns_wake.clone(), self.outbox_wake.clone());
            let bus = self.bus.clone();
            tokio::spawn(async move {
                let details = linq.get_chat(&chat).await;
                if let Err(e) = &details {
                    tracing::info!(chat = %chat, error = %e, "chat details not available from Linq; the owner decides on what the log knows");
                }
                let id = chat.clone();
                // Once the participants are known (or cannot be), a waiting group is allowed if
                // the owner is in it, and the owner is told about it otherwise.
                let r = store
                    .call(move |t| {
                        if let Ok(c) = &details {
                            let members = crate::ingest::members_of(c);
                            channel::chat_details(
                                t,
                                &c.id,
                                c.is_group,
                                c.display_name.as_deref(),
                                &members,
                            )?;
                        }
                        authority::settle(t, &ctx.owner, &id, true)
                    })
                    .await;
                match r {
                    Ok(s) => {
                        for (n, chat) in &s.pending_added {
                            bus.pending_added(*n, chat).await;
                        }
                        if s.wake_turns {
                            turns_wake.notify_one();
                        }
                        if s.wake_outbox {
                            outbox_wake.notify_one();
                        }
                    }
                    Err(e) => tracing::warn!(chat = %chat, error = %e, "chat details not stored"),
                }
            });
        }
    }
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let (db_ok, bus_ok) = tokio::join!(app.store.ping(), app.bus.ok());
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": app.started.elapsed().as_secs(),
            "db_ok": db_ok,
            "bus_ok": bus_ok,
        })),
    )
        .into_response()
}
