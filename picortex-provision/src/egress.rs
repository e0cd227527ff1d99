//! Where a turn may connect to (SPEC T1), from the operator's `[sandbox]` table in
//! `/etc/picortex/picortexd.toml` — read by picortex-egress itself, as root, before it serves a
//! turn, so the gateway cannot loosen a turn's fence. A turn has a network namespace of its own
//! with only loopback: its one way out is picortex-egress, which forwards the agent's API
//! requests (always, with the real credential) and opens a `CONNECT` tunnel only where this
//! policy says (`refusal`):
//!
//! ```toml
//! [sandbox]
//! egress = "allowlist"    # default: the agent's API and these, never the host or link-local
//! egress_allow = ["github.com", "*.githubusercontent.com", "160.79.104.0/23"]
//! # egress = "internet"   # anything public; never the host, link-local or the LAN
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

pub const CONFIG_PATH: &str = "/etc/picortex/picortexd.toml";

const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;

/// A CIDR as systemd's IPAddressAllow/Deny take it: (family, address bytes, prefix length).
pub type Range = (i32, Vec<u8>, u32);

#[derive(Debug, Clone, PartialEq)]
pub enum Egress {
    /// Public internet only.
    Internet,
    /// Only these ranges, and these host names (`names`: lowercase, exact, or `*.` and a
    /// domain for any name under it).
    Allowlist {
        ranges: Vec<Range>,
        names: Vec<String>,
    },
}

#[derive(Debug, Deserialize, Default)]
struct File {
    #[serde(default)]
    sandbox: Sandbox,
}

/// The whole `[sandbox]` table: the helper reads it (egress here, `disk_quota` in disk.rs) and
/// the gateway's `--check-config` checks it with the same rules and the same messages.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Sandbox {
    /// "allowlist" (default) or "internet".
    pub egress: Option<String>,
    #[serde(default)]
    pub egress_allow: Vec<String>,
    /// Each chat home's size limit (disk.rs checks it).
    pub disk_quota: Option<String>,
}

/// A problem with one key of the configuration, before it is placed in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyError {
    /// "section.key".
    pub key: String,
    pub msg: String,
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Where `section.key` is set in `text` (the value's line and column), if it is.
pub fn key_position(text: &str, dotted: &str) -> Option<(usize, usize)> {
    use std::collections::BTreeMap;
    type Shape = BTreeMap<String, BTreeMap<String, toml::Spanned<toml::Value>>>;
    let (section, key) = dotted.split_once('.')?;
    let shape: Shape = toml::from_str(text).ok()?;
    let v = shape.get(section)?.get(key)?;
    Some(line_col(text, v.span().start))
}

/// The `[section]` a byte offset falls in (the last table header before it).
fn section_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset.min(text.len()))?;
    before.lines().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix('[')
            .and_then(|l| l.split(']').next())
            .filter(|n| !n.is_empty() && !n.starts_with('['))
            .map(|n| n.trim().to_owned())
    })
}

/// One line, as compilers print it: `path:line:col: [section] message`. toml's own rendering of
/// its errors spans several lines (a snippet and a caret), which `systemctl status` would cut.
pub fn toml_error(path: &str, text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            match section_at(text, span.start) {
                Some(s) => format!("{path}:{line}:{col}: [{s}] {msg}"),
                None => format!("{path}:{line}:{col}: {msg}"),
            }
        }
        None => format!("{path}: {msg}"),
    }
}

/// `path:line:col: key: msg` for a value that parsed but is not allowed.
pub fn key_error(path: &str, text: &str, e: &KeyError) -> String {
    match key_position(text, &e.key) {
        Some((line, col)) => format!("{path}:{line}:{col}: {}: {}", e.key, e.msg),
        None => format!("{path}: {}: {}", e.key, e.msg),
    }
}

/// A home's limit when the operator sets none.
pub const DEFAULT_QUOTA: u64 = 2 << 30;
/// The least a turn needs.
pub const MIN_QUOTA: u64 = 1 << 20;

