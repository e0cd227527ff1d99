//! What the root helper takes from its callers and its configuration, re-validated at its door:
//! chat ids, chat tags and turn ids and every name derived from them (user, home, slice, unit,
//! the unit's object path), the `limits` dictionary of `StartTurn`, and the CIDRs of the egress
//! allowlist. The helper is a binary crate, so its two pure modules are compiled in here by path
//! (`limits.rs`, `egress.rs`); everything else comes from picortex-proto.
//!
//! The same input is read as text (ids, names, CIDRs) and as a list of 10-byte dictionary entries
//! (key, value type, value).

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use picortex_proto::bus::limits as L;
use picortex_proto::ids::{
    is_linq_id, unit_object_path, ChatId, ChatTag, TurnId, CHATS_DIR, TURN_UNIT_PREFIX, USER_PREFIX,
};
use zbus::OwnedVariant;

#[allow(dead_code)]
#[path = "../../picortex-provision/src/egress.rs"]
mod egress;
#[path = "../../picortex-provision/src/limits.rs"]
mod limits;

#[path = "common/fence.rs"]
mod fence;

fn lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A name that is one path component, and safe in a unit name or on a command line.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

fn ids(s: &str) {
    let chat = ChatId::parse(s);
    assert_eq!(chat.is_ok(), is_linq_id(s));
    if let Ok(c) = &chat {
        assert_eq!(c.as_str(), s);
        assert!(!s.is_empty() && s.len() <= 64 && !s.contains(['/', '.', '\0']));
        let digest = c.digest_hex();
        assert_eq!(digest.len(), 64);
        for len in [0, 7, 8, 12, 16, 17, usize::MAX] {
            let t = c.tag_with_len(len);
            assert_eq!(t.as_str().len(), len.clamp(8, 16));
            assert!(digest.starts_with(t.as_str()));
            assert_eq!(ChatTag::parse(t.as_str()).as_ref(), Ok(&t));
        }
        let t = c.tag();
        assert_eq!(ChatTag::from_user_name(&t.user_name()), Ok(t.clone()));
        assert!(plain(&t.user_name()) && t.user_name().len() <= 32);
        assert_eq!(t.home(), format!("{CHATS_DIR}/{}", t.as_str()));
        assert!(plain(&t.slice()));
    }

    if let Ok(t) = ChatTag::parse(s) {
        assert!((8..=16).contains(&s.len()) && lower_hex(s));
        assert_eq!(t.as_str(), s);
        assert_eq!(ChatTag::from_user_name(&t.user_name()), Ok(t.clone()));
        let home = t.home();
        assert_eq!(home.strip_prefix(CHATS_DIR), Some(&*format!("/{s}")));
        assert!(plain(&t.slice()) && t.slice().starts_with("picortex-chat-"));
    }
    if let Ok(t) = ChatTag::from_user_name(s) {
        assert_eq!(t.user_name(), s);
        assert!(s.starts_with(USER_PREFIX));
    }

    if let Ok(t) = TurnId::parse(s) {
        assert!(s.len() == 32 && lower_hex(s));
        let unit = t.unit_name();
        assert!(plain(&unit) && unit.starts_with(TURN_UNIT_PREFIX));
        assert_eq!(TurnId::from_unit_name(&unit), Some(t));
    }
    if let Some(t) = TurnId::from_unit_name(s) {
        assert_eq!(t.unit_name(), s);
    }

    // systemd's object path encoding: only [A-Za-z0-9_] after the prefix, and it decodes back.
    let path = unit_object_path(s);
    let enc = path
        .strip_prefix("/org/freedesktop/systemd1/unit/")
        .unwrap();
    assert!(enc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    assert!(!enc.starts_with(|c: char| c.is_ascii_digit()));
    let mut dec = Vec::new();
    let mut bytes = enc.bytes();
    while let Some(b) = bytes.next() {
        if b == b'_' {
            let hex = [bytes.next().unwrap(), bytes.next().unwrap()];
            dec.push(u8::from_str_radix(std::str::from_utf8(&hex).unwrap(), 16).unwrap());
        } else {
            dec.push(b);
        }
    }
    assert_eq!(dec, s.as_bytes());
}

fn cidr(s: &str) {
    let Ok((family, addr, len)) = egress::parse_cidr(s) else {
        return;
    };
    let (want_family, width) = if s.contains(':') { (10, 128) } else { (2, 32) };
    assert_eq!(family, want_family, "{s:?}");
    assert_eq!(addr.len() * 8, width as usize);
    assert!(len <= width);
}

const KEYS: [&str; 8] = [
    L::MEMORY_MAX,
    L::TASKS_MAX,
    L::RUNTIME_MAX_USEC,
    L::CPU_WEIGHT,
    "memorymax",
    "User",
    "",
    "CPUQuota",
];

fn bounds(key: &str) -> Option<(u64, u64)> {
    match key {
        L::MEMORY_MAX => Some((L::MEMORY_MAX_MIN, L::MEMORY_MAX_MAX)),
        L::TASKS_MAX => Some((L::TASKS_MAX_MIN, L::TASKS_MAX_MAX)),
        L::RUNTIME_MAX_USEC => Some((L::RUNTIME_MAX_USEC_MIN, L::RUNTIME_MAX_USEC_MAX)),
        L::CPU_WEIGHT => Some((1, 10_000)),
        _ => None,
    }
}

/// The `limits` dictionary: accepted exactly when every key is known, every value a uint64 within
/// its bounds; then every given value is the one applied, and the others are the defaults.
fn limits_dict(data: &[u8]) {
    let mut d: HashMap<String, OwnedVariant> = HashMap::new();
    let mut given: HashMap<String, Option<u64>> = HashMap::new();
    for e in data.chunks_exact(10).take(6) {
        let key = KEYS[usize::from(e[0]) % KEYS.len()].to_owned();
        let raw = u64::from_le_bytes(e[2..10].try_into().unwrap());
        let n = match e[1] >> 4 & 3 {
            0 => raw,
            1 => raw % 20_000,
            2 => raw % (1 << 37),
            _ => raw % (1 << 41),
        };
        let (v, as_u64) = match e[1] & 7 {
            0..=2 => (OwnedVariant::from(n), Some(n)),
            3 => (OwnedVariant::from(n as u32), None),
            4 => (OwnedVariant::from(n as i64), None),
            5 => (OwnedVariant::from(n & 1 == 1), None),
            6 => (OwnedVariant::from(n as i32), None),
            _ => (
                OwnedVariant::try_from(zbus::Variant::from("1G")).unwrap(),
                None,
            ),
        };
        d.insert(key.clone(), v);
        given.insert(key, as_u64);
    }
    let ok = given.iter().all(|(k, v)| match (bounds(k), v) {
        (Some((lo, hi)), Some(n)) => (lo..=hi).contains(n),
        _ => false,
    });
    match limits::Limits::from_dict(&d) {
        Ok(l) => {
            assert!(ok, "accepted {given:?}");
            let def = limits::Limits::default();
            let pick = |k: &str, d: u64| given.get(k).map_or(d, |v| v.unwrap());
            assert_eq!(l.memory_max, pick(L::MEMORY_MAX, def.memory_max));
            assert_eq!(l.tasks_max, pick(L::TASKS_MAX, def.tasks_max));
            assert_eq!(
                l.runtime_max_usec,
                pick(L::RUNTIME_MAX_USEC, def.runtime_max_usec)
            );
            assert_eq!(l.cpu_weight, pick(L::CPU_WEIGHT, def.cpu_weight));
        }
        Err(_) => assert!(!ok, "refused {given:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    ids(&s);
    for line in s.lines() {
        ids(line);
        cidr(line);
    }
    limits_dict(data);
    // The egress policy is also fuzzed from whole configuration files in `config`; here, the
    // input's lines as an allowlist.
    let list: Vec<String> = s.lines().map(|l| format!("{l:?}")).collect();
    let toml = format!(
        "[sandbox]\negress = \"allowlist\"\negress_allow = [{}]\n",
        list.join(", ")
    );
    if let Ok(egress::Egress::Allowlist { ranges, names }) = egress::parse(&toml) {
        for r in &ranges {
            fence::assert_not_host(r);
        }
        // A name in the list never lets a turn reach the host, whatever it resolves to.
        for n in &names {
            let probe = n.strip_prefix('*').map_or_else(|| n.clone(), |rest| format!("a{rest}"));
            assert!(egress::name_allowed(&names, &probe), "{n} does not allow {probe}");
            for ip in ["127.0.0.1", "::1", "169.254.169.254", "10.0.0.1"] {
                assert!(egress::refusal(&egress::Egress::Allowlist { ranges: vec![], names: names.clone() }, ip.parse().unwrap(), true, &[]).is_some());
            }
        }
    }
});
