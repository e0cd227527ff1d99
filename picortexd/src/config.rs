//! `/etc/picortex/picortexd.toml` (SPEC O5), checked whole: every table (the gateway's own, and
//! `[agent]` and `[sandbox]`, which picortex-run and the helper read with the same rules, shared
//! below) is parsed into typed values at start, every key has a default, and each unknown key or
//! bad value is reported as one line `file:line:column: key: what is wrong (the valid choices)`.
//! `picortexd --check-config` prints them; a start with any of them exits with
//! [`EXIT_CONFIG`], which the unit does not restart. Secrets never live here: they come from
//! systemd credentials (`$CREDENTIALS_DIRECTORY`), see `Secrets`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The `[sandbox]` rules and the file-position helpers, shared with picortex-provision (which
/// reads `[sandbox]` as root): one file, compiled into both (and into the fuzz crate).
#[allow(dead_code)]
#[path = "../../picortex-provision/src/egress.rs"]
pub mod sandbox;

pub use sandbox::KeyError;

pub const DEFAULT_PATH: &str = "/etc/picortex/picortexd.toml";

/// The exit status of a start refused for its configuration or credentials (EX_CONFIG, which
/// systemd shows as `status=78/CONFIG`). picortexd.service lists it in
/// `RestartPreventExitStatus=`: restarting cannot fix a file, and a restart loop would hit the
/// start limit and take picortexd.socket down with it.
pub const EXIT_CONFIG: i32 = 78;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// One line per problem, each `file:line:column: key: message`.
    #[error("{}", problems.join("\n"))]
    Invalid { problems: Vec<String> },
    #[error("credential {name} is missing: {dir}/{name}: {source} (put the secret in /etc/picortex/credentials/{name}, mode 0600, owned by root; see README \"Credentials\")")]
    Credential {
        name: &'static str,
        dir: String,
        source: std::io::Error,
    },
    #[error("credential {name} is missing: /etc/picortex/credentials/{name} does not exist or is empty (put the secret there, mode 0600, owned by root; see README \"Credentials\")")]
    EmptyCredential { name: &'static str },
    #[error(
        "no credentials directory: run under systemd (LoadCredential=) or pass --credentials-dir"
    )]
    NoCredentials,
}

impl ConfigError {
    /// The problems, one line each (for the journal, one entry each).
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Invalid { problems } => problems.clone(),
            other => vec![other.to_string()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub linq: LinqConfig,
    pub owner: OwnerConfig,
    pub http: HttpConfig,
    pub turns: TurnsConfig,
    pub attention: AttentionConfig,
    pub data: DataConfig,
    pub consent: ConsentConfig,
    /// Read by picortex-run (handed over by the helper); checked here with its rules.
    pub agent: picortex_run::config::AgentConfig,
    /// Read by picortex-egress (the turns' egress policy) and picortex-provision (the disk quota,
    /// and the policy checked at each turn start); checked here with their rules.
    pub sandbox: sandbox::Sandbox,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Origins inbound media is fetched from (scheme, host and port); a URL anywhere else is
    /// refused (picortexd/src/media).
    pub media_hosts: Vec<String>,
    /// Largest inbound media part fetched into a chat's inbox, in bytes.
    pub media_max_bytes: u64,
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
            media_hosts: vec!["https://cdn.linqapp.com".into()],
            media_max_bytes: 25 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OwnerConfig {
    /// The owner's handles (E.164 numbers or emails).
    pub handles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// A group turn still running after this many seconds gets a tapback (like) on the message
    /// it answers, since groups have no typing indicator; 0 turns it off.
    pub group_ack_after_s: u64,
    pub spare_ttl_s: u64,
    /// Archive chats idle this many days (home tarred away, user locked; restored on the next
    /// message). Unset: never.
    pub archive_after_days: Option<u32>,
    /// Most a chat may spend per UTC day, in USD, as the agent reports its cost (a chat's own
    /// `/picortex budget` wins); "off" = no limit.
    #[serde(deserialize_with = "budget")]
    pub daily_budget_usd: Option<f64>,
    /// Most all chats together may spend per UTC day, in USD; "off" = no limit.
    #[serde(deserialize_with = "budget")]
    pub daily_budget_total_usd: Option<f64>,
}

/// A budget: a number of USD, or "off".
fn budget<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Usd(f64),
        Int(i64),
        Word(String),
    }
    match B::deserialize(d)? {
        B::Usd(v) => Ok(Some(v)),
        B::Int(v) => Ok(Some(v as f64)),
        B::Word(w) if w == "off" => Ok(None),
        B::Word(w) => Err(serde::de::Error::custom(format!(
            "{w:?} is not a budget: a number of USD like 5.0, or \"off\""
        ))),
    }
}

