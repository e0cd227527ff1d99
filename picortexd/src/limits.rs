//! A chat's limits and agent settings — memory, daily budget, permission mode — and the one rule
//! for each value, whoever sets it: the configuration file (the defaults, `[turns]`), the owner's
//! `/picortex` commands, `org.picortex.Gateway1` (and so `picortexctl`), and the log itself when
//! it reads a stored value back. (The attention mode's rule is `attention::Mode::parse`.)
//! Each function is pure and its error names the valid range, so every door refuses the same
//! values with the same words.

use picortex_proto::bus::limits::{MEMORY_MAX_MAX, MEMORY_MAX_MIN};

/// The agent's `--permission-mode` values (picortex-run refuses anything else).
pub const PERMISSION_MODES: &[&str] = &[
    "default",
    "acceptEdits",
    "plan",
    "auto",
    "dontAsk",
    "bypassPermissions",
];

/// The most a chat's daily budget can be, in USD.
pub const MAX_BUDGET_USD: f64 = 10_000.0;

/// Words that remove a chat's own setting, so the configured default applies again.
pub fn is_reset(v: &str) -> bool {
    let v = v.trim();
    ["default", "off", "none", "unset"]
        .iter()
        .any(|w| v.eq_ignore_ascii_case(w))
}

/// Human size, the way the valid range is stated: "32M", "64G".
pub fn human_size(b: u64) -> String {
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

/// The memory limit of a chat's slice (`MemoryMax=`): "512M", "1G" or bytes, 32M to 64G (the
/// helper's own bounds).
pub fn memory_max(v: &str) -> Result<u64, String> {
    let range = format!(
        "between {} and {} (like 512M or 2G)",
        human_size(MEMORY_MAX_MIN),
        human_size(MEMORY_MAX_MAX)
    );
    match crate::config::parse_size(v) {
        Ok(n) if (MEMORY_MAX_MIN..=MEMORY_MAX_MAX).contains(&n) => Ok(n),
        Ok(_) => Err(format!("{:?} is out of range: must be {range}", v.trim())),
        Err(_) => Err(format!("{:?} is not a size: must be {range}", v.trim())),
    }
}

/// A stored per-chat memory limit (bytes) as the log holds it: anything outside the rule is
/// refused here too, so a bad row cannot reach the helper.
pub fn memory_max_bytes(n: i64) -> Result<u64, String> {
    match u64::try_from(n) {
        Ok(b) if (MEMORY_MAX_MIN..=MEMORY_MAX_MAX).contains(&b) => Ok(b),
        _ => Err(format!(
            "{n} bytes is out of range: must be between {} and {}",
            human_size(MEMORY_MAX_MIN),
            human_size(MEMORY_MAX_MAX)
        )),
    }
}

/// A daily budget in USD, 0 to `MAX_BUDGET_USD` (0: nothing runs until the next UTC day).
pub fn budget_usd(n: f64) -> Result<f64, String> {
    if n.is_finite() && (0.0..=MAX_BUDGET_USD).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} is out of range: a daily budget is between 0 and {MAX_BUDGET_USD} USD"
        ))
    }
}

/// A chat's daily budget as typed: "5", "2.50", "$3"; `off` (or `default`) removes the chat's own
/// budget, so the configured default applies.
pub fn daily_budget(v: &str) -> Result<Option<f64>, String> {
    if is_reset(v) {
        return Ok(None);
    }
    let n: f64 = v.trim().trim_start_matches('$').parse().map_err(|_| {
        format!(
            "{:?} is not an amount in USD: use a number between 0 and {MAX_BUDGET_USD}, like 5 or 2.50 (or \"off\")",
            v.trim()
        )
    })?;
    budget_usd(n).map(Some)
}

/// The agent's permission mode (case as Claude Code spells it; any case is accepted).
pub fn permission_mode(v: &str) -> Result<&'static str, String> {
    let v = v.trim();
    PERMISSION_MODES
        .iter()
        .find(|m| m.eq_ignore_ascii_case(v))
        .copied()
        .ok_or_else(|| {
            format!(
                "{v:?} is not a permission mode: use one of {}",
                PERMISSION_MODES.join(", ")
            )
        })
}

/// The configured default permission mode as the agent spells it (the file may say "Plan").
pub fn default_permission_mode(configured: &str) -> String {
    permission_mode(configured).map_or_else(|_| configured.to_owned(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_takes_the_config_files_forms_within_the_helpers_bounds() {
        assert_eq!(memory_max("512M"), Ok(512 << 20));
        assert_eq!(memory_max(" 2g "), Ok(2 << 30));
        assert_eq!(memory_max("33554432"), Ok(32 << 20));
        for bad in ["lots", "16M", "65G", "", "-1", "1X"] {
            let e = memory_max(bad).unwrap_err();
            assert!(e.contains("between 32M and 64G"), "{bad}: {e}");
        }
        assert_eq!(memory_max_bytes(512 << 20), Ok(512 << 20));
        assert!(memory_max_bytes(1).is_err());
        assert!(memory_max_bytes(-5).is_err());
    }

    #[test]
    fn budgets() {
        assert_eq!(daily_budget("2.5"), Ok(Some(2.5)));
        assert_eq!(daily_budget("$3"), Ok(Some(3.0)));
        assert_eq!(daily_budget("0"), Ok(Some(0.0)));
        assert_eq!(daily_budget("off"), Ok(None));
        assert_eq!(daily_budget("Default"), Ok(None));
        for bad in ["lots", "-1", "1e9", "NaN", "inf"] {
            let e = daily_budget(bad).unwrap_err();
            assert!(e.contains("between 0 and 10000"), "{bad}: {e}");
        }
    }

    #[test]
    fn permission_modes() {
        assert_eq!(permission_mode("plan"), Ok("plan"));
        assert_eq!(permission_mode("acceptedits"), Ok("acceptEdits"));
        assert_eq!(default_permission_mode("Plan"), "plan");
        let e = permission_mode("yolo").unwrap_err();
        assert!(e.contains("bypassPermissions"), "{e}");
    }

    #[test]
    fn sizes_read_back() {
        assert_eq!(human_size(32 << 20), "32M");
        assert_eq!(human_size(64 << 30), "64G");
        assert_eq!(human_size(1000), "1000");
    }
}
