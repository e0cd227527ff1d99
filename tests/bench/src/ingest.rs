//! Ingest throughput: signed webhooks that start no turn (`message.delivered` for the bot's own
//! message in an existing chat), each with a fresh event id, over many keep-alive HTTP/1.1
//! connections to the gateway. Requests are generated and signed here (Standard Webhooks), the
//! way Linq signs them. Counts only 2xx as successes; everything else is an error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::net::TcpStream;

use crate::http::Conn;
use crate::stats::Summary;

pub struct Params {
    pub addr: String,
    pub secret: String,
    pub chat_id: String,
    pub bot_handle: String,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Marker in every ingest body, to count what the gateway stored.
pub const MARKER: &str = "benchmark ingest reply";

pub struct Outcome {
    pub ok: u64,
    /// 2xx answers over the whole phase, warm-up included.
    pub total_ok: u64,
    pub errors: u64,
    /// Non-2xx answers by status (0: I/O error).
    pub by_status: Vec<(u16, u64)>,
    pub seconds: f64,
    pub rate: f64,
    pub latency_ms: Summary,
    /// CPU the load generator itself used, as a share of one core.
    pub loadgen_cpu: f64,
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    err: AtomicU64,
    statuses: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
}

fn body(event_id: &str, chat_id: &str, bot: &str, now: &str) -> String {
    let msg_id = uuid::Uuid::new_v4();
    let handle = format!(
        r#"{{"id":"759d86ea-b2b4-5f28-88b8-a88025e88448","handle":"{bot}","joined_at":"2026-01-01T00:00:00Z","service":"iMessage","is_me":true,"left_at":null,"status":"active"}}"#
    );
    format!(
        concat!(
            r#"{{"api_version":"v3","webhook_version":"2026-02-03","event_type":"message.delivered","event_id":"{eid}","created_at":"{now}","#,
            r#""trace_id":"{trace}","partner_id":"6f1c2b7e-0000-4000-8000-000000000001","data":{{"id":"{mid}","#,
            r#""chat":{{"id":"{chat}","is_group":false,"owner_handle":{handle},"health_status":{{"doc_url":"https://docs.linqapp.com/","status":"HEALTHY","updated_at":"{now}"}}}},"#,
            r#""direction":"outbound","sender_handle":{handle},"parts":[{{"type":"text","value":"benchmark ingest reply","mentions":null}}],"#,
            r#""service":"iMessage","effect":null,"reply_to":null,"sent_at":"{now}","delivered_at":"{now}","read_at":null}}}}"#
        ),
        eid = event_id,
        now = now,
        trace = uuid::Uuid::new_v4().simple(),
        mid = msg_id,
        chat = chat_id,
        handle = handle,
    )
}

fn utc_now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Key from `whsec_<base64>`.
pub fn signing_key(secret: &str) -> anyhow::Result<Vec<u8>> {
    let s = secret.trim();
    Ok(B64.decode(s.strip_prefix("whsec_").unwrap_or(s))?)
}

fn request(mac: &Hmac<Sha256>, addr: &str, chat_id: &str, bot: &str) -> Vec<u8> {
    let event_id = uuid::Uuid::new_v4().to_string();
    let now = utc_now_rfc3339();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let body = body(&event_id, chat_id, bot, &now);
    let mut m = mac.clone();
    m.update(event_id.as_bytes());
    m.update(b".");
    m.update(ts.to_string().as_bytes());
    m.update(b".");
    m.update(body.as_bytes());
    let sig = B64.encode(m.finalize().into_bytes());
    let mut r = format!(
        "POST /api/linq/inbound?version=2026-02-03 HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nwebhook-id: {event_id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: v1,{sig}\r\nUser-Agent: picortex-bench\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process from /proc/self/stat, in clock ticks (100 Hz on Linux).
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

pub async fn run(p: Params) -> anyhow::Result<Outcome> {
    let key = signing_key(&p.secret)?;
    let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).map_err(|e| anyhow::anyhow!("{e}"))?;
    let counters = Arc::new(Counters::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let p = Arc::new(p);
    let mut tasks = Vec::new();
    for _ in 0..p.connections {
        let (mac, c, measuring, stop, p) = (
            mac.clone(),
            counters.clone(),
            measuring.clone(),
            stop.clone(),
            p.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<f64> = Vec::new();
            let mut conn: Option<Conn<TcpStream>> = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    match TcpStream::connect(&p.addr).await {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            conn = Some(Conn::new(s));
                        }
                        Err(_) => {
                            c.err.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(cn) = conn.as_mut() else { continue };
                let req = request(&mac, &p.addr, &p.chat_id, &p.bot_handle);
                let t0 = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(30), cn.send(&req)).await;
                let counted = measuring.load(Ordering::Relaxed);
                match r {
                    Ok(Ok(resp)) => {
                        if (200..300).contains(&resp.status) {
                            c.ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            c.err.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut m) = c.statuses.lock() {
                                *m.entry(resp.status).or_default() += 1;
                            }
                        }
                        if counted {
                            lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                        }
                        if resp.close {
                            conn = None;
                        }
                    }
                    _ => {
                        c.err.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut m) = c.statuses.lock() {
                            *m.entry(0).or_default() += 1;
                        }
                        conn = None;
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(p.warmup).await;
    let (ok0, cpu0, t0) = (
        counters.ok.load(Ordering::Relaxed),
        cpu_seconds(),
        Instant::now(),
    );
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(p.duration).await;
    let (ok1, cpu1, secs) = (
        counters.ok.load(Ordering::Relaxed),
        cpu_seconds(),
        t0.elapsed().as_secs_f64(),
    );
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            lat.extend(l);
        }
    }
    let by_status = counters
        .statuses
        .lock()
        .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
        .unwrap_or_default();
    let ok = ok1 - ok0;
    Ok(Outcome {
        ok,
        total_ok: counters.ok.load(Ordering::Relaxed),
        // Errors anywhere in the run, warm-up included: every request must be answered 2xx.
        errors: counters.err.load(Ordering::Relaxed),
        by_status,
        seconds: secs,
        rate: ok as f64 / secs,
        latency_ms: Summary::of(&lat),
        loadgen_cpu: (cpu1 - cpu0) / secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_json_and_timestamps_parse() {
        let b = body("e", "c", "+15550001000", &utc_now_rfc3339());
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["event_type"], "message.delivered");
        assert_eq!(v["data"]["chat"]["id"], "c");
        let now = crate::sim::parse_rfc3339_ns(&utc_now_rfc3339()).unwrap();
        let sys = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert!((sys - now).abs() < 1_000_000_000);
    }
}
