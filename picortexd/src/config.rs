//! `/etc/picortex/picortexd.toml` (SPEC O5): every key has a default, unknown keys and bad values
//! are refused with the key named, and secrets never live here: they come from systemd
//! credentials (`$CREDENTIALS_DIRECTORY`), see `Secrets`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/picortex/picortexd.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("{path}: {key}: {msg}")]
    Invalid {
        path: String,
        key: &'static str,
        msg: String,
    },
    #[error("credential {name:?} not found in {dir}: {source} (install it with LoadCredential=, see README)")]
    Credential {
        name: &'static str,
        dir: String,
        source: std::io::Error,
    },
    #[error(
        "no credentials directory: run under systemd (LoadCredential=) or pass --credentials-dir"
    )]
    NoCredentials,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub linq: LinqConfig,
    pub owner: OwnerConfig,
    pub http: HttpConfig,
    pub turns: TurnsConfig,
    pub attention: AttentionConfig,
    pub consent: ConsentConfig,
    /// Read by picortex-run, not by the gateway; accepted here so one file serves both.
    pub agent: Option<toml::Table>,
    /// Read by picortex-provision (the turn's network fence), not by the gateway.
    pub sandbox: Option<toml::Table>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinqConfig {
    /// Linq partner API base, without the `/v3` part.
    pub api_base: String,
    /// Seconds a webhook timestamp may differ from our clock (SPEC L1: 5 minutes).
    pub timestamp_tolerance_s: u64,
    /// Seconds per request to Linq.
    pub request_timeout_s: u64,
    /// Longest reply part, in characters; longer replies are split.
    pub max_part_chars: usize,
    /// Longest reply, in characters; a longer one is cut with a note (one turn, a few messages).
    pub max_reply_chars: usize,
    /// Names the bot answers to in groups when a sender's client carries no mention entities.
    pub bot_names: Vec<String>,
}

impl Default for LinqConfig {
    fn default() -> Self {
        Self {
            api_base: "https://api.linqapp.com/api/partner".into(),
            timestamp_tolerance_s: 300,
            request_timeout_s: 30,
            max_part_chars: 4000,
            max_reply_chars: 16000,
            bot_names: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OwnerConfig {
    /// The owner's handles (E.164 numbers or emails).
    pub handles: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address for `--foreground` runs without socket activation.
    pub listen: String,
    /// Largest webhook body accepted; bigger ones get 413 before they are read whole.
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8470".into(),
            max_body_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnsConfig {
    /// Turns of different chats that may run at once.
    pub max_concurrent: usize,
    /// Per-chat memory cap (the chat slice's MemoryMax), e.g. "1G", "512M".
    pub memory_max: String,
    pub tasks_max: u64,
    /// Per-chat CPU cap (the chat slice's CPUQuota=), in percent of one CPU, e.g. "100%".
    pub cpu_quota: String,
    /// The chat slice's CPUWeight= and IOWeight= (1..=10000; 100 is systemd's default).
    pub cpu_weight: u64,
    pub io_weight: u64,
    /// Longest a turn may run before systemd stops it.
    pub runtime_max_s: u64,
    /// The agent's `--permission-mode`, pinned on every turn (a chat may override it).
    pub permission_mode: String,
    /// A file whose text is appended to the agent's system prompt on every turn (the owner's
    /// standing instructions), e.g. /etc/picortex/system-prompt.md.
    pub system_prompt_file: Option<std::path::PathBuf>,
    /// How long a chat's spare turn unit (started ahead of its next message, so the answer does
    /// not wait for systemd to build the sandbox) is kept unused; 0 = no spares.
    pub spare_ttl_s: u64,
    /// Archive chats idle this many days (home tarred away, user locked; restored on the next
    /// message). Unset: never.
    pub archive_after_days: Option<u32>,
    /// Most a chat may spend per UTC day, in USD, as the agent reports its cost; none = no limit.
    pub daily_budget_usd: Option<f64>,
}

impl Default for TurnsConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            memory_max: "1G".into(),
            tasks_max: 256,
            cpu_quota: "100%".into(),
            cpu_weight: 100,
            io_weight: 100,
            runtime_max_s: 600,
            permission_mode: "default".into(),
            system_prompt_file: None,
            archive_after_days: None,
            spare_ttl_s: 300,
            daily_budget_usd: None,
        }
    }
}

/// The consent broker's settings (SPEC C2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsentConfig {
    /// Seconds the owner has to answer a request before it counts as no.
    pub ttl_s: u64,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        Self { ttl_s: 600 }
    }
}

