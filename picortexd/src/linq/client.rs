//! Outbound calls to the Linq partner API v3 (SPEC L4): send, typing, read, chat lookup and
//! reactions. One HTTP attempt per call; errors say whether a retry makes sense, and
//! [`backoff`] gives the delay, but the retry loop and the per-pair rate limit belong to the
//! caller (the outbox). The token is only ever held as a sensitive header and never logged.

use std::fmt;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Value};

use super::events::Chat;

/// First retry delay; doubles per attempt.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest delay [`backoff`] computes on its own (a larger `Retry-After` still wins).
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Upper bound on a server-supplied `Retry-After`, so a bogus value cannot park a delivery forever.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Linq's limit on `idempotency_key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Linq error code 2009: "chat is still being created" — a 409 that is worth retrying.
const CODE_CHAT_BEING_CREATED: u32 = 2009;

/// Delay before retry number `attempt` (0 = first retry): `1 s · 2^attempt`, capped at 60 s,
/// and never less than the server's `retry_after`. Deterministic, no jitter.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    retry_after
        .map_or(exp, |ra| exp.max(ra))
        .min(MAX_RETRY_DELAY)
}

/// The longest any retry is put off, whatever Linq's Retry-After says. A send scheduled further
/// away than this can only be a clock that jumped back (the outbox then sends it now).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// A failed API call, classified for the caller's retry decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinqError {
    /// 429, 5xx, 408, 409/2009, timeouts and connection failures: try again after
    /// [`backoff`]`(attempt, retry_after)`.
    #[error("Linq API call failed, retryable ({}): {message}", status_text(*.status))]
    Retryable {
        status: Option<u16>,
        retry_after: Option<Duration>,
        message: String,
    },
    /// Any other 4xx: retrying the same request will fail the same way.
    #[error("Linq API rejected the request (HTTP {status}{}): {message}", code_text(*.code))]
    Rejected {
        status: u16,
        code: Option<u32>,
        message: String,
    },
    /// Bad input or configuration, caught before anything was sent.
    #[error("invalid Linq request: {0}")]
    Invalid(String),
    /// A success status with a body we cannot read, or a redirect. Not retried: the request
    /// may well have taken effect.
    #[error("unexpected Linq API response: {0}")]
    Protocol(String),
}

fn status_text(status: Option<u16>) -> String {
    status.map_or_else(|| "no response".to_owned(), |s| format!("HTTP {s}"))
}

fn code_text(code: Option<u32>) -> String {
    code.map_or_else(String::new, |c| format!(", code {c}"))
}

impl LinqError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, LinqError::Retryable { .. })
    }

    /// The server's requested delay, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LinqError::Retryable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status, when a response arrived.
    pub fn status(&self) -> Option<u16> {
        match self {
            LinqError::Retryable { status, .. } => *status,
            LinqError::Rejected { status, .. } => Some(*status),
            LinqError::Invalid(_) | LinqError::Protocol(_) => None,
        }
    }
}

/// Linq's answer to a send: the message id to record against the outbound delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub chat_id: String,
    pub message_id: String,
    /// `pending|queued|sent|delivered|failed|…`
    pub delivery_status: Option<String>,
    pub service: Option<String>,
}

/// A tapback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reaction {
    Love,
    Like,
    Dislike,
    Laugh,
    Emphasize,
    Question,
    /// Any single emoji.
    Custom(String),
}

impl Reaction {
    pub fn as_str(&self) -> &str {
        match self {
            Reaction::Love => "love",
            Reaction::Like => "like",
            Reaction::Dislike => "dislike",
            Reaction::Laugh => "laugh",
            Reaction::Emphasize => "emphasize",
            Reaction::Question => "question",
            Reaction::Custom(_) => "custom",
        }
    }
}

/// Client for one Linq partner account.
#[derive(Clone)]
pub struct LinqClient {
    http: reqwest::Client,
    /// Base URL without a trailing slash, e.g. `https://api.linqapp.com/api/partner`.
    base: String,
    /// `Bearer <token>`, marked sensitive.
    auth: HeaderValue,
}

impl fmt::Debug for LinqClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinqClient")
            .field("base", &self.base)
            .field("auth", &"<redacted>")
            .finish()
    }
}