/// Per chat and UTC day, by default.
pub const DEFAULT_DAILY_BUDGET_USD: f64 = 5.0;
/// All chats together, per UTC day, by default.
pub const DEFAULT_DAILY_BUDGET_TOTAL_USD: f64 = 20.0;

/// What the gateway keeps, and for how long.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Days a webhook's raw body is kept (for debugging and replay); the parsed message stays.
    /// 0 = keep forever.
    pub raw_webhook_days: u32,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            raw_webhook_days: 14,
        }
    }
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
            daily_budget_usd: Some(DEFAULT_DAILY_BUDGET_USD),
            daily_budget_total_usd: Some(DEFAULT_DAILY_BUDGET_TOTAL_USD),
            group_ack_after_s: 15,
        }
    }
}

/// The consent broker's settings (SPEC C2).
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
                _ => {
                    return Err(format!(
                        "{s:?} is not a size like 512M or 1G (K, M, G or T)"
                    ))
                }
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512M or 1G (K, M, G or T)"))?;
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

    /// Parse and check `text` (the contents of `path`, which the messages name).
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let mut c: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            problems: vec![sandbox::toml_error(path, text, &e)],
        })?;
        let problems: Vec<String> = c
            .problems()
            .iter()
            .map(|e| sandbox::key_error(path, text, e))
            .collect();
        if problems.is_empty() {
            // Any case is accepted; what the turns carry is the agent's own spelling.
            c.turns.permission_mode =
                crate::limits::default_permission_mode(&c.turns.permission_mode);
            Ok(c)
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    /// Every problem of a parsed configuration, each with its key.
    pub fn problems(&self) -> Vec<KeyError> {
        let mut errs: Vec<KeyError> = Vec::new();
        let mut bad = |key: &str, msg: String| {
            errs.push(KeyError {
                key: key.into(),
                msg,
            })
        };
        if !(self.linq.api_base.starts_with("https://")
            || self.linq.api_base.starts_with("http://"))
        {
            bad(
                "linq.api_base",
                format!("{:?} is not an http(s) URL", self.linq.api_base),
            );
        }
        if !(1..=3600).contains(&self.linq.timestamp_tolerance_s) {
            bad("linq.timestamp_tolerance_s", "must be 1..=3600".into());
        }
        if !(100..=10_000).contains(&self.linq.max_part_chars) {
            bad(
                "linq.max_part_chars",
                "must be 100..=10000 (Linq's text limit)".into(),
            );
        }
        if !(self.linq.max_part_chars..=100_000).contains(&self.linq.max_reply_chars) {
            bad(
                "linq.max_reply_chars",
                "must be at least linq.max_part_chars and at most 100000".into(),
            );
        }
        if !(1024..=64 << 20).contains(&self.http.max_body_bytes) {
            bad("http.max_body_bytes", "must be 1 KiB..=64 MiB".into());
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "http.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:8470",
                    self.http.listen
                ),
            );
        }
        if !(1..=256).contains(&self.turns.max_concurrent) {
            bad("turns.max_concurrent", "must be 1..=256".into());
        }
        if let Err(e) = crate::limits::memory_max(&self.turns.memory_max) {
            bad("turns.memory_max", e);
        }
        if let Err(e) = parse_percent(&self.turns.cpu_quota) {
            bad("turns.cpu_quota", e);
        }
        for (k, v) in [
            ("turns.cpu_weight", self.turns.cpu_weight),
            ("turns.io_weight", self.turns.io_weight),
        ] {
            if !(1..=10000).contains(&v) {
                bad(k, "must be 1..=10000".into());
            }
        }
        if !(8..=16384).contains(&self.turns.tasks_max) {
            bad("turns.tasks_max", "must be 8..=16384".into());
        }
        if self.turns.spare_ttl_s > 3600 {
            bad("turns.spare_ttl_s", "must be 0..=3600".into());
        }
        if !(1..=86400).contains(&self.turns.runtime_max_s) {
            bad("turns.runtime_max_s", "must be 1..=86400".into());
        }
        if let Some(p) = &self.turns.system_prompt_file {
            if !p.is_absolute() {
                bad(
                    "turns.system_prompt_file",
                    format!("{} is not an absolute path", p.display()),
                );
            }
        }
        for (k, v) in [
            ("turns.daily_budget_usd", self.turns.daily_budget_usd),
            (
                "turns.daily_budget_total_usd",
                self.turns.daily_budget_total_usd,
            ),
        ] {
            if let Some(Err(e)) = v.map(crate::limits::budget_usd) {
                bad(k, e);
            }
        }
        if self.data.raw_webhook_days > 36500 {
            bad("data.raw_webhook_days", "must be 0 (keep) ..=36500".into());
        }
        let a = &self.attention;
        if !(0.0..=1.0).contains(&a.threshold) {
            bad("attention.threshold", "must be between 0 and 1".into());
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
            bad(
                "attention.discriminator_model",
                format!(
                    "{:?} is not a model name like haiku or claude-haiku-4-5",
                    a.discriminator_model
                ),
            );
        }
        if a.max_unsolicited_per_hour > 3600 {
            bad(
                "attention.max_unsolicited_per_hour",
                "must be 0..=3600".into(),
            );
        }
        if a.context_messages > 500 {
            bad("attention.context_messages", "must be 0..=500".into());
        }
        if !(5..=7 * 86_400).contains(&self.consent.ttl_s) {
            bad(
                "consent.ttl_s",
                "must be 5..=604800 seconds (a week)".into(),
            );
        }
        if !(256..=256 * 1024).contains(&a.context_bytes) {
            bad("attention.context_bytes", "must be 256..=262144".into());
        }
        for h in &self.owner.handles {
            let n = crate::owner::normalize(h);
            if n.len() < 3 || n.len() > 320 {
                bad(
                    "owner.handles",
                    format!("{h:?} is not an E.164 number like +15555550100 or an email address"),
                );
            }
        }
        if let Err(e) = crate::limits::permission_mode(&self.turns.permission_mode) {
            bad("turns.permission_mode", e);
        }
        // [agent] and [sandbox]: the rules of the programs that read them.
        if let Err(e) = picortex_run::config::validate(&self.agent) {
            // "[agent] command: must be …"
            let text = e.0.strip_prefix("[agent] ").unwrap_or(&e.0);
            let (k, msg) = text.split_once(": ").unwrap_or(("", text));
            errs.push(KeyError {
                key: format!("agent.{k}"),
                msg: msg.to_owned(),
            });
        }
        for h in &self.linq.media_hosts {
            let ok = reqwest::Url::parse(h).is_ok_and(|u| {
                matches!(u.scheme(), "https" | "http") && u.host().is_some() && u.path() == "/"
            });
            if !ok {
                errs.push(KeyError {
                    key: "linq.media_hosts".into(),
                    msg: format!("{h:?} is not an origin like \"https://cdn.linqapp.com\""),
                });
            }
        }
        if self.linq.media_max_bytes == 0
            || self.linq.media_max_bytes > picortex_proto::bus::INBOX_MAX_BYTES
        {
            errs.push(KeyError {
                key: "linq.media_max_bytes".into(),
                msg: format!("must be 1..={}", picortex_proto::bus::INBOX_MAX_BYTES),
            });
        }
        if let Err(e) = sandbox::check(&self.sandbox) {
            errs.push(e);
        }
        if let Err(e) = sandbox::disk_quota(&self.sandbox) {
            errs.push(e);
        }
        errs
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

