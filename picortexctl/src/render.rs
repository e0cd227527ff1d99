//! Turning Gateway1's records into what a person reads (aligned tables, `key: value` lines) or
//! a script reads (JSON). Pure functions, unit-tested.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use zbus::Variant;

use picortex_proto::gateway::Record;

/// A D-Bus value as JSON.
pub fn json(v: &Variant<'_>) -> Value {
    match v {
        Variant::U8(n) => (*n).into(),
        Variant::Bool(b) => (*b).into(),
        Variant::I16(n) => (*n).into(),
        Variant::U16(n) => (*n).into(),
        Variant::I32(n) => (*n).into(),
        Variant::U32(n) => (*n).into(),
        Variant::I64(n) => (*n).into(),
        Variant::U64(n) => (*n).into(),
        Variant::F64(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Variant::Str(s) => s.as_str().into(),
        Variant::Signature(s) => s.to_string().into(),
        Variant::ObjectPath(p) => p.as_str().into(),
        Variant::Variant(b) => json(b),
        Variant::Array(a) => Value::Array(a.inner().iter().map(json).collect()),
        Variant::Dict(d) => Value::Object(
            d.iter()
                .map(|(k, v)| {
                    let k = match json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, json(v))
                })
                .collect(),
        ),
        Variant::Structure(s) => Value::Array(s.fields().iter().map(json).collect()),
        #[allow(unreachable_patterns)]
        _ => Value::Null,
    }
}

/// A record as a JSON object, keys sorted.
pub fn record(r: &Record) -> Value {
    let sorted: BTreeMap<&String, Value> = r.iter().map(|(k, v)| (k, json(v))).collect();
    Value::Object(
        sorted
            .into_iter()
            .map(|(k, v)| (k.clone(), v))
            .collect::<Map<_, _>>(),
    )
}

pub fn records(rs: &[Record]) -> Value {
    Value::Array(rs.iter().map(record).collect())
}

/// A field of a JSON record as a cell: "-" when absent.
pub fn cell(r: &Value, key: &str) -> String {
    match r.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(", "),
        Some(v) => v.to_string(),
    }
}

/// Unix milliseconds as a UTC time, "-" for none.
pub fn when(r: &Value, key: &str) -> String {
    r.get(key)
        .and_then(Value::as_i64)
        .map_or_else(|| "-".into(), time_ms)
}

pub fn time_ms(ms: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .map_or_else(|| ms.to_string(), |s| format!("{s} UTC"))
}

pub fn usd(r: &Value, key: &str) -> String {
    r.get(key)
        .and_then(Value::as_f64)
        .map_or_else(|| "-".into(), |v| format!("${v:.4}"))
}

/// Bytes as the configuration writes them.
pub fn size(r: &Value, key: &str) -> String {
    let Some(b) = r.get(key).and_then(Value::as_u64) else {
        return "-".into();
    };
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b => b.to_string(),
    }
}

/// A setting with a star when the chat has its own (not the default).
pub fn own(value: String, r: &Value, own_key: &str) -> String {
    if r.get(own_key).and_then(Value::as_bool).unwrap_or(false) {
        format!("{value}*")
    } else {
        value
    }
}

/// Shorten to `n` characters, on one line.
pub fn clip(s: &str, n: usize) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one.chars().count() <= n {
        one
    } else {
        format!(
            "{}…",
            one.chars().take(n.saturating_sub(1)).collect::<String>()
        )
    }
}

/// An aligned table, header in capitals, like `systemctl list-units`.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    let pad = w[i] - c.chars().count();
                    format!("{c}{}", " ".repeat(pad))
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.clone()));
    }
    out
}

/// `key: value` lines with the keys right-aligned, like `timedatectl`.
pub fn pairs(kv: &[(&str, String)]) -> String {
    let w = kv.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    kv.iter()
        .map(|(k, v)| format!("{k:>w$}: {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `--since`: today (00:00 UTC), all, Nd, Nh, or YYYY-MM-DD (UTC), as unix ms.
pub fn since_ms(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    let day = 86_400_000;
    let bad = || format!("--since {s:?}: use today, all, 7d, 12h or a date like 2026-11-01");
    match s {
        "today" => return Ok(now_ms - now_ms.rem_euclid(day)),
        "all" => return Ok(0),
        _ => {}
    }
    if let Some(n) = s.strip_suffix('d').and_then(|n| n.parse::<i64>().ok()) {
        return Ok(now_ms - n * day);
    }
    if let Some(n) = s.strip_suffix('h').and_then(|n| n.parse::<i64>().ok()) {
        return Ok(now_ms - n * 3_600_000);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(s, &fmt).map_err(|_| bad())?;
    Ok(d.midnight().assume_utc().unix_timestamp() * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_leave_the_last_column_ragged() {
        let t = table(
            &["CHAT", "MODE", "NAME"],
            &[
                vec!["a".into(), "always".into(), "x".into()],
                vec!["bbbb".into(), "silent".into(), "a longer name".into()],
            ],
        );
        assert_eq!(
            t,
            "CHAT  MODE    NAME\na     always  x\nbbbb  silent  a longer name"
        );
    }

    #[test]
    fn records_become_json() {
        let mut r = Record::new();
        r.insert("id".into(), Variant::from("c1").try_into().unwrap());
        r.insert(
            "memory_max".into(),
            Variant::from(512u64 << 20).try_into().unwrap(),
        );
        r.insert(
            "members".into(),
            Variant::from(vec!["+1", "+2"]).try_into().unwrap(),
        );
        let j = record(&r);
        assert_eq!(j["id"], "c1");
        assert_eq!(size(&j, "memory_max"), "512M");
        assert_eq!(cell(&j, "members"), "+1, +2");
        assert_eq!(cell(&j, "absent"), "-");
    }

    #[test]
    fn since() {
        let midnight = 1_764_547_200_000; // 2025-12-01 00:00 UTC
        let now = midnight + 3_600_000;
        assert_eq!(since_ms("today", now), Ok(midnight));
        assert_eq!(since_ms("all", now), Ok(0));
        assert_eq!(since_ms("1d", now), Ok(now - 86_400_000));
        assert_eq!(since_ms("2025-12-01", now), Ok(midnight));
        assert_eq!(since_ms("12h", now), Ok(now - 43_200_000));
        assert!(since_ms("yesterday-ish", now).is_err());
    }

    #[test]
    fn times_and_clipping() {
        assert_eq!(time_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(clip("a\nb", 10), "a b");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