impl LinqClient {
    /// `base_url` is the API root including `/api/partner` (paths start at `/v3/…`); `timeout`
    /// bounds each whole request.
    pub fn new(base_url: &str, token: String, timeout: Duration) -> Result<Self, LinqError> {
        let url = Url::parse(base_url)
            .map_err(|e| LinqError::Invalid(format!("base URL {base_url:?}: {e}")))?;
        if !matches!(url.scheme(), "https" | "http")
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(LinqError::Invalid(format!(
                "base URL {base_url:?} must be http(s) without query or fragment"
            )));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(LinqError::Invalid("API token is empty".into()));
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            LinqError::Invalid("API token contains characters not allowed in a header".into())
        })?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // Never carry the bearer token across a redirect.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("picortexd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LinqError::Invalid(format!("HTTP client: {e}")))?;
        Ok(LinqClient {
            http,
            base: url.as_str().trim_end_matches('/').to_owned(),
            auth,
        })
    }

    /// `POST /v3/chats/{chat_id}/messages` with one text part, in-thread when `reply_to` is
    /// set. The same `idempotency_key` on a retry makes Linq send at most once.
    pub async fn send_message(
        &self,
        chat_id: &str,
        text: &str,
        reply_to: Option<&str>,
        idempotency_key: &str,
    ) -> Result<SentMessage, LinqError> {
        check_id("chat id", chat_id)?;
        if text.trim().is_empty() {
            return Err(LinqError::Invalid("message text is empty".into()));
        }
        check_idempotency_key(idempotency_key)?;
        self.post_message(
            chat_id,
            json!({"type": "text", "value": text}),
            reply_to,
            idempotency_key,
        )
        .await
    }

    /// `POST /v3/chats/{chat_id}/messages` with one `part`, in-thread when `reply_to` is set,
    /// under `idempotency_key` (checked by the caller).
    async fn post_message(
        &self,
        chat_id: &str,
        part: serde_json::Value,
        reply_to: Option<&str>,
        idempotency_key: &str,
    ) -> Result<SentMessage, LinqError> {
        let mut message = json!({
            "parts": [part],
            "idempotency_key": idempotency_key,
        });
        if let Some(reply) = reply_to {
            check_id("reply_to message id", reply)?;
            message["reply_to"] = json!({ "message_id": reply });
        }
        let path = format!("/v3/chats/{chat_id}/messages");
        let resp = self
            .call(Method::POST, &path, Some(&json!({ "message": message })))
            .await?;
        #[derive(Deserialize)]
        struct Resp {
            chat_id: Option<String>,
            message: RespMessage,
        }
        #[derive(Deserialize)]
        struct RespMessage {
            id: String,
            delivery_status: Option<String>,
            service: Option<String>,
        }
        let r: Resp = serde_json::from_slice(&resp)
            .map_err(|e| LinqError::Protocol(format!("send response for chat {chat_id}: {e}")))?;
        Ok(SentMessage {
            chat_id: r.chat_id.unwrap_or_else(|| chat_id.to_owned()),
            message_id: r.message.id,
            delivery_status: r.message.delivery_status,
            service: r.message.service,
        })
    }

    /// Send a file as a media part (Linq's attachment flow): `POST /v3/attachments` with its
    /// name, type and size; `PUT` the bytes to the presigned `upload_url` with its
    /// `required_headers` (no partner token: the URL is the capability); then a message with
    /// `{type: "media", attachment_id}`, under `idempotency_key` (a re-send after a crash makes a
    /// second attachment at most, never a second message).
    pub async fn send_file(
        &self,
        chat_id: &str,
        file: &[u8],
        name: &str,
        mime: &str,
        reply_to: Option<&str>,
        idempotency_key: &str,
    ) -> Result<SentMessage, LinqError> {
        check_id("chat id", chat_id)?;
        // Before the upload: a bad key must not leave an attachment behind.
        check_idempotency_key(idempotency_key)?;
        let body = json!({"filename": name, "content_type": mime, "size_bytes": file.len()});
        let resp = self
            .call(Method::POST, "/v3/attachments", Some(&body))
            .await?;
        #[derive(Deserialize)]
        struct Created {
            attachment_id: String,
            upload_url: String,
            #[serde(default)]
            required_headers: std::collections::HashMap<String, String>,
        }
        let c: Created = serde_json::from_slice(&resp)
            .map_err(|e| LinqError::Protocol(format!("attachment response: {e}")))?;
        check_id("attachment id", &c.attachment_id)?;
        if !(c.upload_url.starts_with("https://") || c.upload_url.starts_with("http://")) {
            return Err(LinqError::Protocol(
                "upload_url is not an http(s) URL".into(),
            ));
        }
        let mut put = self.http.put(&c.upload_url).body(file.to_vec());
        for (k, v) in &c.required_headers {
            put = put.header(k.as_str(), v.as_str());
        }
        let up = put.send().await.map_err(|e| transport_error(&e))?;
        if !up.status().is_success() {
            let status = up.status();
            let headers = up.headers().clone();
            let bytes = up.bytes().await.unwrap_or_default();
            return Err(classify(status, &headers, &bytes));
        }
        self.post_message(
            chat_id,
            json!({"type": "media", "attachment_id": c.attachment_id}),
            reply_to,
            idempotency_key,
        )
        .await
    }

    /// `POST /v3/chats`: open a 1:1 chat from the bot's line `from` to `to` with a first text
    /// message (which may not contain a URL, code 1005). The idempotency key makes a retry after
    /// a lost answer return the same chat and message instead of a second one.
    pub async fn create_chat(
        &self,
        from: &str,
        to: &str,
        text: &str,
        idempotency_key: &str,
    ) -> Result<SentMessage, LinqError> {
        if text.trim().is_empty() {
            return Err(LinqError::Invalid("message text is empty".into()));
        }
        if idempotency_key.is_empty() || idempotency_key.chars().count() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(LinqError::Invalid(format!(
                "idempotency key must be 1..={MAX_IDEMPOTENCY_KEY_LEN} characters"
            )));
        }
        let body = json!({
            "from": from,
            "to": [to],
            "message": {
                "parts": [{"type": "text", "value": text}],
                "idempotency_key": idempotency_key,
            },
        });
        let resp = self.call(Method::POST, "/v3/chats", Some(&body)).await?;
        #[derive(Deserialize)]
        struct Resp {
            chat: RespChat,
        }
        #[derive(Deserialize)]
        struct RespChat {
            id: String,
            message: RespMessage,
            #[serde(default)]
            service: Option<String>,
        }
        #[derive(Deserialize)]
        struct RespMessage {
            id: String,
            #[serde(default)]
            delivery_status: Option<String>,
        }
        let r: Resp = serde_json::from_slice(&resp)
            .map_err(|e| LinqError::Protocol(format!("create-chat response: {e}")))?;
        check_id("new chat id", &r.chat.id)?;
        Ok(SentMessage {
            chat_id: r.chat.id,
            message_id: r.chat.message.id,
            delivery_status: r.chat.message.delivery_status,
            service: r.chat.service,
        })
    }

    /// `POST /v3/chats/{chat_id}/typing`. 1:1 iMessage chats only; groups answer 403.
    pub async fn start_typing(&self, chat_id: &str) -> Result<(), LinqError> {
        check_id("chat id", chat_id)?;
        self.call(Method::POST, &format!("/v3/chats/{chat_id}/typing"), None)
            .await
            .map(drop)
    }

    /// `DELETE /v3/chats/{chat_id}/typing`. Sending a message also stops it.
    pub async fn stop_typing(&self, chat_id: &str) -> Result<(), LinqError> {
        check_id("chat id", chat_id)?;
        self.call(Method::DELETE, &format!("/v3/chats/{chat_id}/typing"), None)
            .await
            .map(drop)
    }

    /// `POST /v3/chats/{chat_id}/read`: marks every message in the chat read.
    pub async fn mark_read(&self, chat_id: &str) -> Result<(), LinqError> {
        check_id("chat id", chat_id)?;
        self.call(Method::POST, &format!("/v3/chats/{chat_id}/read"), None)
            .await
            .map(drop)
    }

    /// `GET /v3/chats/{chat_id}`: participants (with `is_me`), `is_group`, display name.
    pub async fn get_chat(&self, chat_id: &str) -> Result<Chat, LinqError> {
        check_id("chat id", chat_id)?;
        let resp = self
            .call(Method::GET, &format!("/v3/chats/{chat_id}"), None)
            .await?;
        serde_json::from_slice(&resp)
            .map_err(|e| LinqError::Protocol(format!("chat {chat_id}: {e}")))
    }

    /// Adds a tapback: `POST /v3/messages/{message_id}/reactions`.
    pub async fn react(&self, message_id: &str, reaction: &Reaction) -> Result<(), LinqError> {
        self.reaction(message_id, reaction, "add").await
    }

    /// Removes a tapback the bot added earlier.
    pub async fn remove_reaction(
        &self,
        message_id: &str,
        reaction: &Reaction,
    ) -> Result<(), LinqError> {
        self.reaction(message_id, reaction, "remove").await
    }

    async fn reaction(
        &self,
        message_id: &str,
        reaction: &Reaction,
        operation: &str,
    ) -> Result<(), LinqError> {
        check_id("message id", message_id)?;
        let mut body = json!({ "operation": operation, "type": reaction.as_str() });
        if let Reaction::Custom(emoji) = reaction {
            if emoji.trim().is_empty() {
                return Err(LinqError::Invalid(
                    "custom reaction without an emoji".into(),
                ));
            }
            body["custom_emoji"] = Value::from(emoji.as_str());
        }
        self.call(
            Method::POST,
            &format!("/v3/messages/{message_id}/reactions"),
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// One request; returns the body of a 2xx response.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, LinqError> {
        let started = Instant::now();
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header(AUTHORIZATION, self.auth.clone());
        if let Some(b) = body {
            req = req.json(b);
        }
        let result = req.send().await;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%method, path, error = %e, "linq request failed");
                return Err(transport_error(&e));
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| transport_error(&e))?;
        tracing::debug!(
            %method,
            path,
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "linq request"
        );
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        Err(classify(status, &headers, &bytes))
    }
}

