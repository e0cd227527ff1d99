//! What a hostile turn sends picortex-egress: an HTTP/1 request head, read here as hyper reads
//! it (httparse), then taken through the service's own decisions:
//! - `CONNECT host:port`: the target (`tunnel::target`), whether its name may be looked up at
//!   all (`may_resolve`), and which of the addresses a lookup returned may be opened (`choose`,
//!   the addresses taken from the input). Oracle, stated independently of `sandbox::refusal`:
//!   never loopback, unspecified, multicast, link-local, 0/8 or 240/4, nor one of the machine's
//!   own addresses, nor any of these through `::ffff:` or NAT64's `64:ff9b::`; a private (LAN)
//!   address only inside an `egress_allow` range; in allowlist mode a name only if the list
//!   holds it, an address literal only inside a range.
//! - anything else: whether it is an API request (`forward::is_api`), and the headers the API
//!   would get (`upstream_headers`): the operator's credential exactly once, none the agent
//!   chose (no `x-api-key`, `authorization`, `host`), no hop-by-hop header nor one `Connection`
//!   names; and the headers the agent gets back (`downstream_headers`): no hop-by-hop header.
//!
//! Input: byte 0 picks the policy and credential, then the request head up to its blank line,
//! then 17-byte records (family byte, 16 address bytes) for the lookup's answer; the last record
//! is also taken as one of the machine's addresses.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use picortex_egress::forward::{downstream_headers, is_api, upstream_headers};
use picortex_egress::sandbox::{self, name_allowed, Egress};
use picortex_egress::setup::Credential;
use picortex_egress::tunnel::{choose, may_resolve, target};

const POLICIES: &[&str] = &[
    "[sandbox]\negress = \"internet\"",
    "[sandbox]\negress = \"allowlist\"",
    "[sandbox]\negress_allow = [\"10.5.0.0/16\", \"2001:db8::/32\", \"api.example.com\", \"*.github.com\"]",
    "[sandbox]\negress = \"internet\"\negress_allow = [\"192.168.7.0/24\"]",
];
const KEY: &str = "sk-ant-operator-key";
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

/// The IPv4 address an IPv6 one stands for (mapped, or NAT64's well-known prefix).
fn as_v4(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => {
            let o = a.octets();
            if let Some(v4) = a.to_ipv4_mapped() {
                IpAddr::V4(v4)
            } else if o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0] {
                IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            } else {
                ip
            }
        }
        v4 => v4,
    }
}

fn never(ip: IpAddr) -> bool {
    match as_v4(ip) {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_link_local()
                || o[0] == 0
                || o[0] >= 240
        }
        IpAddr::V6(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fn private(ip: IpAddr) -> bool {
    match as_v4(ip) {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 10
                || (o[0] == 172 && (16..32).contains(&o[1]))
                || (o[0] == 192 && o[1] == 168)
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            (s[0] & 0xfe00) == 0xfc00 || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
        }
    }
}

fn in_ranges(ranges: &[sandbox::Range], ip: IpAddr) -> bool {
    let ip = as_v4(ip);
    ranges.iter().any(|(family, net, len)| {
        let (addr, width): (Vec<u8>, u32) = match ip {
            IpAddr::V4(a) => (a.octets().to_vec(), 32),
            IpAddr::V6(a) => (a.octets().to_vec(), 128),
        };
        if (*family == 2) != (width == 32) || net.len() != addr.len() {
            return false;
        }
        let n = |b: &[u8]| b.iter().fold(0u128, |n, x| n << 8 | u128::from(*x));
        let mask = if *len == 0 {
            0
        } else {
            (u128::MAX << (128 - len)) >> (128 - width)
        };
        n(&addr) & mask == n(net) & mask
    })
}

fn address(rec: &[u8]) -> Option<IpAddr> {
    let (fam, b) = rec.split_first()?;
    if fam & 1 == 0 {
        Some(IpAddr::V4(Ipv4Addr::new(
            *b.first()?,
            *b.get(1)?,
            *b.get(2)?,
            *b.get(3)?,
        )))
    } else {
        Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?)))
    }
}

