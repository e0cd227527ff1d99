//! Inbound media as Linq serves it: a person's photo or file is a `media` part whose URL points
//! at Linq's CDN and may expire (15 minutes on the "ephemeral" tier, research/linq.md). Here the
//! CDN is `GET /media/{id}?expires=<unix>` on the API listener, without the partner token (the
//! URL is the capability); after `expires` it answers 403, as a signed CDN URL does.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::state::Sim;

/// One file the simulated CDN holds.
pub struct Blob {
    pub bytes: Vec<u8>,
    pub mime_type: String,
    /// Unix seconds after which the URL answers 403.
    pub expires: i64,
}

/// A media part of a simulated inbound message (`POST /control/inbound` `media`).
#[derive(Deserialize, Clone)]
pub struct InboundMedia {
    pub filename: Option<String>,
    #[serde(default = "default_mime")]
    pub mime_type: String,
    /// The bytes, base64; or `size` bytes of a repeating pattern.
    pub content_b64: Option<String>,
    pub size: Option<u64>,
    /// Seconds the URL stays valid (default 900).
    pub ttl_s: Option<i64>,
    /// A URL of the test's choosing instead of the CDN's (a non-Linq host).
    pub url: Option<String>,
    /// The size announced in the part, when it should differ from the real one.
    pub announced_size: Option<u64>,
}

fn default_mime() -> String {
    "application/octet-stream".into()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Store `m` on the CDN and return its response-shaped part.
pub fn part(sim: &Sim, m: &InboundMedia) -> Result<Value, String> {
    let bytes = match (&m.content_b64, m.size) {
        (Some(b), _) => B64.decode(b).map_err(|e| format!("content_b64: {e}"))?,
        (None, Some(n)) if n <= 200 << 20 => (0..n).map(|i| (i % 251) as u8).collect(),
        (None, Some(_)) => return Err("size: at most 200 MiB".into()),
        (None, None) => Vec::new(),
    };
    let id = uuid::Uuid::new_v4().to_string();
    let expires = unix_now() + m.ttl_s.unwrap_or(900);
    let size = m.announced_size.unwrap_or(bytes.len() as u64);
    let url = match &m.url {
        Some(u) => u.clone(),
        None => format!("{}/media/{id}?expires={expires}", sim.cfg.media_base),
    };
    sim.media.lock().unwrap_or_else(|p| p.into_inner()).insert(
        id.clone(),
        Blob {
            bytes,
            mime_type: m.mime_type.clone(),
            expires,
        },
    );
    Ok(json!({
        "type": "media", "id": id, "url": url,
        "filename": m.filename, "mime_type": m.mime_type, "size_bytes": size,
        "reactions": null,
    }))
}

#[derive(Deserialize)]
pub struct Expiry {
    expires: Option<i64>,
}

/// `GET /media/{id}?expires=…`: the bytes until the URL expires, 403 after, 404 if unknown.
pub async fn serve(
    State(sim): State<std::sync::Arc<Sim>>,
    Path(id): Path<String>,
    Query(q): Query<Expiry>,
) -> Response {
    let store = sim.media.lock().unwrap_or_else(|p| p.into_inner());
    let Some(b) = store.get(&id) else {
        return (StatusCode::NOT_FOUND, "no such media").into_response();
    };
    if q.expires != Some(b.expires) || unix_now() > b.expires {
        return (StatusCode::FORBIDDEN, "Request has expired").into_response();
    }
    (
        [(header::CONTENT_TYPE, b.mime_type.clone())],
        b.bytes.clone(),
    )
        .into_response()
}

pub type Store = std::sync::Mutex<HashMap<String, Blob>>;