/// Ids are interpolated into URL paths: allow only what Linq's UUIDs and our test ids use, so a
/// crafted id cannot reach another endpoint.
fn check_idempotency_key(key: &str) -> Result<(), LinqError> {
    if key.is_empty() || key.chars().count() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(LinqError::Invalid(format!(
            "idempotency key must be 1..={MAX_IDEMPOTENCY_KEY_LEN} characters"
        )));
    }
    Ok(())
}

fn check_id(what: &str, id: &str) -> Result<(), LinqError> {
    if picortex_proto::ids::is_linq_id(id) {
        Ok(())
    } else {
        Err(LinqError::Invalid(format!(
            "{what} {id:?} is not a valid id"
        )))
    }
}

/// No usable response: timeouts and connection problems are worth retrying.
fn transport_error(e: &reqwest::Error) -> LinqError {
    if e.is_builder() {
        return LinqError::Invalid(e.to_string());
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
    LinqError::Retryable {
        status: e.status().map(|s| s.as_u16()),
        retry_after: None,
        message: format!("{kind}: {e}"),
    }
}

/// Linq's error envelope: `{"success":false,"error":{"status","code","message","retry_after"}}`.
#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: Option<u32>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    retry_after: Option<Value>,
}

/// Classifies a non-2xx response. Bodies may be Linq's JSON envelope or an HTML error page.
fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> LinqError {
    let detail = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .map(|e| e.error);
    let code = detail.as_ref().and_then(|d| d.code);
    let message = match detail.as_ref().and_then(|d| d.message.clone()) {
        Some(m) => m,
        None => {
            let ctype = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no content type");
            format!(
                "{} ({}, {} byte body)",
                status.canonical_reason().unwrap_or("error"),
                ctype,
                body.len()
            )
        }
    };
    let retry_after = header_retry_after(headers).or_else(|| {
        detail
            .as_ref()
            .and_then(|d| d.retry_after.as_ref())
            .and_then(value_secs)
    });
    let s = status.as_u16();
    let retryable = status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
        || (status == StatusCode::CONFLICT && code == Some(CODE_CHAT_BEING_CREATED));
    if retryable {
        LinqError::Retryable {
            status: Some(s),
            retry_after,
            message,
        }
    } else if status.is_client_error() {
        LinqError::Rejected {
            status: s,
            code,
            message,
        }
    } else {
        LinqError::Protocol(format!("HTTP {s}: {message}"))
    }
}