fn connect(policy: &Egress, authority: &str, answer: &[IpAddr], host: &[IpAddr]) {
    let Ok(t) = target(authority) else {
        return;
    };
    assert!(
        t.port != 0 && !t.host.is_empty() && t.host.len() <= 253,
        "{t:?}"
    );
    assert_eq!(t.host, t.host.to_ascii_lowercase());
    assert_eq!(t.literal, t.host.parse::<IpAddr>().ok());
    if t.literal.is_none() {
        assert!(
            t.host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
            "{t:?}"
        );
    }
    let named = t.literal.is_none();
    if let Egress::Allowlist { names, .. } = policy {
        assert_eq!(
            may_resolve(policy, &t).is_ok(),
            !named || name_allowed(names, &t.host),
            "{t:?}"
        );
    } else {
        assert!(may_resolve(policy, &t).is_ok());
    }
    if may_resolve(policy, &t).is_err() {
        return;
    }
    // A literal is its own answer; a name gets the lookup's.
    let addrs: Vec<SocketAddr> = match t.literal {
        Some(ip) => vec![SocketAddr::new(ip, t.port)],
        None => answer
            .iter()
            .map(|ip| SocketAddr::new(*ip, t.port))
            .collect(),
    };
    let Ok(chosen) = choose(policy, &t, &addrs, host) else {
        return;
    };
    let ip = chosen.ip();
    assert!(addrs.contains(&chosen), "{chosen} was not in the answer");
    assert!(!never(ip), "{authority}: chose {ip}");
    assert!(
        !host.iter().any(|h| as_v4(*h) == as_v4(ip)),
        "{authority}: chose the machine's own {ip}"
    );
    let ranges: &[sandbox::Range] = match policy {
        Egress::Allowlist { ranges, .. } => ranges,
        Egress::Internet => &[],
    };
    if private(ip) {
        assert!(
            in_ranges(ranges, ip) && matches!(policy, Egress::Allowlist { .. }),
            "{authority}: chose LAN address {ip}"
        );
    }
    if matches!(policy, Egress::Allowlist { .. }) && !named {
        assert!(
            in_ranges(ranges, ip),
            "{authority}: literal {ip} outside every range"
        );
    }
}

fn api(uri: &str, headers: &http::HeaderMap, credential: &Credential) {
    if let Ok(u) = uri.parse::<http::Uri>() {
        let _ = is_api(&u);
    }
    let named: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    let up = upstream_headers(headers, credential);
    for (k, _) in &up {
        let k = k.as_str();
        // The credential's own header is the operator's (checked below), even if `Connection`
        // named it.
        let credential_header = matches!(
            (credential, k),
            (Credential::ApiKey(_), "x-api-key") | (Credential::OAuth(_), "authorization")
        );
        assert!(
            !HOP_BY_HOP.contains(&k)
                && (credential_header || !named.iter().any(|n| n == k))
                && k != "host",
            "{k} went upstream"
        );
    }
    let creds: Vec<_> = up
        .get_all("x-api-key")
        .iter()
        .chain(up.get_all("authorization").iter())
        .collect();
    match credential {
        Credential::ApiKey(k) => {
            assert_eq!(creds.len(), 1, "{creds:?}");
            assert_eq!(
                up.get("x-api-key").and_then(|v| v.to_str().ok()),
                Some(k.as_str())
            );
        }
        Credential::OAuth(t) => {
            assert_eq!(creds.len(), 1, "{creds:?}");
            assert_eq!(
                up.get("authorization").and_then(|v| v.to_str().ok()),
                Some(format!("Bearer {t}").as_str())
            );
        }
        Credential::None => assert!(creds.is_empty(), "the agent's own credential went upstream"),
    }
    let down = downstream_headers(headers);
    assert!(down.keys().all(|k| !HOP_BY_HOP.contains(&k.as_str())));
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = data.split_first() else {
        return;
    };
    let Some(policy) = POLICIES
        .get(usize::from(sel & 3))
        .and_then(|p| sandbox::parse(p).ok())
    else {
        panic!("a fixed policy does not parse");
    };
    let credential = match (sel >> 2) % 3 {
        0 => Credential::ApiKey(KEY.into()),
        1 => Credential::OAuth(KEY.into()),
        _ => Credential::None,
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = req.parse(rest) else {
        return;
    };
    let answer: Vec<IpAddr> = rest
        .get(head..)
        .unwrap_or_default()
        .chunks(17)
        .filter_map(address)
        .collect();
    let host: Vec<IpAddr> = answer.last().copied().into_iter().collect();
    let (Some(method), Some(uri)) = (req.method, req.path) else {
        return;
    };
    if method == "CONNECT" {
        connect(&policy, uri, &answer, &host);
        return;
    }
    let mut map = http::HeaderMap::new();
    for h in req.headers.iter() {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) {
            map.append(k, v);
        }
    }
    api(uri, &map, &credential);
});
