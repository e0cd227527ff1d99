//! The Linq simulator's control interface (tests/linq-sim/README.md), over its Unix socket.
//! All timing the turn benchmarks report comes from the simulator's own clock: when it got the
//! 2xx for a webhook (`/control/deliveries`: attempt `at` + `duration_ms`) and when the bot's
//! reply reached it (`/control/messages`: `created_at`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::net::UnixStream;

use crate::http::Conn;

#[derive(Clone)]
pub struct Sim {
    pub sock: PathBuf,
}

/// What `/control/inbound` answered.
#[derive(Debug, Clone)]
pub struct Sent {
    pub chat_id: String,
    pub message_id: String,
    pub event_id: String,
    pub status: Option<u16>,
}

/// A message as the simulator lists it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub chat_id: String,
    pub text: String,
    pub reply_to: Option<String>,
    /// Unix nanoseconds, simulator clock.
    pub created_ns: i128,
}

impl Sim {
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let s = tokio::time::timeout(Duration::from_secs(5), UnixStream::connect(&self.sock))
            .await
            .context("connecting to the simulator's control socket timed out")?
            .with_context(|| format!("connecting to {}", self.sock.display()))?;
        let mut c = Conn::new(s);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = tokio::time::timeout(Duration::from_secs(60), c.send(req.as_bytes()))
            .await
            .with_context(|| format!("{method} {path}: no answer in 60 s"))??;
        let v = if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&r.body).unwrap_or(Value::Null)
        };
        Ok((r.status, v))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (st, v) = self.request("GET", path, None).await?;
        if !(200..300).contains(&st) {
            bail!("GET {path} -> {st}: {v}");
        }
        Ok(v)
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (st, v) = self.request("POST", path, Some(&body)).await?;
        if !(200..300).contains(&st) {
            bail!("POST {path} -> {st}: {v}");
        }
        Ok(v)
    }

    /// `from` writes `text` to the bot (in `chat_id`, or their 1:1 chat, created if new).
    pub async fn inbound(
        &self,
        from: &str,
        chat_id: Option<&str>,
        text: &str,
    ) -> anyhow::Result<Sent> {
        let mut b = json!({ "from": from, "text": text });
        if let Some(c) = chat_id {
            b["chat_id"] = json!(c);
        }
        let v = self.post("/control/inbound", b).await?;
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("inbound answer has no {k}: {v}"))
        };
        Ok(Sent {
            chat_id: s("chat_id")?,
            message_id: s("message_id")?,
            event_id: s("event_id")?,
            status: v.get("status").and_then(Value::as_u64).map(|n| n as u16),
        })
    }

    /// The bot's messages (in one chat, or all).
    pub async fn sent(&self, chat_id: Option<&str>) -> anyhow::Result<Vec<Msg>> {
        let path = match chat_id {
            Some(c) => format!("/control/sent?chat_id={c}"),
            None => "/control/sent".to_owned(),
        };
        self.sent_at(&path).await
    }

    /// The bot's messages in `chat_id` once there are more than `more_than` of them, or after
    /// `wait` (the simulator holds the request meanwhile): one request per reply, not a poll
    /// loop competing for the CPU with the turn being measured.
    pub async fn sent_after(
        &self,
        chat_id: &str,
        more_than: usize,
        wait: Duration,
    ) -> anyhow::Result<Vec<Msg>> {
        let ms = wait.as_millis().clamp(1, 50_000);
        self.sent_at(&format!(
            "/control/sent?chat_id={chat_id}&more_than={more_than}&wait_ms={ms}"
        ))
        .await
    }

    async fn sent_at(&self, path: &str) -> anyhow::Result<Vec<Msg>> {
        let v = self.get(path).await?;
        let arr = v.as_array().cloned().unwrap_or_default();
        Ok(arr
            .iter()
            .filter_map(|m| {
                Some(Msg {
                    chat_id: m.get("chat_id")?.as_str()?.to_owned(),
                    text: m.get("text")?.as_str()?.to_owned(),
                    reply_to: m.get("reply_to").and_then(Value::as_str).map(str::to_owned),
                    created_ns: parse_rfc3339_ns(m.get("created_at")?.as_str()?)?,
                })
            })
            .collect())
    }

    /// When the gateway's 2xx for this event reached the simulator (first attempt), Unix ns,
    /// and how long that attempt took in ms.
    pub async fn accepted_at(&self, event_id: &str) -> anyhow::Result<(i128, u64)> {
        let v = self
            .get(&format!("/control/deliveries?event_id={event_id}"))
            .await?;
        let d = v
            .as_array()
            .and_then(|a| a.first())
            .with_context(|| format!("no delivery for event {event_id}"))?;
        let a = d
            .get("attempts")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .with_context(|| format!("no delivery attempt for event {event_id}"))?;
        let status = a.get("status").and_then(Value::as_u64).unwrap_or(0);
        if !(200..300).contains(&status) {
            bail!("event {event_id}: first delivery attempt answered {status}: {a}");
        }
        let at = a
            .get("at")
            .and_then(Value::as_str)
            .and_then(parse_rfc3339_ns)
            .with_context(|| format!("attempt time: {a}"))?;
        let dur = a.get("duration_ms").and_then(Value::as_u64).unwrap_or(0);
        Ok((at + i128::from(dur) * 1_000_000, dur))
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (UTC, as the simulator writes it) → Unix nanoseconds.
pub fn parse_rfc3339_ns(s: &str) -> Option<i128> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-');
    let (y, mo, da): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, ""),
    };
    let mut t = hms.split(':');
    let (h, mi, se): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    let mut ns: i64 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        ns += i64::from(c.to_digit(10)?) * 10i64.pow(8 - i as u32);
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_simulator_timestamps() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ns("1970-01-01T00:00:01.5Z"),
            Some(1_500_000_000)
        );
        // date -u -d 2026-11-22T14:11:42Z +%s = 1795356702
        assert_eq!(
            parse_rfc3339_ns("2026-11-22T14:11:42.885007438Z"),
            Some(1_795_356_702_885_007_438)
        );
    }
}
