//! `CONNECT host:port`: a tunnel for whatever the agent runs (git, curl, npm, a web fetch),
//! opened only where the operator's `[sandbox]` policy allows (`sandbox::refusal`), to an
//! address the proxy resolved and checked itself — never the host, link-local, or the LAN
//! unless a range opens it. In allowlist mode a name the list does not hold is refused before
//! any lookup, so a turn cannot send data out through the resolver either.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::sandbox::{name_allowed, refusal, Egress};
use crate::{reply, Body};

const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a `CONNECT` wants to go.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// A name, or an address literal (without brackets).
    pub host: String,
    pub port: u16,
    pub literal: Option<IpAddr>,
}

/// The target of a `CONNECT` request's authority (`host:port`, a port required).
pub fn target(authority: &str) -> Result<Target, String> {
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{authority:?}: CONNECT needs host:port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{authority:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.len() > 253 {
        return Err(format!("{authority:?}: bad host"));
    }
    let literal = host.parse::<IpAddr>().ok();
    if literal.is_none()
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(format!("{authority:?}: bad host"));
    }
    Ok(Target {
        host: host.to_ascii_lowercase(),
        port,
        literal,
    })
}

/// Whether the policy lets `t`'s name be looked up at all (`Err`: why not). An address
/// literal needs no lookup; the address check decides.
pub fn may_resolve(e: &Egress, t: &Target) -> Result<(), &'static str> {
    match (e, t.literal) {
        (_, Some(_)) | (Egress::Internet, None) => Ok(()),
        (Egress::Allowlist { names, .. }, None) if name_allowed(names, &t.host) => Ok(()),
        (Egress::Allowlist { .. }, None) => Err("not in [sandbox] egress_allow"),
    }
}

/// The first of `addrs` the policy allows, or why none is.
pub fn choose(
    e: &Egress,
    t: &Target,
    addrs: &[SocketAddr],
    host: &[IpAddr],
) -> Result<SocketAddr, String> {
    let named = t.literal.is_none();
    let mut why = "the name has no address";
    for a in addrs {
        match refusal(e, a.ip(), named, host) {
            None => return Ok(*a),
            Some(r) => why = r,
        }
    }
    Err(match addrs.first() {
        Some(_) if t.literal.is_some() => format!("{} is {why}", t.host),
        Some(a) => format!("{} ({}) is {why}", t.host, a.ip()),
        None => format!("{}: {why}", t.host),
    })
}

/// The machine's own addresses, read at each `CONNECT` (a turn must not reach its listeners
/// through any of them).
fn host_addresses() -> Vec<IpAddr> {
    let Ok(ifs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    ifs.filter_map(|i| i.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}

/// Open the tunnel `req` asks for, if the policy allows; `slot` (the connection's place in the
/// per-chat count) is held until the tunnel closes.
pub async fn tunnel(
    req: Request<Incoming>,
    egress: &Egress,
    who: &str,
    slot: std::sync::Arc<crate::Slot>,
) -> Response<Body> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let refused = |why: String| {
        tracing::warn!(chat_user = who, target = %authority, decision = "refused", "CONNECT refused: {why}");
        reply(StatusCode::FORBIDDEN, &format!("picortex-egress: {why}\n"))
    };
    let t = match target(&authority) {
        Ok(t) => t,
        Err(e) => return refused(e),
    };
    if let Err(why) = may_resolve(egress, &t) {
        return refused(format!("{} is {why}", t.host));
    }
    let addrs: Vec<SocketAddr> = match t.literal {
        Some(ip) => vec![SocketAddr::new(ip, t.port)],
        None => {
            match tokio::time::timeout(
                RESOLVE_TIMEOUT,
                tokio::net::lookup_host((t.host.as_str(), t.port)),
            )
            .await
            {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(e)) => return refused(format!("{}: cannot resolve: {e}", t.host)),
                Err(_) => return refused(format!("{}: no answer from the resolver", t.host)),
            }
        }
    };
    let addr = match choose(egress, &t, &addrs, &host_addresses()) {
        Ok(a) => a,
        Err(why) => return refused(why),
    };
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(chat_user = who, target = %authority, address = %addr, "CONNECT failed: {e}");
            return reply(
                StatusCode::BAD_GATEWAY,
                &format!("picortex-egress: {addr}: {e}\n"),
            );
        }
        Err(_) => {
            return reply(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("picortex-egress: {addr}: timed out\n"),
            )
        }
    };
    tracing::info!(chat_user = who, target = %authority, address = %addr, decision = "allowed", "CONNECT tunnel opened");
    let who = who.to_owned();
    tokio::spawn(async move {
        let _slot = slot;
        match hyper::upgrade::on(req).await {
            Ok(up) => {
                let mut agent = TokioIo::new(up);
                let mut upstream = upstream;
                let moved = tokio::io::copy_bidirectional(&mut agent, &mut upstream).await;
                tracing::debug!(chat_user = who, address = %addr, "tunnel closed: {moved:?}");
            }
            Err(e) => tracing::debug!(chat_user = who, "CONNECT upgrade failed: {e}"),
        }
    });
    Response::new(Body::new(http_body_util::BodyExt::map_err(
        http_body_util::Empty::new(),
        |e| match e {},
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sandbox::parse;

    #[test]
    fn targets_are_host_and_port() {
        let t = target("GitHub.com:443").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.literal),
            ("github.com", 443, None)
        );
        let t = target("[2001:db8::1]:8443").unwrap();
        assert_eq!(t.literal, Some("2001:db8::1".parse().unwrap()));
        for bad in [
            "github.com",
            "github.com:0",
            "x:99999",
            ":443",
            "a b:443",
            "a/b:443",
        ] {
            assert!(target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_allowlist_never_resolves_a_name_it_does_not_hold() {
        let e = parse("[sandbox]\negress_allow = [\"github.com\", \"10.5.0.0/16\"]").unwrap();
        assert_eq!(may_resolve(&e, &target("github.com:443").unwrap()), Ok(()));
        assert!(may_resolve(&e, &target("exfil-data.attacker.example:443").unwrap()).is_err());
        // An address literal is not looked up: the address check decides.
        assert_eq!(may_resolve(&e, &target("10.5.0.1:22").unwrap()), Ok(()));
        assert_eq!(
            may_resolve(
                &crate::sandbox::Egress::Internet,
                &target("any.example:443").unwrap()
            ),
            Ok(())
        );
    }

    #[test]
    fn the_first_allowed_address_is_chosen_and_a_refusal_says_why() {
        let e = crate::sandbox::Egress::Internet;
        let t = target("example.com:443").unwrap();
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let got = choose(&e, &t, &[a("127.0.0.1:443"), a("198.51.100.9:443")], &[]).unwrap();
        assert_eq!(got, a("198.51.100.9:443"));
        let err = choose(&e, &t, &[a("10.0.0.1:443")], &[]).unwrap_err();
        assert!(
            err.contains("example.com (10.0.0.1)") && err.contains("private"),
            "{err}"
        );
        // The host's own public address is the host.
        let host = ["198.51.100.9".parse().unwrap()];
        assert!(choose(&e, &t, &[a("198.51.100.9:443")], &host).is_err());
        assert!(choose(&e, &t, &[], &[]).unwrap_err().contains("no address"));
        let lit = target("10.0.0.1:443").unwrap();
        let err = choose(&e, &lit, &[a("10.0.0.1:443")], &[]).unwrap_err();
        assert!(err.starts_with("10.0.0.1 is a private"), "{err}");
    }
}