/// A size as the configuration writes it: bytes, or a whole number with K, M, G or T (powers of
/// 1024, an optional trailing `B` or `iB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
            };
            (t.get(..i).unwrap_or(""), shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"2G\" or \"512M\""))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Each chat home's size limit, in bytes, of a parsed `[sandbox]` table.
pub fn disk_quota(s: &Sandbox) -> Result<u64, KeyError> {
    let bad = |msg: String| KeyError {
        key: "sandbox.disk_quota".into(),
        msg,
    };
    let bytes = match &s.disk_quota {
        None => return Ok(DEFAULT_QUOTA),
        Some(q) => parse_size(q).map_err(bad)?,
    };
    if bytes < MIN_QUOTA {
        return Err(bad(format!(
            "{:?} is less than the 1M a turn needs",
            s.disk_quota.as_deref().unwrap_or_default()
        )));
    }
    Ok(bytes)
}

/// The egress policy of a parsed `[sandbox]` table.
pub fn check(s: &Sandbox) -> Result<Egress, KeyError> {
    let bad = |key: &str, msg: String| KeyError {
        key: format!("sandbox.{key}"),
        msg,
    };
    match s.egress.as_deref().unwrap_or("allowlist") {
        "internet" => Ok(Egress::Internet),
        "allowlist" => {
            let (mut ranges, mut names) = (Vec::new(), Vec::new());
            for entry in &s.egress_allow {
                let range = match entry.parse::<IpAddr>() {
                    Ok(ip) => Some(single(ip)),
                    Err(_) if entry.contains('/') => {
                        Some(parse_cidr(entry).map_err(|e| bad("egress_allow", e))?)
                    }
                    Err(_) => None,
                };
                if let Some(r) = range {
                    if touches_host(&r) {
                        return Err(bad(
                            "egress_allow",
                            format!("{entry} would open the host or link-local to turns"),
                        ));
                    }
                    ranges.push(r);
                } else {
                    names.push(parse_name(entry).map_err(|e| bad("egress_allow", e))?);
                }
            }
            Ok(Egress::Allowlist { ranges, names })
        }
        other => Err(bad(
            "egress",
            format!("must be \"allowlist\" or \"internet\", not {other:?}"),
        )),
    }
}

/// A host name of `egress_allow`: letters, digits and hyphens in dot-separated labels, at least
/// two of them, optionally `*.` first (any name under that domain, not the domain itself).
/// Lowercased; a trailing dot is dropped.
pub fn parse_name(s: &str) -> Result<String, String> {
    let lower = s.trim_end_matches('.').to_ascii_lowercase();
    let bare = lower.strip_prefix("*.").unwrap_or(&lower);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if bare.len() > 253 || bare.split('.').count() < 2 || !bare.split('.').all(label_ok) {
        return Err(format!(
            "{s:?} is neither a CIDR like 160.79.104.0/23 nor a host name like api.example.com \
             (or *.example.com)"
        ));
    }
    Ok(lower)
}

/// Whether `host` (a name a turn asked to connect to) is one `names` allows.
pub fn name_allowed(names: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    names.iter().any(|n| match n.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        None => *n == host,
    })
}

/// `ip` as a single-address range; an IPv6 address that stands for an IPv4 one as that IPv4
/// address: IPv4-mapped (`::ffff:a.b.c.d`), and NAT64's well-known prefix (`64:ff9b::a.b.c.d`,
/// RFC 6052), which a NAT64 gateway on the machine's network translates to that address, LAN
/// and metadata service included.
pub fn single(ip: IpAddr) -> Range {
    match ip {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec(), 32),
        IpAddr::V6(a) => match a.to_ipv4_mapped().or_else(|| nat64_embedded(&a)) {
            Some(v4) => (AF_INET, v4.octets().to_vec(), 32),
            None => (AF_INET6, a.octets().to_vec(), 128),
        },
    }
}

/// The IPv4 address in a `64:ff9b::/96` address.
fn nat64_embedded(a: &std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    match a.octets() {
        [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, b0, b1, b2, b3] => {
            Some(std::net::Ipv4Addr::new(b0, b1, b2, b3))
        }
        _ => None,
    }
}

