//! picortex-egress: the turns' one way out. A turn unit has a network of its own with nothing
//! but loopback; picortex-run relays its agent's connections to this service's Unix socket
//! (`picortex_proto::egress::SOCKET`, `picortex-egress.socket`). Here, for chat users only:
//! - an API request (`POST /v1/messages`) is forwarded to the agent's API with the real
//!   credential in place of the turn's placeholder (`forward`): the key never enters a turn;
//! - `CONNECT host:port` opens a tunnel where the operator's `[sandbox]` egress policy allows,
//!   to an address checked here (`tunnel`), never the host, link-local or (unless opened) the LAN.
//!
//! Started by the socket as root, it reads the configuration and the credential, becomes the
//! `picortex-egress` user for good, and exits once idle (the socket starts it again, with the
//! configuration of that moment).

pub mod forward;
// The whole `[sandbox]` table, shared with the helper and the gateway's `--check-config`.
#[allow(dead_code)]
#[path = "../../picortex-provision/src/egress.rs"]
pub mod sandbox;
pub mod setup;
pub mod tunnel;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use picortex_proto::ids::{CHAT_ID_MAX, CHAT_ID_MIN};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: a short text, a stream from the API, or nothing (a tunnel).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Connections one chat user may hold at once (API requests and tunnels together).
const MAX_PER_CHAT: usize = 32;
/// How long the service stays without a connection before it exits.
const IDLE: Duration = Duration::from_secs(60);

/// A short text response.
pub fn reply(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::new(
        http_body_util::Full::new(Bytes::from(text.to_owned())).map_err(|e| match e {}),
    ));
    *r.status_mut() = status;
    r
}

/// What every connection shares: the settings read as root, the API client, the count of
/// open connections per chat user.
pub struct Ctx {
    settings: setup::Settings,
    client: reqwest::Client,
    /// Open connections, by chat user.
    open: Mutex<HashMap<u32, usize>>,
}

/// One connection's place in `Ctx::open`, given back when the last holder drops it: the
/// connection, or the tunnel it became (which outlives the HTTP exchange).
pub struct Slot(Arc<Ctx>, u32);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.open.lock() {
            if let Some(n) = m.get_mut(&self.1) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.1);
                }
            }
        }
    }
}

impl Ctx {
    pub fn new(settings: setup::Settings, client: reqwest::Client) -> Ctx {
        Ctx {
            settings,
            client,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn take_slot(self: &Arc<Self>, uid: u32) -> Option<Slot> {
        let mut m = self.open.lock().ok()?;
        let n = m.entry(uid).or_insert(0);
        if *n >= MAX_PER_CHAT {
            return None;
        }
        *n += 1;
        Some(Slot(self.clone(), uid))
    }

    fn idle(&self) -> bool {
        self.open.lock().map(|m| m.is_empty()).unwrap_or(false)
    }
}

/// Serve turns on `listener` until idle for `IDLE`.
pub async fn serve(listener: tokio::net::UnixListener, ctx: Arc<Ctx>) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move { connection(stream, ctx).await });
                }
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = tokio::time::sleep(IDLE) => {
                if ctx.idle() {
                    tracing::info!("idle for {}s; exiting (the socket starts picortex-egress again)", IDLE.as_secs());
                    return Ok(());
                }
            }
        }
    }
}

/// Whether a uid is a chat user's: nobody else is served.
pub fn is_chat_uid(uid: u32) -> bool {
    (CHAT_ID_MIN..=CHAT_ID_MAX).contains(&uid)
}

async fn connection(stream: tokio::net::UnixStream, ctx: Arc<Ctx>) {
    let uid = match stream.peer_cred() {
        Ok(c) => c.uid(),
        Err(e) => {
            tracing::warn!("cannot tell who connected: {e}");
            return;
        }
    };
    if !is_chat_uid(uid) {
        tracing::warn!(
            uid,
            decision = "refused",
            "connection refused: uid {uid} is not a chat user"
        );
        return;
    }
    let who = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    let Some(slot) = ctx.take_slot(uid).map(Arc::new) else {
        tracing::warn!(
            chat_user = who,
            decision = "refused",
            "connection refused: {MAX_PER_CHAT} already open"
        );
        return;
    };
    let c = ctx.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (c, who, slot) = (c.clone(), who.clone(), slot.clone());
        async move { Ok::<_, Infallible>(handle(req, &c, &who, slot).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!("connection: {e}");
    }
}

async fn handle(req: Request<Incoming>, ctx: &Ctx, who: &str, slot: Arc<Slot>) -> Response<Body> {
    if req.method() == Method::CONNECT {
        return tunnel::tunnel(req, &ctx.settings.egress, who, slot).await;
    }
    if forward::is_api(req.uri()) {
        return forward::forward(req, &ctx.settings, &ctx.client, who).await;
    }
    tracing::warn!(chat_user = who, uri = %req.uri(), decision = "refused", "plain http:// request refused");
    reply(
        StatusCode::FORBIDDEN,
        "picortex-egress: only the agent's API and CONNECT (https) are served\n",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn each_chat_holds_at_most_its_share_and_a_tunnel_keeps_its_place() {
        let ctx = Arc::new(Ctx::new(
            setup::Settings {
                egress: sandbox::Egress::Internet,
                api_url: picortex_proto::egress::DEFAULT_API_URL.into(),
                credential: setup::Credential::None,
            },
            reqwest::Client::new(),
        ));
        let a = CHAT_ID_MIN;
        let held: Vec<_> = (0..MAX_PER_CHAT)
            .map(|_| ctx.take_slot(a).map(Arc::new))
            .collect::<Option<_>>()
            .unwrap_or_default();
        assert_eq!(held.len(), MAX_PER_CHAT);
        assert!(ctx.take_slot(a).is_none(), "one too many");
        assert!(
            ctx.take_slot(a + 1).is_some(),
            "another chat is not held back"
        );
        // A connection that became a tunnel: the connection's holder goes, the tunnel's stays.
        let tunnel = held[0].clone();
        drop(held);
        assert!(!ctx.idle(), "the tunnel still counts");
        drop(tunnel);
        assert!(ctx.idle());
    }

    #[test]
    fn only_chat_users_are_served() {
        assert!(is_chat_uid(CHAT_ID_MIN) && is_chat_uid(CHAT_ID_MAX));
        for other in [0, 999, 1000, 65534, CHAT_ID_MIN - 1, CHAT_ID_MAX + 1] {
            assert!(!is_chat_uid(other), "{other}");
        }
    }
}