/// The attention gate's settings (SPEC A1–A4); each chat's mode is in the log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionConfig {
    /// The model the discriminator asks (`--model`): small and cheap.
    pub discriminator_model: String,
    /// Answer when the discriminator's score is at least this (0..=1).
    pub threshold: f64,
    /// Answer when the discriminator fails (no score, a failed turn). Default: stay quiet.
    pub fail_open: bool,
    /// Most answers per chat and hour that the discriminator may start (nobody asked for them).
    pub max_unsolicited_per_hour: u32,
    /// Group messages since the bot last spoke that a group turn's prompt carries, at most.
    pub context_messages: usize,
    /// … and at most this many bytes of them (oldest dropped first).
    pub context_bytes: usize,
}

impl Default for AttentionConfig {
    fn default() -> Self {
        Self {
            discriminator_model: "haiku".into(),
            threshold: 0.6,
            fail_open: false,
            max_unsolicited_per_hour: 4,
            context_messages: 30,
            context_bytes: 8192,
        }
    }
}

impl AttentionConfig {
    pub fn policy(&self) -> crate::attention::discriminator::Policy {
        crate::attention::discriminator::Policy {
            threshold: self.threshold,
            fail_open: self.fail_open,
            max_unsolicited_per_hour: self.max_unsolicited_per_hour,
        }
    }

    pub fn context_bounds(&self) -> crate::context::Bounds {
        crate::context::Bounds {
            max_messages: self.context_messages,
            max_bytes: self.context_bytes,
        }
    }
}

pub use crate::limits::PERMISSION_MODES;

/// Parse "512M", "1G", "1073741824" into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown unit {c:?} (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512M or 1G"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            // A missing file means defaults: the credentials are what must be present.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(ConfigError::Read { path: p, source }),
        };
        Self::parse(&text, &p)
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            msg: e.to_string(),
        })?;
        c.validate(path)?;
        Ok(c)
    }

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let bad = |key, msg: String| {
            Err(ConfigError::Invalid {
                path: path.into(),
                key,
                msg,
            })
        };
        if !(self.linq.api_base.starts_with("https://")
            || self.linq.api_base.starts_with("http://"))
        {
            return bad(
                "linq.api_base",
                format!("{:?} is not an http(s) URL", self.linq.api_base),
            );
        }
        if !(1..=3600).contains(&self.linq.timestamp_tolerance_s) {
            return bad("linq.timestamp_tolerance_s", "must be 1..=3600".into());
        }
        if !(100..=10_000).contains(&self.linq.max_part_chars) {
            return bad(
                "linq.max_part_chars",
                "must be 100..=10000 (Linq's text limit)".into(),
            );
        }
        if !(self.linq.max_part_chars..=100_000).contains(&self.linq.max_reply_chars) {
            return bad(
                "linq.max_reply_chars",
                "must be at least linq.max_part_chars and at most 100000".into(),
            );
        }
        if !(1024..=64 << 20).contains(&self.http.max_body_bytes) {
            return bad("http.max_body_bytes", "must be 1 KiB..=64 MiB".into());
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "http.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:8470",
                    self.http.listen
                ),
            );
        }
        if !(1..=256).contains(&self.turns.max_concurrent) {
            return bad("turns.max_concurrent", "must be 1..=256".into());
        }
        if let Err(e) = crate::limits::memory_max(&self.turns.memory_max) {
            return bad("turns.memory_max", e);
        }
        if let Err(e) = parse_percent(&self.turns.cpu_quota) {
            return bad("turns.cpu_quota", e);
        }
        for (k, v) in [
            ("turns.cpu_weight", self.turns.cpu_weight),
            ("turns.io_weight", self.turns.io_weight),
        ] {
            if !(1..=10000).contains(&v) {
                return bad(k, "must be 1..=10000".into());
            }
        }
        if !(8..=16384).contains(&self.turns.tasks_max) {
            return bad("turns.tasks_max", "must be 8..=16384".into());
        }
        if self.turns.spare_ttl_s > 3600 {
            return bad("turns.spare_ttl_s", "must be 0..=3600".into());
        }
        if !(1..=86400).contains(&self.turns.runtime_max_s) {
            return bad("turns.runtime_max_s", "must be 1..=86400".into());
        }
        if let Some(p) = &self.turns.system_prompt_file {
            if !p.is_absolute() {
                return bad(
                    "turns.system_prompt_file",
                    format!("{} is not an absolute path", p.display()),
                );
            }
        }
        if let Some(Err(e)) = self.turns.daily_budget_usd.map(crate::limits::budget_usd) {
            return bad("turns.daily_budget_usd", e);
        }
        let a = &self.attention;
        if !(0.0..=1.0).contains(&a.threshold) {
            return bad("attention.threshold", "must be between 0 and 1".into());
        }
        // It becomes the argv element after --model in the discriminator's turn: picortex-run
        // refuses a name that would read as an option, so refuse it here, where it is named.
        if a.discriminator_model.is_empty()
            || a.discriminator_model.len() > 100
            || a.discriminator_model.starts_with('-')
            || !a
                .discriminator_model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:@[]".contains(&b))
        {
            return bad(
                "attention.discriminator_model",
                format!(
                    "{:?} is not a model name like haiku or claude-haiku-4-5",
                    a.discriminator_model
                ),
            );
        }
        if a.max_unsolicited_per_hour > 3600 {
            return bad(
                "attention.max_unsolicited_per_hour",
                "must be 0..=3600".into(),
            );
        }
        if a.context_messages > 500 {
            return bad("attention.context_messages", "must be 0..=500".into());
        }
        if !(5..=7 * 86_400).contains(&self.consent.ttl_s) {
            return bad(
                "consent.ttl_s",
                "must be 5..=604800 seconds (a week)".into(),
            );
        }
        if !(256..=256 * 1024).contains(&a.context_bytes) {
            return bad("attention.context_bytes", "must be 256..=262144".into());
        }
        for h in &self.owner.handles {
            let n = crate::owner::normalize(h);
            if n.len() < 3 || n.len() > 320 {
                return bad(
                    "owner.handles",
                    format!("{h:?} is not an E.164 number like +15555550100 or an email address"),
                );
            }
        }
        if let Err(e) = crate::limits::permission_mode(&self.turns.permission_mode) {
            return bad("turns.permission_mode", e);
        }
        Ok(())
    }

    /// The chat slice's CPU quota as systemd's bus takes it (CPU µs per second).
    pub fn cpu_quota_per_sec_usec(&self) -> u64 {
        parse_percent(&self.turns.cpu_quota).unwrap_or(1_000_000)
    }

    pub fn memory_max_bytes(&self) -> u64 {
        parse_size(&self.turns.memory_max).unwrap_or(1 << 30)
    }
    pub fn runtime_max(&self) -> Duration {
        Duration::from_secs(self.turns.runtime_max_s)
    }
}

