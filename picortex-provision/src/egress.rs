//! Where a turn may connect to (SPEC T1), from the operator's `[sandbox]` table in
//! `/etc/picortex/picortexd.toml` — read by the helper itself, as root, so the gateway cannot
//! loosen a turn's fence:
//!
//! ```toml
//! [sandbox]
//! egress = "internet"     # default: anything public; never the host, link-local or the LAN
//! # egress = "allowlist"  # only these (e.g. the agent's API); still never host or link-local
//! # egress_allow = ["160.79.104.0/23", "2607:6bc0::/48"]
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

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
    /// Only these ranges.
    Allowlist(Vec<Range>),
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
    /// "internet" (default) or "allowlist".
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
    match s.egress.as_deref().unwrap_or("internet") {
        "internet" => Ok(Egress::Internet),
        "allowlist" => {
            let ranges = s
                .egress_allow
                .iter()
                .map(|s| parse_cidr(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("egress_allow", e))?;
            if let Some(b) = ranges
                .iter()
                .zip(&s.egress_allow)
                .find(|(r, _)| touches_host(r))
            {
                return Err(bad(
                    "egress_allow",
                    format!("{} would open the host or link-local to turns", b.1),
                ));
            }
            Ok(Egress::Allowlist(ranges))
        }
        other => Err(bad(
            "egress",
            format!("must be \"internet\" or \"allowlist\", not {other:?}"),
        )),
    }
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

/// The argument that makes picortex-provision print `host_addresses()`, one per line, and exit.
pub const LIST_ADDRESSES_ARG: &str = "--list-host-addresses";

/// `192.0.2.10` or `2001:db8::10`, as the probe prints a single-address range.
pub fn format_range(r: &Range) -> String {
    match (
        r.0,
        <[u8; 4]>::try_from(r.1.as_slice()),
        <[u8; 16]>::try_from(r.1.as_slice()),
    ) {
        (AF_INET, Ok(a), _) => Ipv4Addr::from(a).to_string(),
        (AF_INET6, _, Ok(a)) => Ipv6Addr::from(a).to_string(),
        _ => String::new(),
    }
}

/// The probe's output back into ranges; anything that is not an address is an error.
pub fn parse_addresses(text: &str) -> Result<Vec<Range>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.trim().parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => Ok((AF_INET, a.octets().to_vec(), 32)),
            Ok(std::net::IpAddr::V6(a)) => Ok((AF_INET6, a.octets().to_vec(), 128)),
            Err(_) => Err(format!(
                "address probe printed {:?}",
                l.chars().take(64).collect::<String>()
            )),
        })
        .collect()
}

/// `allow` without the addresses of `host`: systemd lets IPAddressAllow win over
/// IPAddressDeny, so a host address inside an allowed range must be cut out of the range
/// itself. Each cut replaces a prefix by the siblings along the path down to the address.
pub fn subtract(allow: &[Range], host: &[Range]) -> Vec<Range> {
    let mut out: Vec<Range> = allow.to_vec();
    for h in host {
        let mut next = Vec::new();
        for r in out {
            if !overlaps(&r, h) {
                next.push(r);
            } else if r.2 < h.2 {
                // h lies strictly inside r: keep every sibling on the way down to h.
                for len in (r.2 + 1)..=h.2 {
                    let mut sib = h.1.clone();
                    let bit = (len - 1) as usize;
                    if let Some(b) = sib.get_mut(bit / 8) {
                        *b ^= 0x80 >> (bit % 8);
                    }
                    next.push((h.0, mask(&sib, len), len));
                }
            }
            // else r lies inside h (or is h): nothing of it stays.
        }
        out = next;
    }
    out
}

/// `addr` with every bit past the first `len` cleared.
fn mask(addr: &[u8], len: u32) -> Vec<u8> {
    addr.iter()
        .enumerate()
        .map(|(i, b)| {
            let start = (i * 8) as u32;
            if start >= len {
                0
            } else if start + 8 <= len {
                *b
            } else {
                b & (0xffu8 << (8 - (len - start)))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
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
    fn host_addresses_are_cut_out_of_allowed_ranges() {
        let allow = vec![(2, vec![160, 79, 104, 0], 23), (2, vec![1, 2, 3, 0], 24)];
        let host = vec![(2, vec![160, 79, 105, 7], 32), (2, vec![9, 9, 9, 9], 32)];
        let cut = subtract(&allow, &host);
        // The untouched range stays; the other becomes 9 prefixes that cover all but .105.7.
        assert!(cut.contains(&(2, vec![1, 2, 3, 0], 24)));
        assert_eq!(cut.len(), 1 + 9);
        assert!(!cut.iter().any(|r| overlaps(r, &host[0])));
        let covered: u64 = cut
            .iter()
            .filter(|r| overlaps(r, &allow[0]))
            .map(|r| 1u64 << (32 - r.2))
            .sum();
        assert_eq!(covered, 512 - 1);
        assert!(cut.contains(&(2, vec![160, 79, 104, 0], 24)));
        assert!(cut.contains(&(2, vec![160, 79, 105, 6], 32)));
        // A range that is only the host address goes; v6 works the same way.
        assert!(subtract(&[(2, vec![9, 9, 9, 9], 32)], &host).is_empty());
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap().octets().to_vec();
        let cut = subtract(
            &[(10, v6("2607:6bc0::"), 48)],
            &[(10, v6("2607:6bc0::1"), 128)],
        );
        assert_eq!(cut.len(), 80);
        assert!(!cut
            .iter()
            .any(|r| overlaps(r, &(10, v6("2607:6bc0::1"), 128))));
    }

    #[test]
    fn default_is_internet_and_other_tables_are_ignored() {
        assert_eq!(parse("").unwrap(), Egress::Internet);
        assert_eq!(
            parse("[turns]\nmax_concurrent = 2\n[agent]\ncommand = \"x\"").unwrap(),
            Egress::Internet
        );
    }

    #[test]
    fn allowlists_parse_and_never_open_the_host() {
        let e = parse("[sandbox]\negress = \"allowlist\"\negress_allow = [\"160.79.104.0/23\", \"2607:6bc0::/48\"]").unwrap();
        assert_eq!(
            e,
            Egress::Allowlist(vec![
                (2, vec![160, 79, 104, 0], 23),
                (
                    10,
                    "2607:6bc0::".parse::<Ipv6Addr>().unwrap().octets().to_vec(),
                    48
                )
            ])
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
            format!("{CONFIG_PATH}:3:10: sandbox.egress: must be \"internet\" or \"allowlist\", not \"everything\"")
        );
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