/// Why a turn may not connect to `ip` (`None`: it may), asked for by a name the allowlist
/// names (`named`) or not, on a machine whose own addresses are `host`. Never the host itself
/// (loopback, any of its addresses), link-local (cloud metadata), multicast or unspecified;
/// a private (LAN) address only where an `egress_allow` range opens it, never through a name
/// (a public name resolving to a LAN address is how DNS rebinding reaches in).
pub fn refusal(e: &Egress, ip: IpAddr, named: bool, host: &[IpAddr]) -> Option<&'static str> {
    let r = single(ip);
    let never = touches_host(&r)
        || host.iter().any(|h| single(*h) == r)
        || NEVER.iter().any(|n| covers(&range(n), &r));
    if never {
        return Some("the host itself, link-local, multicast or unspecified");
    }
    let private = PRIVATE.iter().any(|n| covers(&range(n), &r));
    match e {
        Egress::Internet if private => Some("a private (LAN) address, which egress = \"internet\" never opens"),
        Egress::Internet => None,
        Egress::Allowlist { ranges, .. } if ranges.iter().any(|a| covers(a, &r)) => None,
        Egress::Allowlist { .. } if named && private => {
            Some("an allowed name that resolved to a private (LAN) address; only an egress_allow range opens one")
        }
        Egress::Allowlist { .. } if named => None,
        Egress::Allowlist { .. } => Some("not in [sandbox] egress_allow"),
    }
}

/// Never reachable from a turn, besides loopback and link-local (`touches_host`).
const NEVER: &[&str] = &[
    "0.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "ff00::/8",
];
/// The LAN: RFC 1918, shared address space (CGNAT), unique local IPv6, and NAT64's local-use
/// prefix (RFC 8215), whose translations only the site knows.
const PRIVATE: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "64:ff9b:1::/48",
];

fn range(cidr: &str) -> Range {
    parse_cidr(cidr).unwrap_or((0, Vec::new(), 0))
}

pub fn parse_cidr(s: &str) -> Result<Range, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR like 160.79.104.0/23"))?;
    let len: u32 = len
        .parse()
        .map_err(|_| format!("{s:?}: bad prefix length"))?;
    if let Ok(a) = addr.parse::<Ipv4Addr>() {
        if len > 32 {
            return Err(format!("{s:?}: prefix longer than 32"));
        }
        return Ok((AF_INET, a.octets().to_vec(), len));
    }
    if let Ok(a) = addr.parse::<Ipv6Addr>() {
        if len > 128 {
            return Err(format!("{s:?}: prefix longer than 128"));
        }
        return Ok((AF_INET6, a.octets().to_vec(), len));
    }
    Err(format!("{s:?} is not an IPv4 or IPv6 CIDR"))
}

/// Whether two prefixes of one family share any address: they agree on the shorter prefix.
fn overlaps(a: &Range, b: &Range) -> bool {
    if a.0 != b.0 {
        return false;
    }
    let bits = a.2.min(b.2) as usize;
    (0..bits).all(|i| {
        let bit = |v: &[u8]| {
            v.get(i / 8)
                .is_some_and(|byte| byte & (0x80 >> (i % 8)) != 0)
        };
        bit(&a.1) == bit(&b.1)
    })
}

/// Whether every address of `inner` is in `outer`.
pub fn covers(outer: &Range, inner: &Range) -> bool {
    outer.2 <= inner.2 && overlaps(outer, inner)
}

/// Whether `r` reaches the host itself (loopback) or link-local (cloud metadata), which no
/// configuration may open to a turn.
fn touches_host(r: &Range) -> bool {
    let mut v6_loop = vec![0u8; 16];
    if let Some(b) = v6_loop.last_mut() {
        *b = 1;
    }
    let mut fe80 = vec![0u8; 16];
    fe80.splice(0..2, [0xfe, 0x80]);
    let never: [Range; 4] = [
        (AF_INET, vec![127, 0, 0, 0], 8),
        (AF_INET, vec![169, 254, 0, 0], 16),
        (AF_INET6, v6_loop, 128),
        (AF_INET6, fe80, 10),
    ];
    never.iter().any(|n| overlaps(r, n))
}

