//! The agent's API requests (an origin-form request to the relay, `POST /v1/messages`): sent on
//! to the API (`Settings::api_url`) with whatever credential the agent presented (the turn only
//! has a placeholder) replaced by the real one. The request is read whole, bounded; the answer
//! is streamed back as it comes (the API streams its events).

use bytes::Bytes;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};

use crate::setup::{Credential, Settings};
use crate::{reply, Body};

/// Largest request body forwarded (the Messages API takes up to 32 MB).
pub const MAX_REQUEST_BYTES: usize = 40 << 20;

/// Headers of one hop only (RFC 9110 §7.6.1), never forwarded either way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What the agent may not choose about the upstream request: its host, and its credential.
const REPLACED: &[&str] = &["host", "x-api-key", "authorization"];

/// Whether a request is for the agent's API: origin-form (`/v1/messages`), or absolute-form
/// to the relay itself (a client that proxies even its base URL).
pub fn is_api(uri: &Uri) -> bool {
    match uri.authority() {
        None => uri.path().starts_with('/'),
        Some(a) => {
            uri.scheme_str() == Some("http")
                && matches!(a.host(), "127.0.0.1" | "localhost")
                && a.port_u16() == Some(picortex_proto::egress::RELAY_PORT)
        }
    }
}

/// The request's headers as the API gets them: no hop-by-hop headers (nor those the
/// `Connection` header names), no host, and the real credential in place of the agent's.
pub fn upstream_headers(agent: &HeaderMap, credential: &Credential) -> HeaderMap {
    let named: Vec<String> = agent
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::new();
    for (k, v) in agent {
        let n = k.as_str();
        if HOP_BY_HOP.contains(&n) || REPLACED.contains(&n) || named.iter().any(|x| x == n) {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    let set = |out: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(mut v) = HeaderValue::from_str(&value) {
            v.set_sensitive(true);
            out.insert(HeaderName::from_static(name), v);
        }
    };
    match credential {
        Credential::ApiKey(k) => set(&mut out, "x-api-key", k.clone()),
        Credential::OAuth(t) => set(&mut out, "authorization", format!("Bearer {t}")),
        Credential::None => {}
    }
    out
}

/// The API's response headers as the agent gets them: no hop-by-hop headers.
pub fn downstream_headers(api: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in api {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

/// Forward one API request for `who` (the chat user, for the log).
pub async fn forward(
    req: Request<Incoming>,
    settings: &Settings,
    client: &reqwest::Client,
    who: &str,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::warn!(chat_user = who, path = %path, "API request refused: {e}");
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("picortex-egress: request body unreadable or over {MAX_REQUEST_BYTES} bytes: {e}"),
            );
        }
    };
    let url = format!("{}{path}", settings.api_url);
    let sent = client
        .request(parts.method.clone(), &url)
        .headers(upstream_headers(&parts.headers, &settings.credential))
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(chat_user = who, method = %parts.method, path = %path, api = %settings.api_url, "API unreachable: {e}");
            return reply(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "picortex-egress: the agent's API at {} cannot be reached",
                    settings.api_url
                ),
            );
        }
    };
    tracing::info!(
        chat_user = who,
        method = %parts.method,
        path = %path,
        status = resp.status().as_u16(),
        credential = settings.credential.kind(),
        "API request forwarded"
    );
    let (status, headers) = (resp.status(), downstream_headers(resp.headers()));
    let mut out = Response::new(Body::new(StreamBody::new(futures_util::StreamExt::map(
        resp.bytes_stream(),
        |r: Result<Bytes, reqwest::Error>| r.map(Frame::data).map_err(Into::into),
    ))));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_agents_credential_is_replaced_by_the_real_one() {
        let agent = headers(&[
            ("x-api-key", picortex_proto::egress::PLACEHOLDER_API_KEY),
            ("authorization", "Bearer stolen"),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
            ("host", "127.0.0.1:3128"),
        ]);
        let h = upstream_headers(&agent, &Credential::ApiKey("sk-ant-real".into()));
        assert_eq!(h.get("x-api-key").unwrap(), "sk-ant-real");
        assert!(h.get("authorization").is_none());
        assert!(h.get("host").is_none());
        assert_eq!(h.get("anthropic-version").unwrap(), "2023-06-01");
        assert_eq!(h.len(), 3);
        let h = upstream_headers(&agent, &Credential::OAuth("sk-ant-oat01-real".into()));
        assert_eq!(h.get("authorization").unwrap(), "Bearer sk-ant-oat01-real");
        assert!(h.get("x-api-key").is_none());
        // Without a credential, the placeholder does not go on either.
        let h = upstream_headers(&agent, &Credential::None);
        assert!(h.get("x-api-key").is_none() && h.get("authorization").is_none());
    }

    #[test]
    fn hop_by_hop_headers_stop_here_both_ways() {
        let agent = headers(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic x"),
            ("transfer-encoding", "chunked"),
            ("accept", "text/event-stream"),
        ]);
        let h = upstream_headers(&agent, &Credential::None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.get("accept").is_some());
        let api = headers(&[
            ("transfer-encoding", "chunked"),
            ("content-type", "text/event-stream"),
            ("request-id", "req_1"),
        ]);
        let h = downstream_headers(&api);
        assert_eq!(h.len(), 2);
        assert!(h.get("transfer-encoding").is_none());
    }

    #[test]
    fn api_requests_are_origin_form_or_for_the_relay_itself() {
        let u = |s: &str| s.parse::<Uri>().unwrap();
        assert!(is_api(&u("/v1/messages?beta=true")));
        assert!(is_api(&u("http://127.0.0.1:3128/v1/messages")));
        assert!(is_api(&u("http://localhost:3128/v1/messages")));
        assert!(!is_api(&u("http://example.com/v1/messages")));
        assert!(!is_api(&u("http://127.0.0.1:8470/api/linq/inbound")));
        assert!(!is_api(&u("example.com:443")));
    }
}