/// The configuration of the moment: `systemctl reload picortexd` (SIGHUP) swaps in a re-read
/// file; each use takes the current one with `get()`.
#[derive(Debug, Clone)]
pub struct Live(Arc<RwLock<Arc<Config>>>);

impl Live {
    pub fn new(c: Config) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(c))))
    }

    pub fn get(&self) -> Arc<Config> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Take `new` for everything read per use; returns the keys that changed but only apply
    /// from the next start (the running process keeps their old values).
    pub fn reload(&self, new: Config) -> Vec<&'static str> {
        let old = self.get();
        let mut kept = restart_needed(&old, &new);
        let mut next = new;
        // What is fixed for the process's life keeps its old value, so what the gateway does
        // matches what it says.
        next.linq.api_base = old.linq.api_base.clone();
        next.linq.request_timeout_s = old.linq.request_timeout_s;
        next.linq.timestamp_tolerance_s = old.linq.timestamp_tolerance_s;
        next.linq.bot_names = old.linq.bot_names.clone();
        next.owner = old.owner.clone();
        next.http = old.http.clone();
        next.turns.archive_after_days = old.turns.archive_after_days;
        next.data = old.data.clone();
        kept.sort_unstable();
        match self.0.write() {
            Ok(mut g) => *g = Arc::new(next),
            Err(p) => *p.into_inner() = Arc::new(next),
        }
        kept
    }
}

