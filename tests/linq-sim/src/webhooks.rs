//! Webhooks out: the `2026-02-03` envelope, both signatures Linq puts on every delivery
//! (Standard Webhooks `webhook-*` and the legacy `X-Webhook-*`), and at-least-once delivery
//! with exponential backoff. Every attempt is recorded in the state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use time::OffsetDateTime;

use crate::state::{fmt_ts, new_id, new_trace_id, Attempt, Delivery, Sim, StoredEvent};

pub const WEBHOOK_VERSION: &str = "2026-02-03";
pub const MAX_ATTEMPTS: u32 = 10;

/// A signing secret, `whsec_` + base64 of the key bytes.
#[derive(Clone)]
pub struct Secret {
    raw: String,
    key: Vec<u8>,
}

impl Secret {
    pub fn parse(s: &str) -> anyhow::Result<Secret> {
        let raw = s.trim().to_string();
        let b64 = raw.strip_prefix("whsec_").unwrap_or(&raw);
        let key = B64
            .decode(b64)
            .context("webhook secret is not whsec_<base64>")?;
        anyhow::ensure!(!key.is_empty(), "webhook secret is empty");
        Ok(Secret { raw, key })
    }
    pub fn raw(&self) -> &str {
        &self.raw
    }
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// `webhook-signature`: `v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under the decoded key.
pub fn sign_standard(secret: &Secret, id: &str, timestamp: &str, body: &[u8]) -> String {
    let mac = hmac(
        secret.key(),
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    format!("v1,{}", B64.encode(mac))
}

/// `X-Webhook-Signature`: hex HMAC-SHA256 of `{timestamp}.{body}` keyed with the whole secret string.
pub fn sign_legacy(secret: &Secret, timestamp: &str, body: &[u8]) -> String {
    hex::encode(hmac(
        secret.raw().as_bytes(),
        &[timestamp.as_bytes(), b".", body],
    ))
}

/// The envelope, serialised in Linq's field order.
pub fn envelope(
    event_type: &str,
    event_id: &str,
    partner_id: &str,
    created_at: OffsetDateTime,
    data: &Value,
) -> String {
    let s = |v: &str| Value::String(v.to_string()).to_string();
    format!(
        "{{\"api_version\":\"v3\",\"webhook_version\":\"{WEBHOOK_VERSION}\",\"event_type\":{},\"event_id\":{},\"created_at\":{},\"trace_id\":{},\"partner_id\":{},\"data\":{}}}",
        s(event_type),
        s(event_id),
        s(&fmt_ts(created_at)),
        s(&new_trace_id()),
        s(partner_id),
        data
    )
}

/// The outcome of a delivery's first attempt.
#[derive(Debug, Clone)]
pub struct Emitted {
    pub event_id: String,
    /// HTTP status of the first attempt; `None` on a network error or with no webhook URL.
    pub status: Option<u16>,
}

/// Store a new event and deliver it. Returns after the first attempt; retries go on in the background.
pub async fn emit(
    sim: &Arc<Sim>,
    event_type: &str,
    data: Value,
    event_id: Option<String>,
) -> Emitted {
    let event_id = event_id.unwrap_or_else(new_id);
    let body = envelope(
        event_type,
        &event_id,
        &sim.cfg.partner_id,
        OffsetDateTime::now_utc(),
        &data,
    );
    sim.lock().events.insert(
        event_id.clone(),
        StoredEvent {
            event_type: event_type.to_string(),
            body,
        },
    );
    let status = deliver(sim, &event_id, false).await.flatten();
    Emitted { event_id, status }
}

/// Deliver a stored event again: same id and body, fresh timestamp and signatures.
/// `None` if the event is unknown.
pub async fn redeliver(sim: &Arc<Sim>, event_id: &str) -> Option<Option<u16>> {
    deliver(sim, event_id, true).await
}

/// Send every held delivery, oldest first or (`reverse`) newest first, one after another (each
/// after the first attempt of the one before). Returns (event id, first status) in send order.
pub async fn release_held(sim: &Arc<Sim>, reverse: bool) -> Vec<(String, Option<u16>)> {
    let mut held: Vec<(u64, String)> = {
        let mut st = sim.lock();
        st.deliveries
            .iter_mut()
            .filter(|d| d.state == "held")
            .map(|d| {
                d.state = "pending".into();
                (d.id, d.event_id.clone())
            })
            .collect()
    };
    if reverse {
        held.reverse();
    }
    let mut out = Vec::new();
    for (id, event_id) in held {
        out.push((event_id, run(sim, id).await));
    }
    out
}

static DELIVERY_IDS: AtomicU64 = AtomicU64::new(1);

async fn deliver(sim: &Arc<Sim>, event_id: &str, redelivery: bool) -> Option<Option<u16>> {
    let (main, dup) = {
        let mut st = sim.lock();
        let event_type = st.events.get(event_id)?.event_type.clone();
        let url = st.config.webhook_url.clone();
        let copies = if st.faults.duplicate_deliveries { 2 } else { 1 };
        let held = st.faults.hold_deliveries;
        let mut ids = Vec::new();
        for n in 0..copies {
            let id = DELIVERY_IDS.fetch_add(1, Ordering::Relaxed);
            st.deliveries.push(Delivery {
                id,
                event_id: event_id.to_string(),
                event_type: event_type.clone(),
                url: url.clone(),
                created_at: fmt_ts(OffsetDateTime::now_utc()),
                state: if url.is_none() {
                    "no_webhook_url"
                } else if held {
                    "held"
                } else {
                    "pending"
                }
                .into(),
                duplicate: n > 0,
                redelivery,
                attempts: Vec::new(),
            });
            ids.push(id);
        }
        if held && url.is_some() {
            return Some(None);
        }
        if url.is_none() {
            tracing::warn!(
                event_id,
                event_type,
                "no webhook URL configured; event stored, not delivered"
            );
            return Some(None);
        }
        (ids[0], ids.get(1).copied())
    };
    if let Some(dup) = dup {
        let sim = sim.clone();
        tokio::spawn(async move {
            run(&sim, dup).await;
        });
    }
    Some(run(sim, main).await)
}

fn retryable(status: Option<u16>) -> bool {
    match status {
        None => true,
        Some(s) => s == 429 || s >= 500,
    }
}

/// First attempt now; if it should be retried, the rest in a background task.
async fn run(sim: &Arc<Sim>, delivery_id: u64) -> Option<u16> {
    let first = attempt(sim, delivery_id, 1).await;
    let status = first.flatten();
    if first.is_some() && retryable(status) {
        let sim = sim.clone();
        tokio::spawn(async move {
            for n in 2..=MAX_ATTEMPTS {
                let base = sim.lock().config.retry_base_ms;
                let backoff = base.saturating_mul(1u64 << (n - 2).min(20));
                tokio::time::sleep(Duration::from_millis(backoff)).await;
                match attempt(&sim, delivery_id, n).await {
                    None => return, // the delivery was forgotten (control reset)
                    Some(s) if !retryable(s) => return,
                    Some(_) => {}
                }
            }
            if let Some(d) = sim
                .lock()
                .deliveries
                .iter_mut()
                .find(|d| d.id == delivery_id)
            {
                d.state = "exhausted".into();
            }
        });
    }
    status
}

/// One signed POST. Outer `None`: the delivery no longer exists.
async fn attempt(sim: &Arc<Sim>, delivery_id: u64, n: u32) -> Option<Option<u16>> {
    let (url, event_id, event_type, body) = {
        let st = sim.lock();
        let d = st.deliveries.iter().find(|d| d.id == delivery_id)?;
        let ev = st.events.get(&d.event_id)?;
        (
            d.url.clone()?,
            d.event_id.clone(),
            d.event_type.clone(),
            ev.body.clone(),
        )
    };
    let now = OffsetDateTime::now_utc();
    let ts = now.unix_timestamp().to_string();
    let req = sim
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("webhook-id", &event_id)
        .header("webhook-timestamp", &ts)
        .header(
            "webhook-signature",
            sign_standard(&sim.cfg.secret, &event_id, &ts, body.as_bytes()),
        )
        .header(
            "X-Webhook-Signature",
            sign_legacy(&sim.cfg.secret, &ts, body.as_bytes()),
        )
        .header("X-Webhook-Timestamp", &ts)
        .header("X-Webhook-Event", &event_type)
        .header("X-Webhook-Subscription-ID", &sim.cfg.subscription_id)
        .body(body);
    let started = Instant::now();
    let (status, error) = match req.send().await {
        Ok(resp) => (Some(resp.status().as_u16()), None),
        Err(e) => (None, Some(error_chain(&e))),
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        event_id,
        event_type,
        attempt = n,
        ?status,
        error = error.as_deref().unwrap_or(""),
        "webhook delivery"
    );
    let mut st = sim.lock();
    let d = st.deliveries.iter_mut().find(|d| d.id == delivery_id)?;
    d.attempts.push(Attempt {
        attempt: n,
        at: fmt_ts(now),
        webhook_timestamp: now.unix_timestamp(),
        status,
        error,
        duration_ms,
    });
    d.state = match status {
        Some(s) if (200..300).contains(&s) => "delivered",
        s if retryable(s) => "pending",
        _ => "failed",
    }
    .into();
    Some(status)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Linq's own behaviour after accepting a bot message: it is sent (`message.sent`, the echo the
/// gateway must ignore) and, in 1:1 chats, delivered (`message.delivered`).
pub fn after_send(sim: Arc<Sim>, message_id: String) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let Some((data, echo, is_group)) = mark(&sim, &message_id, "sent") else {
            return;
        };
        if echo {
            emit(&sim, "message.sent", data, None).await;
        }
        if is_group {
            return; // no delivery receipts in groups
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let Some((data, echo, _)) = mark(&sim, &message_id, "delivered") else {
            return;
        };
        if echo {
            emit(&sim, "message.delivered", data, None).await;
        }
    });
}

fn mark(sim: &Sim, message_id: &str, status: &str) -> Option<(Value, bool, bool)> {
    let mut st = sim.lock();
    let now = OffsetDateTime::now_utc();
    let m = st.message_mut(message_id)?;
    m.delivery_status = status.to_string();
    m.updated_at = now;
    if status == "sent" {
        m.sent_at = Some(now);
    } else {
        m.delivered_at = Some(now);
    }
    let chat_id = m.chat_id.clone();
    let m = st.message(message_id)?;
    let is_group = st.chat(&chat_id)?.is_group;
    Some((st.message_event_data(m), st.config.echo_outbound, is_group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_vectors() {
        let v: Value =
            serde_json::from_str(include_str!("../testdata/webhook-signature-vectors.json"))
                .unwrap();
        let vectors = v["vectors"].as_array().unwrap();
        assert_eq!(vectors.len(), 3);
        for t in vectors {
            let secret = Secret::parse(t["secret"].as_str().unwrap()).unwrap();
            let body = t["body"].as_str().unwrap().as_bytes();
            let id = t["webhook_id"].as_str().unwrap();
            let ts = t["webhook_timestamp"].as_str().unwrap();
            assert_eq!(
                sign_standard(&secret, id, ts, body),
                t["webhook_signature"].as_str().unwrap()
            );
            let lts = t["legacy_x_webhook_timestamp"].as_str().unwrap();
            assert_eq!(
                sign_legacy(&secret, lts, body),
                t["legacy_x_webhook_signature_hex"].as_str().unwrap()
            );
        }
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert!(Secret::parse("whsec_!!!").is_err());
        assert!(Secret::parse("whsec_").is_err());
        assert_eq!(Secret::parse("whsec_AAEC\n").unwrap().key(), &[0, 1, 2]);
    }

    #[test]
    fn envelope_is_linq_shaped() {
        let t = time::macros::datetime!(2026-02-05 19:31:13.736444093 UTC);
        let body = envelope(
            "message.received",
            "e1",
            "p1",
            t,
            &serde_json::json!({"id": "m"}),
        );
        assert!(body.starts_with("{\"api_version\":\"v3\",\"webhook_version\":\"2026-02-03\",\"event_type\":\"message.received\""));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["created_at"], "2026-02-05T19:31:13.736444093Z");
        assert_eq!(v["event_id"], "e1");
        assert_eq!(v["partner_id"], "p1");
        assert_eq!(v["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(v["data"]["id"], "m");
    }

    #[test]
    fn retry_policy() {
        assert!(retryable(None));
        assert!(retryable(Some(500)) && retryable(Some(503)) && retryable(Some(429)));
        assert!(!retryable(Some(200)) && !retryable(Some(400)) && !retryable(Some(404)));
    }
}