pub fn parse(text: &str) -> Result<Egress, String> {
    let f: File = toml::from_str(text).map_err(|e| toml_error(CONFIG_PATH, text, &e))?;
    check(&f.sandbox).map_err(|e| key_error(CONFIG_PATH, text, &e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    #[test]
    fn a_range_covers_what_lies_inside_it_in_its_family() {
        let lo = parse_cidr("127.0.0.0/8").unwrap();
        assert!(covers(&lo, &parse_cidr("127.0.0.1/32").unwrap()));
        assert!(covers(&lo, &lo));
        assert!(!covers(&parse_cidr("127.0.0.1/32").unwrap(), &lo));
        assert!(!covers(&lo, &parse_cidr("128.0.0.1/32").unwrap()));
        assert!(covers(
            &parse_cidr("::/0").unwrap(),
            &parse_cidr("::1/128").unwrap()
        ));
        assert!(!covers(
            &parse_cidr("0.0.0.0/0").unwrap(),
            &parse_cidr("::1/128").unwrap()
        ));
    }

    #[test]
    fn default_is_an_empty_allowlist_and_other_tables_are_ignored() {
        let none = Egress::Allowlist {
            ranges: vec![],
            names: vec![],
        };
        assert_eq!(parse("").unwrap(), none);
        assert_eq!(
            parse("[turns]\nmax_concurrent = 2\n[agent]\ncommand = \"x\"").unwrap(),
            none
        );
        assert_eq!(
            parse("[sandbox]\negress = \"internet\"").unwrap(),
            Egress::Internet
        );
    }

    #[test]
    fn names_parse_and_match_exactly_or_below_a_wildcard() {
        let e =
            parse("[sandbox]\negress_allow = [\"GitHub.com.\", \"*.example.org\", \"192.0.2.7\"]")
                .unwrap();
        let Egress::Allowlist { ranges, names } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(names, &["github.com", "*.example.org"]);
        assert_eq!(ranges, &[(2, vec![192, 0, 2, 7], 32)]);
        assert!(name_allowed(names, "github.com"));
        assert!(name_allowed(names, "GITHUB.COM."));
        assert!(!name_allowed(names, "api.github.com"));
        assert!(!name_allowed(names, "evilgithub.com"));
        assert!(name_allowed(names, "a.b.example.org"));
        assert!(!name_allowed(names, "example.org"));
        assert!(!name_allowed(names, "badexample.org"));
        for bad in [
            "localhost",
            "*.com.",
            "-x.com",
            "a..b",
            "a b.com",
            "x_y.com",
            "*",
        ] {
            let t = format!("[sandbox]\negress_allow = [\"{bad}\"]");
            assert!(parse(&t).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_host_link_local_and_the_lan_are_refused_by_default() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let host = [ip("192.0.2.10"), ip("2001:db8::10")];
        let net = Egress::Internet;
        for never in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "192.0.2.10",
            "2001:db8::10",
            "::ffff:127.0.0.1",
            "::ffff:192.0.2.10",
        ] {
            assert!(
                refusal(&net, ip(never), true, &host).is_some(),
                "{never} open"
            );
            let all = Egress::Allowlist {
                ranges: vec![parse_cidr("192.0.2.0/24").unwrap()],
                names: vec![],
            };
            assert!(
                refusal(&all, ip(never), true, &host).is_some(),
                "{never} open"
            );
        }
        for lan in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(refusal(&net, ip(lan), false, &host).is_some(), "{lan} open");
        }
        for public in [
            "198.51.100.1",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert_eq!(refusal(&net, ip(public), false, &host), None, "{public}");
        }
    }

    #[test]
    fn an_allowlist_opens_its_ranges_and_its_names_public_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let e = parse("[sandbox]\negress_allow = [\"10.5.0.0/16\", \"api.example.com\"]").unwrap();
        // By range: even a LAN range, when the operator names it.
        assert_eq!(refusal(&e, ip("10.5.1.1"), false, &[]), None);
        assert!(refusal(&e, ip("10.6.1.1"), false, &[]).is_some());
        // By name: public addresses only (DNS rebinding).
        assert_eq!(refusal(&e, ip("198.51.100.7"), true, &[]), None);
        assert!(refusal(&e, ip("198.51.100.7"), false, &[]).is_some());
        assert!(refusal(&e, ip("192.168.0.7"), true, &[])
            .unwrap()
            .contains("private"));
        // A name resolving into an allowed range is fine.
        assert_eq!(refusal(&e, ip("10.5.0.9"), true, &[]), None);
    }

    #[test]
    fn nat64_addresses_are_judged_as_the_ipv4_address_they_reach() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let internet = Egress::Internet;
        // The well-known prefix: the gateway's loopback, metadata, the LAN are refused as such.
        for never in ["64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::e000:1"] {
            assert!(
                refusal(&internet, ip(never), true, &[])
                    .unwrap()
                    .contains("host itself"),
                "{never}"
            );
        }
        assert!(refusal(&internet, ip("64:ff9b::a00:1"), true, &[])
            .unwrap()
            .contains("private"));
        assert!(refusal(&internet, ip("64:ff9b::c0a8:101"), false, &[]).is_some());
        // The machine's own IPv4 address, asked for through NAT64.
        assert!(refusal(
            &internet,
            ip("64:ff9b::c000:20a"),
            false,
            &[ip("192.0.2.10")]
        )
        .is_some());
        // A public IPv4 address through NAT64 is what it would be without.
        assert_eq!(refusal(&internet, ip("64:ff9b::808:808"), true, &[]), None);
        // The local-use prefix: only the site knows what it reaches.
        assert!(refusal(&internet, ip("64:ff9b:1::a00:1"), true, &[])
            .unwrap()
            .contains("private"));
        // An IPv4 range the operator opens covers its NAT64 form.
        let e = parse("[sandbox]\negress_allow = [\"10.5.0.0/16\"]").unwrap();
        assert_eq!(refusal(&e, ip("64:ff9b::a05:101"), false, &[]), None);
        assert!(refusal(&e, ip("64:ff9b::a06:101"), false, &[]).is_some());
    }

    #[test]
    fn allowlists_parse_and_never_open_the_host() {
        let e = parse("[sandbox]\negress = \"allowlist\"\negress_allow = [\"160.79.104.0/23\", \"2607:6bc0::/48\"]").unwrap();
        assert_eq!(
            e,
            Egress::Allowlist {
                ranges: vec![
                    (2, vec![160, 79, 104, 0], 23),
                    (
                        10,
                        "2607:6bc0::".parse::<Ipv6Addr>().unwrap().octets().to_vec(),
                        48
                    )
                ],
                names: vec![]
            }
        );
        for bad in [
            "127.0.0.0/8",
            "127.0.0.1/32",
            "0.0.0.0/0",
            "169.254.169.254/32",
            "::1/128",
            "fe80::/10",
            "::/0",
        ] {
            let t = format!("[sandbox]\negress = \"allowlist\"\negress_allow = [\"{bad}\"]");
            assert!(
                parse(&t).unwrap_err().contains("would open the host"),
                "{bad} accepted"
            );
        }
        assert!(parse("[sandbox]\negress = \"everything\"").is_err());
        assert!(
            parse("[sandbox]\negress = \"allowlist\"\negress_allow = [\"10.0.0.0/33\"]").is_err()
        );
        assert!(
            parse("[sandbox]\negres = \"allowlist\"").is_err(),
            "typo accepted"
        );
    }

    #[test]
    fn errors_are_one_line_with_file_line_and_column() {
        let e = parse("[turns]\nx = 1\n\n[sandbox]\negres = \"allowlist\"").unwrap_err();
        assert!(
            e.starts_with(&format!(
                "{CONFIG_PATH}:5:1: [sandbox] unknown field `egres`"
            )),
            "{e}"
        );
        assert!(e.contains("`egress_allow`") && !e.contains('\n'), "{e}");
        let e = parse("[sandbox]\n\negress = \"everything\"").unwrap_err();
        assert_eq!(
            e,
            format!("{CONFIG_PATH}:3:10: sandbox.egress: must be \"allowlist\" or \"internet\", not \"everything\"")
        );
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