/// Secrets, read from systemd credentials (SPEC L5): `linq-token` (the partner API bearer token)
/// and `linq-webhook-secret` (`whsec_…`).
pub struct Secrets {
    pub linq_token: String,
    pub webhook_secret: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

impl Secrets {
    pub fn load(dir: Option<PathBuf>) -> Result<Self, ConfigError> {
        let dir = dir
            .or_else(|| std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from))
            .ok_or(ConfigError::NoCredentials)?;
        let read = |name: &'static str| {
            std::fs::read_to_string(dir.join(name))
                .map(|s| s.trim().to_owned())
                .map_err(|source| ConfigError::Credential {
                    name,
                    dir: dir.display().to_string(),
                    source,
                })
        };
        Ok(Self {
            linq_token: read("linq-token")?,
            webhook_secret: read("linq-webhook-secret")?,
        })
    }
}

/// "150%" → 1_500_000 (CPU µs per second); 1% to 102400% (1024 CPUs).
fn parse_percent(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .strip_suffix('%')
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("{s:?} is not a percentage like \"100%\""))?;
    if !(1..=102_400).contains(&n) {
        return Err("must be between 1% and 102400%".into());
    }
    Ok(n * 10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.memory_max_bytes(), 1 << 30);
        assert_eq!(c.cpu_quota_per_sec_usec(), 1_000_000);
        assert_eq!(parse_percent("250%"), Ok(2_500_000));
        assert_eq!(c.turns.max_concurrent, 4);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("[turns]\nmemory_max = \"lots\"", "turns.memory_max"),
            ("[turns]\ncpu_quota = \"150\"", "turns.cpu_quota"),
            ("[turns]\ncpu_quota = \"0%\"", "turns.cpu_quota"),
            ("[turns]\nio_weight = 0", "turns.io_weight"),
            ("[turns]\nmax_concurrent = 0", "turns.max_concurrent"),
            (
                "[turns]\npermission_mode = \"yolo\"",
                "turns.permission_mode",
            ),
            ("[linq]\napi_base = \"ftp://x\"", "linq.api_base"),
            ("[http]\nlisten = \"nowhere\"", "http.listen"),
            ("[attention]\nthreshold = 1.5", "attention.threshold"),
            (
                "[attention]\ndiscriminator_model = \"a b\"",
                "attention.discriminator_model",
            ),
            // picortex-run would refuse every discriminator turn with it (fuzz/config checks this).
            (
                "[attention]\ndiscriminator_model = \"-p\"",
                "attention.discriminator_model",
            ),
            ("[owner]\nhandles = [\"x\"]", "owner.handles"),
        ] {
            let e = Config::parse(text, "t").unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let e = Config::parse("[turns]\nmemroy_max = \"1G\"", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("memroy_max"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("1X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