/// The keys whose new value needs a restart of picortexd. Everything else (turn limits,
/// budgets, attention, reply sizes, the permission mode) applies from the next turn; `[agent]`
/// and `[sandbox]` are read by the helper at every turn start and need nothing.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut diff = |k, changed: bool| {
        if changed {
            v.push(k)
        }
    };
    diff("linq.api_base", old.linq.api_base != new.linq.api_base);
    diff(
        "linq.request_timeout_s",
        old.linq.request_timeout_s != new.linq.request_timeout_s,
    );
    diff(
        "linq.timestamp_tolerance_s",
        old.linq.timestamp_tolerance_s != new.linq.timestamp_tolerance_s,
    );
    diff("linq.bot_names", old.linq.bot_names != new.linq.bot_names);
    diff("owner.handles", old.owner.handles != new.owner.handles);
    diff("http.listen", old.http.listen != new.http.listen);
    diff(
        "http.max_body_bytes",
        old.http.max_body_bytes != new.http.max_body_bytes,
    );
    diff(
        "turns.archive_after_days",
        old.turns.archive_after_days != new.turns.archive_after_days,
    );
    diff(
        "data.raw_webhook_days",
        old.data.raw_webhook_days != new.data.raw_webhook_days,
    );
    v
}

/// What picortexd.service sets a credential to (SetCredential=) when its file is missing.
pub const MISSING_CREDENTIAL: &str = "missing";

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
        // The unit sets each credential to empty (SetCredential=) when its file is missing, so
        // that the start gets here and the message names it, instead of systemd's
        // "243/CREDENTIALS".
        let read = |name: &'static str| {
            let v = std::fs::read_to_string(dir.join(name))
                .map(|s| s.trim().to_owned())
                .map_err(|source| ConfigError::Credential {
                    name,
                    dir: dir.display().to_string(),
                    source,
                })?;
            if v.is_empty() || v == MISSING_CREDENTIAL {
                return Err(ConfigError::EmptyCredential { name });
            }
            Ok(v)
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
    fn a_permission_mode_in_any_case_is_carried_as_the_agent_spells_it() {
        // Found by fuzz/fuzz_targets/config.rs: "dEfault" was accepted and kept as written.
        let c = Config::parse("[turns]\npermission_mode = \"dEfault\"\n", "t").unwrap();
        assert_eq!(c.turns.permission_mode, "default");
        let c = Config::parse("[turns]\npermission_mode = \"ACCEPTEDITS\"\n", "t").unwrap();
        assert_eq!(c.turns.permission_mode, "acceptEdits");
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.memory_max_bytes(), 1 << 30);
        assert_eq!(c.cpu_quota_per_sec_usec(), 1_000_000);
        assert_eq!(parse_percent("250%"), Ok(2_500_000));
        assert_eq!(c.turns.max_concurrent, 4);
    }

    #[test]
    fn agent_env_is_checked_at_start() {
        let c = Config::parse(
            "[agent]\nenv = { ANTHROPIC_BASE_URL = \"https://llm.example.com\", CLAUDE_CODE_USE_BEDROCK = \"1\" }",
            "t",
        );
        assert!(c.is_ok(), "{:?}", c.err());
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
            ("[agent]\nenv = { HOME = \"/\" }", "agent.env"),
            ("[agent]\nenv = { ANTHROPIC_API_KEY = \"k\" }", "agent.env"),
        ] {
            let e = Config::parse(text, "t").unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let e = Config::parse("[turns]\nmemroy_max = \"1G\"", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("memroy_max"), "{e}");
    }

    fn problems(text: &str) -> Vec<String> {
        Config::parse(text, "/etc/p.toml").unwrap_err().lines()
    }

    #[test]
    fn each_problem_is_one_line_with_file_line_column_and_choices() {
        // The cases: a bad value, typos in [agent] and [sandbox].
        assert_eq!(
            problems("[linq]\nbot_names = []\n\n[turns]\nmemory_max = \"lots\"\n"),
            vec!["/etc/p.toml:5:14: turns.memory_max: \"lots\" is not a size: must be between 32M and 64G (like 512M or 2G)"]
        );
        let p = problems("[agent]\ncommand = \"claude\"\nextra_arg = []\n");
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("/etc/p.toml:3:1: [agent] unknown field `extra_arg`, expected one of `command`, `extra_args`, `model`"),
            "{p:?}"
        );
        let p = problems("[sandbox]\negress = \"allowlist\"\negres_allow = [\"1.2.3.0/24\"]\n");
        assert!(
            p[0].starts_with("/etc/p.toml:3:1: [sandbox] unknown field `egres_allow`"),
            "{p:?}"
        );
        // Values of [agent] and [sandbox] are checked with their readers' rules.
        assert_eq!(
            problems("[sandbox]\negress = \"everywhere\"\ndisk_quota = \"1K\"\n"),
            vec![
                "/etc/p.toml:2:10: sandbox.egress: must be \"allowlist\" or \"internet\", not \"everywhere\"",
                "/etc/p.toml:3:14: sandbox.disk_quota: \"1K\" is less than the 1M a turn needs",
            ]
        );
        assert_eq!(
            problems("[agent]\ncommand = \"-x\"\n"),
            vec!["/etc/p.toml:2:11: agent.command: must be a program name or an absolute path"]
        );
        // All bad values at once, not one per restart.
        let p = problems("[turns]\nmax_concurrent = 0\npermission_mode = \"yolo\"\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[1].contains("\"yolo\" is not a permission mode: use one of default, acceptEdits"),
            "{p:?}"
        );
        // A wrong type, and a budget word.
        let p = problems("[turns]\ntasks_max = \"many\"\n");
        assert!(
            p[0].starts_with("/etc/p.toml:2:13: [turns] invalid type"),
            "{p:?}"
        );
        let p = problems("[turns]\ndaily_budget_usd = \"none\"\n");
        assert!(p[0].contains("\"none\" is not a budget"), "{p:?}");
        let c = Config::parse(
            "[turns]\ndaily_budget_usd = \"off\"\ndaily_budget_total_usd = 3\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.turns.daily_budget_usd, None);
        assert_eq!(c.turns.daily_budget_total_usd, Some(3.0));
    }

    /// The keys a table of the schema has, from serde's own "expected one of" list.
    fn schema_keys(section: &str) -> Vec<String> {
        let e = Config::parse(&format!("[{section}]\nzz_not_a_key = 1\n"), "t")
            .unwrap_err()
            .to_string();
        let list = e
            .split("expected one of ")
            .nth(1)
            .or_else(|| e.split("expected ").nth(1))
            .unwrap_or_else(|| panic!("{e}"));
        list.split(", ")
            .flat_map(|k| k.split(" or "))
            .map(|k| k.trim().trim_matches('`').to_owned())
            .collect()
    }

    /// dist/picortexd.toml shows each key as `# key = <its default>` (or, for a key whose
    /// default is "unset", as `# e.g. key = …`): uncommented, the defaults must be the compiled
    /// ones, and every key of the schema must be there.
    #[test]
    fn the_shipped_example_shows_the_true_defaults_and_every_key() {
        let text = include_str!("../../dist/picortexd.toml");
        let mut defaults = String::new();
        let mut section = String::new();
        let mut seen: Vec<String> = Vec::new();
        for line in text.lines() {
            if line.starts_with('[') {
                section = line.trim_matches(|c| c == '[' || c == ']').to_owned();
                defaults.push_str(line);
                defaults.push('\n');
                continue;
            }
            let (body, is_default) = match line.strip_prefix("# e.g. ") {
                Some(b) => (b, false),
                None => match line.strip_prefix("# ") {
                    Some(b) => (b, true),
                    None => continue,
                },
            };
            let Some((key, _)) = body.split_once(" = ") else {
                continue;
            };
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                continue;
            }
            seen.push(format!("{section}.{key}"));
            if is_default {
                defaults.push_str(body);
                defaults.push('\n');
            }
        }
        let shown = Config::parse(&defaults, "dist/picortexd.toml").unwrap();
        let d = Config::default();
        assert_eq!(shown.linq, d.linq);
        assert_eq!(shown.owner, d.owner);
        assert_eq!(shown.http, d.http);
        assert_eq!(shown.turns, d.turns);
        assert_eq!(shown.attention, d.attention);
        assert_eq!(shown.data, d.data);
        assert_eq!(shown.agent, d.agent);
        assert_eq!(sandbox::check(&shown.sandbox), sandbox::check(&d.sandbox));
        assert_eq!(
            sandbox::disk_quota(&shown.sandbox),
            sandbox::disk_quota(&d.sandbox)
        );
        for section in [
            "linq",
            "owner",
            "http",
            "turns",
            "attention",
            "data",
            "agent",
            "sandbox",
        ] {
            for key in schema_keys(section) {
                let k = format!("{section}.{key}");
                assert!(
                    seen.contains(&k),
                    "dist/picortexd.toml does not document {k}"
                );
            }
        }
    }

    #[test]
    fn reload_takes_live_keys_and_names_the_others() {
        let live = Live::new(Config::default());
        let new = Config::parse(
            "[turns]\nmemory_max = \"512M\"\n[attention]\nthreshold = 0.9\n[owner]\nhandles = [\"+15555550100\"]\n",
            "t",
        )
        .unwrap();
        assert_eq!(live.reload(new), vec!["owner.handles"]);
        let now = live.get();
        assert_eq!(now.memory_max_bytes(), 512 << 20);
        assert_eq!(now.attention.threshold, 0.9);
        assert!(
            now.owner.handles.is_empty(),
            "a restart-only key changed live"
        );
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
