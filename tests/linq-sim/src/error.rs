//! Linq's error envelope. Every failing partner-API call answers
//! `{"success":false,"error":{status,code,message,retry_after?,doc_url},"trace_id":…}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// An error the partner API reports to the caller, with Linq's numeric error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: u32,
    pub message: String,
    /// Seconds; set for 429 (body `retry_after` and the `Retry-After` header).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: u32, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// 1001: a required field is missing.
    pub fn missing(field: &str) -> Self {
        Self::new(400, 1001, format!("Missing required field: {field}"))
    }
    /// 1003: the body is not what the schema says (bad JSON, wrong type).
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(400, 1003, message)
    }
    /// 1004: the content breaks a message rule (length, part order, …).
    pub fn bad_content(message: impl Into<String>) -> Self {
        Self::new(400, 1004, message)
    }
    pub fn chat_not_found() -> Self {
        Self::new(404, 2001, "Chat not found")
    }
    pub fn message_not_found() -> Self {
        Self::new(404, 2002, "Message not found")
    }
    pub fn unauthorized() -> Self {
        Self::new(
            401,
            2004,
            "Unauthorized - missing or invalid authentication token",
        )
    }
    pub fn rate_limited(retry_after: u64) -> Self {
        ApiError {
            status: 429,
            code: 1007,
            message: format!("Rate limited. Try again in {retry_after} seconds."),
            retry_after: Some(retry_after),
        }
    }
    /// The error an injected fault of HTTP status `status` reports.
    pub fn injected(status: u16, retry_after: Option<u64>) -> Self {
        match status {
            429 => Self::rate_limited(retry_after.unwrap_or(1)),
            503 => Self::new(503, 4004, "Service temporarily unavailable"),
            500 => Self::new(500, 3006, "Internal server error"),
            401 => Self::unauthorized(),
            s if s >= 500 => Self::new(s, 3001, "Upstream server error"),
            s => Self::new(s, 1003, "Injected error"),
        }
    }

    pub fn doc_url(&self) -> String {
        format!(
            "https://docs.linqapp.com/error/codes/{}xxx/{}/",
            self.code / 1000,
            self.code
        )
    }

    pub fn body(&self, trace_id: &str) -> Value {
        let mut error = json!({
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "doc_url": self.doc_url(),
        });
        if let Some(s) = self.retry_after {
            error["retry_after"] = json!(s);
        }
        json!({"success": false, "error": error, "trace_id": trace_id})
    }

    pub fn into_response_with(self, trace_id: &str) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.body(trace_id))).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_envelope_matches_linq() {
        let e = ApiError::rate_limited(45);
        let b = e.body("t1");
        assert_eq!(b["success"], false);
        assert_eq!(b["error"]["status"], 429);
        assert_eq!(b["error"]["code"], 1007);
        assert_eq!(b["error"]["retry_after"], 45);
        assert_eq!(
            b["error"]["doc_url"],
            "https://docs.linqapp.com/error/codes/1xxx/1007/"
        );
        assert_eq!(b["trace_id"], "t1");
        let r = e.into_response_with("t1");
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "45");
    }
}
