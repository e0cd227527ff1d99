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

// ---- outbound: the attachment upload flow (POST /v3/attachments, PUT the bytes, media part) ----

/// Content types Linq accepts for upload (the official client's `SupportedContentType`); FLAC,
/// OGG and executables are refused (research/linq.md).
pub const SUPPORTED: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/heic",
    "image/heif",
    "image/tiff",
    "image/bmp",
    "image/svg+xml",
    "image/webp",
    "image/x-icon",
    "video/mp4",
    "video/quicktime",
    "video/mpeg",
    "video/mpeg2",
    "video/x-m4v",
    "video/x-msvideo",
    "video/3gpp",
    "audio/mpeg",
    "audio/mp3",
    "audio/x-m4a",
    "audio/mp4",
    "audio/x-caf",
    "audio/x-wav",
    "audio/x-aiff",
    "audio/aiff",
    "audio/aac",
    "audio/midi",
    "audio/amr",
    "application/pdf",
    "application/vnd.apple.pkpass",
    "text/plain",
    "text/markdown",
    "text/vcard",
    "text/rtf",
    "text/csv",
    "text/html",
    "text/calendar",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/x-iwork-pages-sffpages",
    "application/x-iwork-numbers-sffnumbers",
    "application/x-iwork-keynote-sffkey",
    "application/epub+zip",
    "text/xml",
    "application/json",
    "application/zip",
    "application/x-gzip",
];
/// Pre-uploaded media: at most 100 MB.
pub const MAX_UPLOAD: u64 = 100_000_000;
/// Upload URLs are valid for 15 minutes.
const UPLOAD_TTL_S: i64 = 900;

/// An attachment created with `POST /v3/attachments`.
#[derive(Clone)]
pub struct Attachment {
    pub id: String,
    pub filename: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub created_at: String,
    pub upload_expires: i64,
    /// "pending" until the bytes are PUT, then "complete".
    pub status: &'static str,
}

pub type Attachments = std::sync::Mutex<HashMap<String, Attachment>>;

use crate::error::ApiError;

/// `POST /v3/attachments`: validate the metadata, reserve an id and a presigned upload URL.
pub fn create(sim: &Sim, v: &Value, now: &str) -> Result<Value, ApiError> {
    let filename = v
        .get("filename")
        .and_then(Value::as_str)
        .filter(|f| !f.trim().is_empty())
        .ok_or_else(|| ApiError::missing("filename"))?;
    let content_type = v
        .get("content_type")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::missing("content_type"))?;
    let size = v
        .get("size_bytes")
        .and_then(Value::as_u64)
        .ok_or_else(|| ApiError::missing("size_bytes"))?;
    if !SUPPORTED.contains(&content_type) {
        return Err(ApiError::new(
            400,
            5003,
            format!("content_type {content_type} is not supported"),
        ));
    }
    if size == 0 || size > MAX_UPLOAD {
        return Err(ApiError::new(
            400,
            5004,
            format!("size_bytes must be 1..={MAX_UPLOAD}"),
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let expires = unix_now() + UPLOAD_TTL_S;
    let a = Attachment {
        id: id.clone(),
        filename: filename.to_owned(),
        content_type: content_type.to_owned(),
        size_bytes: size,
        created_at: now.to_owned(),
        upload_expires: expires,
        status: "pending",
    };
    sim.attachments
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), a);
    let expires_at = time::OffsetDateTime::from_unix_timestamp(expires)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    Ok(json!({
        "attachment_id": id,
        "upload_url": format!("{}/upload/{id}?expires={expires}", sim.cfg.media_base),
        "download_url": download_url(sim, &id),
        "expires_at": expires_at,
        "http_method": "PUT",
        "required_headers": {"Content-Type": content_type},
    }))
}

fn download_url(sim: &Sim, id: &str) -> String {
    format!("{}/media/{id}?expires={}", sim.cfg.media_base, i64::MAX / 2)
}

/// `GET /v3/attachments/{id}`.
pub fn retrieve(sim: &Sim, id: &str) -> Result<Value, ApiError> {
    let all = sim.attachments.lock().unwrap_or_else(|p| p.into_inner());
    let a = all
        .get(id)
        .ok_or_else(|| ApiError::new(404, 2003, "Attachment not found"))?;
    Ok(json!({
        "id": a.id, "content_type": a.content_type, "created_at": a.created_at,
        "filename": a.filename, "size_bytes": a.size_bytes, "status": a.status,
        "download_url": (a.status == "complete").then(|| download_url(sim, &a.id)),
    }))
}

/// The media part a message gets for a pre-uploaded attachment: 404 (2003) for an unknown id,
/// 409 (2007) while its bytes have not been uploaded.
pub fn attachment_part(sim: &Sim, id: &str) -> Result<Value, ApiError> {
    let all = sim.attachments.lock().unwrap_or_else(|p| p.into_inner());
    let a = all
        .get(id)
        .ok_or_else(|| ApiError::new(404, 2003, "Attachment not found"))?;
    if a.status != "complete" {
        return Err(ApiError::new(
            409,
            2007,
            "Attachment is not ready (upload its bytes first)",
        ));
    }
    Ok(json!({
        "type": "media", "id": a.id, "url": download_url(sim, &a.id),
        "filename": a.filename, "mime_type": a.content_type, "size_bytes": a.size_bytes,
        "reactions": null,
    }))
}

/// `PUT /upload/{id}?expires=…`: the presigned upload. The Content-Type must be the declared one
/// and the body exactly `size_bytes` long, as S3 checks a presigned PUT.
pub async fn upload(
    State(sim): State<std::sync::Arc<Sim>>,
    Path(id): Path<String>,
    Query(q): Query<Expiry>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut all = sim.attachments.lock().unwrap_or_else(|p| p.into_inner());
    let Some(a) = all.get_mut(&id) else {
        return (StatusCode::NOT_FOUND, "NoSuchUpload").into_response();
    };
    if q.expires != Some(a.upload_expires) || unix_now() > a.upload_expires {
        return (StatusCode::FORBIDDEN, "Request has expired").into_response();
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != a.content_type {
        return (
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch (Content-Type)",
        )
            .into_response();
    }
    if body.len() as u64 != a.size_bytes {
        return (
            StatusCode::BAD_REQUEST,
            "body length differs from size_bytes",
        )
            .into_response();
    }
    a.status = "complete";
    let blob = Blob {
        bytes: body.to_vec(),
        mime_type: a.content_type.clone(),
        expires: i64::MAX / 2,
    };
    drop(all);
    sim.media
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, blob);
    StatusCode::OK.into_response()
}

/// Replace the placeholder parts `validate` made for `attachment_id` media with the attachment's
/// own (or fail as Linq does).
pub fn resolve_parts(sim: &Sim, parts: &mut [Value]) -> Result<(), ApiError> {
    for p in parts.iter_mut() {
        let pre = p["type"] == "media"
            && p["url"]
                .as_str()
                .is_some_and(|u| u.ends_with("/file") && u.contains("/attachments/"));
        if pre {
            let id = p["id"].as_str().unwrap_or_default().to_owned();
            *p = attachment_part(sim, &id)?;
        }
    }
    Ok(())
}