/// `Retry-After` in delta-seconds (Linq's form; HTTP-dates are ignored).
fn header_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

fn value_secs(v: &Value) -> Option<Duration> {
    let secs = v.as_f64()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        secs.min(MAX_RETRY_AFTER.as_secs_f64()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, Bytes};
    use axum::extract::State;
    use axum::http::{Response, Uri};
    use axum::Router;
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        auth: Option<String>,
        content_type: Option<String>,
        body: Option<Value>,
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    const SENT: &str = r#"{"chat_id":"chat-ok","message":{"id":"347d62c2-0000-4000-8000-000000000001",
        "created_at":"2026-02-05T19:31:13Z","sent_at":null,"delivery_status":"queued","is_read":false,
        "parts":[{"type":"text","value":"On it!","reactions":null}],"service":"iMessage","new_field":1}}"#;
    const CHAT: &str = r#"{"id":"chat-ok","display_name":"Ops","is_group":true,"is_archived":false,
        "created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z",
        "health_status":{"doc_url":"d","status":"HEALTHY","updated_at":"2026-01-01T00:00:00Z"},
        "handles":[{"id":"h1","handle":"+15550001000","service":"iMessage","joined_at":"2026-01-01T00:00:00Z","is_me":true,"status":"active"},
                   {"id":"h2","handle":"+15550002000","service":"iMessage","joined_at":"2026-01-01T00:00:00Z","is_me":false,"status":"active"}]}"#;

    fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Body> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::from(body.to_owned())).expect("response")
    }

    async fn handler(
        State(log): State<Log>,
        method: axum::http::Method,
        uri: Uri,
        headers: axum::http::HeaderMap,
        body: Bytes,
    ) -> Response<Body> {
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let path = uri.path().to_owned();
        log.lock().expect("lock").push(Seen {
            method: method.to_string(),
            path: path.clone(),
            auth: h("authorization"),
            content_type: h("content-type"),
            body: serde_json::from_slice(&body).ok(),
        });
        let json = [("content-type", "application/json")];
        let p = path
            .strip_prefix("/api/partner")
            .unwrap_or("/not-under-base");
        match (method.as_str(), p) {
            ("POST", "/v3/chats/chat-ok/messages") => reply(202, &json, SENT),
            ("POST", "/v3/chats/chat-429/messages") => reply(
                429,
                &[("content-type", "application/json"), ("retry-after", "7")],
                r#"{"success":false,"error":{"status":429,"code":1007,"message":"Rate limited. Try again in 45 seconds.","retry_after":45},"trace_id":"t"}"#,
            ),
            ("POST", "/v3/chats/chat-429b/messages") => reply(
                429,
                &json,
                r#"{"success":false,"error":{"status":429,"code":1007,"message":"Rate limited.","retry_after":45}}"#,
            ),
            ("POST", "/v3/chats/chat-503/messages") => reply(
                503,
                &[("content-type", "text/html")],
                "<!DOCTYPE html><html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
            ),
            ("POST", "/v3/chats/chat-400/messages") => reply(
                400,
                &json,
                r#"{"success":false,"error":{"status":400,"code":1003,"message":"Invalid request body"},"trace_id":"t"}"#,
            ),
            ("POST", "/v3/chats/chat-409/messages") => reply(
                409,
                &json,
                r#"{"success":false,"error":{"status":409,"code":2009,"message":"Chat is still being created"}}"#,
            ),
            ("POST", "/v3/chats/chat-garbage/messages") => reply(202, &json, "not json"),
            ("POST", "/v3/chats/chat-slow/messages") => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                reply(202, &json, SENT)
            }
            ("POST", "/v3/chats/chat-redirect/read") => {
                reply(302, &[("location", "http://example.invalid/")], "")
            }
            ("POST" | "DELETE", "/v3/chats/chat-ok/typing") | ("POST", "/v3/chats/chat-ok/read") => {
                reply(204, &[], "")
            }
            ("POST", "/v3/chats/group/typing") => reply(
                403,
                &json,
                r#"{"success":false,"error":{"status":403,"code":2016,"message":"Not supported in group chats"}}"#,
            ),
            ("GET", "/v3/chats/chat-ok") => reply(200, &json, CHAT),
            ("POST", "/v3/messages/msg-1/reactions") => reply(
                202,
                &json,
                r#"{"status":"accepted","message":"Reaction processed","trace_id":"t"}"#,
            ),
            _ => reply(404, &json, r#"{"success":false,"error":{"status":404,"code":2001,"message":"Not found"}}"#),
        }
    }

    async fn server() -> (String, Log) {
        let log: Log = Arc::default();
        let app = Router::new().fallback(handler).with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}/api/partner/"), log)
    }

    fn client(base: &str) -> LinqClient {
        LinqClient::new(base, "tok-secret-123".into(), Duration::from_secs(5)).expect("client")
    }

    fn last(log: &Log) -> Seen {
        log.lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("a request was made")
    }

    #[tokio::test]
    async fn send_message_request_shape() {
        let (base, log) = server().await;
        let c = client(&base);
        let sent = c
            .send_message(
                "chat-ok",
                "On it!",
                Some("89e3566e-1d13-49e5-a8ee-48490d5bfeb7"),
                "bot-reply-1",
            )
            .await
            .expect("sent");
        assert_eq!(
            sent,
            SentMessage {
                chat_id: "chat-ok".into(),
                message_id: "347d62c2-0000-4000-8000-000000000001".into(),
                delivery_status: Some("queued".into()),
                service: Some("iMessage".into()),
            }
        );
        let seen = last(&log);
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.path, "/api/partner/v3/chats/chat-ok/messages");
        assert_eq!(seen.auth.as_deref(), Some("Bearer tok-secret-123"));
        assert_eq!(seen.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            seen.body,
            Some(json!({"message": {
                "parts": [{"type": "text", "value": "On it!"}],
                "reply_to": {"message_id": "89e3566e-1d13-49e5-a8ee-48490d5bfeb7"},
                "idempotency_key": "bot-reply-1"
            }}))
        );

        // Without reply_to the key is absent, not null.
        c.send_message("chat-ok", "hi", None, "k2")
            .await
            .expect("sent");
        let body = last(&log).body.expect("json body");
        assert!(body["message"].get("reply_to").is_none());
        assert!(!format!("{c:?}").contains("tok-secret"));
    }

    #[tokio::test]
    async fn other_endpoints_request_shape() {
        let (base, log) = server().await;
        let c = client(&base);
        c.start_typing("chat-ok").await.expect("typing");
        let s = last(&log);
        assert_eq!(
            (s.method.as_str(), s.path.as_str()),
            ("POST", "/api/partner/v3/chats/chat-ok/typing")
        );
        assert_eq!(s.body, None);
        c.stop_typing("chat-ok").await.expect("stop typing");
        let s = last(&log);
        assert_eq!(
            (s.method.as_str(), s.path.as_str()),
            ("DELETE", "/api/partner/v3/chats/chat-ok/typing")
        );
        c.mark_read("chat-ok").await.expect("read");
        assert_eq!(last(&log).path, "/api/partner/v3/chats/chat-ok/read");

        let chat = c.get_chat("chat-ok").await.expect("chat");
        assert!(chat.is_group);
        assert_eq!(chat.display_name.as_deref(), Some("Ops"));
        assert_eq!(chat.me().map(|h| h.handle.as_str()), Some("+15550001000"));
        let s = last(&log);
        assert_eq!(
            (s.method.as_str(), s.path.as_str()),
            ("GET", "/api/partner/v3/chats/chat-ok")
        );
        assert_eq!(s.auth.as_deref(), Some("Bearer tok-secret-123"));

        c.react("msg-1", &Reaction::Love).await.expect("react");
        let s = last(&log);
        assert_eq!(s.path, "/api/partner/v3/messages/msg-1/reactions");
        assert_eq!(s.body, Some(json!({"operation": "add", "type": "love"})));
        c.remove_reaction("msg-1", &Reaction::Custom("🔥".into()))
            .await
            .expect("unreact");
        assert_eq!(
            last(&log).body,
            Some(json!({"operation": "remove", "type": "custom", "custom_emoji": "🔥"}))
        );

        let e = c
            .start_typing("group")
            .await
            .expect_err("groups refuse typing");
        assert_eq!(
            e,
            LinqError::Rejected {
                status: 403,
                code: Some(2016),
                message: "Not supported in group chats".into()
            }
        );
    }

    #[tokio::test]
    async fn error_classification() {
        let (base, _log) = server().await;
        let c = client(&base);
        let send = |chat: &'static str| {
            let c = c.clone();
            async move { c.send_message(chat, "x", None, "k").await.expect_err(chat) }
        };

        let e = send("chat-429").await;
        assert!(e.is_retryable());
        assert_eq!(e.status(), Some(429));
        assert_eq!(
            e.retry_after(),
            Some(Duration::from_secs(7)),
            "header wins over body"
        );
        assert!(e.to_string().contains("Rate limited"), "{e}");

        let e = send("chat-429b").await;
        assert_eq!(
            e.retry_after(),
            Some(Duration::from_secs(45)),
            "body retry_after as fallback"
        );

        let e = send("chat-503").await;
        assert!(e.is_retryable());
        assert_eq!(e.status(), Some(503));
        assert_eq!(e.retry_after(), None);
        assert!(e.to_string().contains("text/html"), "{e}");
        assert!(!e.to_string().contains("<html>"), "{e}");

        let e = send("chat-400").await;
        assert_eq!(
            e,
            LinqError::Rejected {
                status: 400,
                code: Some(1003),
                message: "Invalid request body".into()
            }
        );
        assert!(!e.is_retryable());

        let e = send("chat-409").await;
        assert!(e.is_retryable(), "409/2009 is transient: {e}");

        let e = send("unknown-chat").await;
        assert!(matches!(
            e,
            LinqError::Rejected {
                status: 404,
                code: Some(2001),
                ..
            }
        ));

        let e = send("chat-garbage").await;
        assert!(matches!(e, LinqError::Protocol(_)), "{e:?}");
        assert!(!e.is_retryable());

        let e = c.mark_read("chat-redirect").await.expect_err("redirect");
        assert!(matches!(e, LinqError::Protocol(_)), "{e:?}");
    }

    #[tokio::test]
    async fn timeouts_and_refused_connections_are_retryable() {
        let (base, _log) = server().await;
        let c = LinqClient::new(&base, "t".into(), Duration::from_millis(300)).expect("client");
        let e = c
            .send_message("chat-slow", "x", None, "k")
            .await
            .expect_err("timeout");
        assert!(e.is_retryable(), "{e:?}");
        assert_eq!(e.status(), None);
        assert!(e.to_string().contains("timed out"), "{e}");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let c = client(&format!("http://{addr}/api/partner"));
        let e = c.mark_read("chat-ok").await.expect_err("refused");
        assert!(e.is_retryable(), "{e:?}");
        assert!(!e.to_string().contains("tok-secret"));
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_sending() {
        let (base, log) = server().await;
        let c = client(&base);
        for id in ["", "../admin", "a/b", "a?b=c", "chat ok", "..", "é"] {
            let e = c.mark_read(id).await.expect_err(id);
            assert!(matches!(e, LinqError::Invalid(_)), "{id:?}: {e:?}");
        }
        assert!(matches!(
            c.send_message("chat-ok", "  ", None, "k").await,
            Err(LinqError::Invalid(_))
        ));
        assert!(matches!(
            c.send_message("chat-ok", "x", None, "").await,
            Err(LinqError::Invalid(_))
        ));
        assert!(matches!(
            c.send_message("chat-ok", "x", None, &"k".repeat(256)).await,
            Err(LinqError::Invalid(_))
        ));
        assert!(matches!(
            c.send_message("chat-ok", "x", Some("../x"), "k").await,
            Err(LinqError::Invalid(_))
        ));
        assert!(log.lock().expect("lock").is_empty());

        for (base, token) in [
            ("not a url", "t"),
            ("ftp://x/", "t"),
            ("https://x/?q=1", "t"),
            ("https://api.linqapp.com/api/partner", " "),
            ("https://api.linqapp.com/api/partner", "a\nb"),
        ] {
            let r = LinqClient::new(base, token.into(), Duration::from_secs(1));
            assert!(
                matches!(r, Err(LinqError::Invalid(_))),
                "{base:?} {token:?}"
            );
        }
    }

    #[test]
    fn backoff_schedule() {
        let s = Duration::from_secs;
        assert_eq!(backoff(0, None), s(1));
        assert_eq!(backoff(1, None), s(2));
        assert_eq!(backoff(5, None), s(32));
        assert_eq!(backoff(6, None), s(60));
        assert_eq!(backoff(u32::MAX, None), s(60));
        assert_eq!(backoff(0, Some(s(7))), s(7));
        assert_eq!(backoff(4, Some(s(7))), s(16));
        assert_eq!(backoff(10, Some(s(120))), s(120));
    }

    #[test]
    fn retry_after_parsing() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("999999999"));
        assert_eq!(header_retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(header_retry_after(&h), None);
        assert_eq!(value_secs(&json!(1.5)), Some(Duration::from_millis(1500)));
        assert_eq!(value_secs(&json!(-1)), None);
        assert_eq!(value_secs(&json!("45")), None);
    }
}
