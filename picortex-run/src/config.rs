//! The `[agent]` table of `/etc/picortex/picortexd.toml`. The gateway owns every other table, so
//! they are ignored here; inside `[agent]` an unknown key is an error, so a typo cannot silently
//! fall back to a default.

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

use picortex_proto::ids::TURN_AGENT_CONFIG;

/// The only PATH the agent command is looked up on, and the PATH the agent gets.
pub const AGENT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The config file is small; anything larger is not ours.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Flags picortex-run sets itself (or that would break the contract it relies on: one JSON
/// result, explicit session ids, a pinned permission mode). `extra_args` may not contain them.
const RESERVED_FLAGS: &[&str] = &[
    "-p",
    "--print",
    "--output-format",
    "--input-format",
    "--session-id",
    "--resume",
    "-r",
    "--continue",
    "-c",
    "--fork-session",
    "--no-session-persistence",
    "--permission-mode",
    "--dangerously-skip-permissions",
    "--allow-dangerously-skip-permissions",
    "--disable-slash-commands",
    "--model",
    "--append-system-prompt",
    "--",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `claude` (looked up on [`AGENT_PATH`]) or an absolute path.
    #[serde(default = "default_command")]
    pub command: String,
    /// Extra arguments, placed after picortex-run's own flags and before the session flag.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// `--model` for every turn, if set.
    #[serde(default)]
    pub model: Option<String>,
    /// Variables for the agent from the fixed list `picortex_proto::agent_env::ALLOWED`
    /// (`ANTHROPIC_BASE_URL`, the Bedrock/Vertex switches…); nothing else reaches it.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

fn default_command() -> String {
    "claude".to_owned()
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            command: default_command(),
            extra_args: Vec::new(),
            model: None,
            env: Default::default(),
        }
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    agent: AgentConfig,
}

/// Parse the whole config file and validate `[agent]`.
pub fn parse_config(text: &str) -> Result<AgentConfig, ConfigError> {
    let file: ConfigFile =
        toml::from_str(text).map_err(|e| ConfigError(format!("[agent]: {e}")))?;
    validate(&file.agent)?;
    Ok(file.agent)
}

/// Read and parse the config file. A missing file means all defaults; an unreadable one is an
/// error (chat users must be able to read it).
pub fn load_config(path: &Path) -> Result<AgentConfig, ConfigError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AgentConfig::default()),
        Err(e) => return Err(ConfigError(format!("cannot read {}: {e}", path.display()))),
    };
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError(format!(
            "{} is larger than {MAX_CONFIG_BYTES} bytes",
            path.display()
        )));
    }
    parse_config(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
}

/// The unit's `[agent]` settings: `TURN_AGENT_CONFIG` in `dir`, the helper's view of
/// `/etc/picortex` in a turn (`TURN_CONFIG_DIR`), which holds the `[agent]` table of
/// `picortexd.toml` alone. Unlike a missing config file, a missing view is an error: the helper
/// always binds one, so without it this is not a turn unit the helper started.
pub fn load_view_config(dir: &Path) -> Result<AgentConfig, ConfigError> {
    let path = dir.join(TURN_AGENT_CONFIG);
    if !path.is_file() {
        return Err(ConfigError(format!(
            "no {}; turn units get their [agent] settings from picortex-provision",
            path.display()
        )));
    }
    load_config(&path)
}

pub fn validate(c: &AgentConfig) -> Result<(), ConfigError> {
    let bad = |what: &str, why: &str| Err(ConfigError(format!("[agent] {what}: {why}")));
    if c.command.is_empty() || c.command.contains('\0') || c.command.starts_with('-') {
        return bad("command", "must be a program name or an absolute path");
    }
    if c.command.contains('/') && !c.command.starts_with('/') {
        return bad("command", "a path must be absolute");
    }
    if let Some(m) = &c.model {
        if m.is_empty()
            || m.contains('\0')
            || m.starts_with('-')
            || m.chars().any(char::is_whitespace)
        {
            return bad("model", "must be a model alias or id");
        }
    }
    if let Err(e) =
        picortex_proto::agent_env::check_all(c.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        return bad("env", &e);
    }
    for a in &c.extra_args {
        if a.contains('\0') {
            return bad("extra_args", "arguments cannot contain NUL");
        }
        let flag = a.split_once('=').map_or(a.as_str(), |(f, _)| f);
        if RESERVED_FLAGS.contains(&flag) {
            return bad(
                "extra_args",
                &format!("{flag} is set by picortex-run and cannot be overridden"),
            );
        }
    }
    Ok(())
}

/// Find the agent program: an absolute path as is, a bare name on `search` (a PATH string).
pub fn resolve_command(command: &str, search: &str) -> Result<PathBuf, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if command.starts_with('/') {
        let p = PathBuf::from(command);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(ConfigError(format!(
                "agent command {command} is not an executable file"
            )))
        };
    }
    search
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(command))
        .find(|p| executable(p))
        .ok_or_else(|| ConfigError(format!("agent command {command:?} not found on {search}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_agent_table_is_absent() {
        let c = parse_config("[linq]\ntoken_file = \"x\"\n[gate]\nmode = 1\n").unwrap();
        assert_eq!(c, AgentConfig::default());
        assert_eq!(c.command, "claude");
        assert_eq!(parse_config("").unwrap(), AgentConfig::default());
    }

    #[test]
    fn agent_table_is_read() {
        let c = parse_config(
            "[agent]\ncommand = \"/opt/claude/bin/claude\"\nextra_args = [\"--max-turns\", \"8\"]\nmodel = \"sonnet\"\n[other]\nx = 1\n",
        )
        .unwrap();
        assert_eq!(c.command, "/opt/claude/bin/claude");
        assert_eq!(c.extra_args, vec!["--max-turns", "8"]);
        assert_eq!(c.model.as_deref(), Some("sonnet"));
        let c = parse_config("[agent]\nenv = { ANTHROPIC_BASE_URL = \"http://198.51.100.1\" }\n")
            .unwrap();
        assert_eq!(
            c.env.get("ANTHROPIC_BASE_URL").map(String::as_str),
            Some("http://198.51.100.1")
        );
    }

    #[test]
    fn unknown_agent_keys_are_errors() {
        let e = parse_config("[agent]\ncomand = \"claude\"\n").unwrap_err();
        assert!(e.0.contains("unknown field `comand`"), "{e}");
        assert!(parse_config("[agent]\nmodel = 3\n").is_err());
        assert!(parse_config("agent = \"claude\"\n").is_err());
    }

    #[test]
    fn bad_values_are_errors() {
        for bad in [
            "[agent]\ncommand = \"\"",
            "[agent]\ncommand = \"bin/claude\"",
            "[agent]\ncommand = \"--help\"",
            "[agent]\nmodel = \"\"",
            "[agent]\nmodel = \"-x\"",
            "[agent]\nextra_args = [\"--resume\", \"x\"]",
            "[agent]\nextra_args = [\"--output-format=text\"]",
            "[agent]\nextra_args = [\"--dangerously-skip-permissions\"]",
            "[agent]\nextra_args = [\"--\"]",
            "[agent]\nenv = { PATH = \"/tmp\" }",
            "[agent]\nenv = { ANTHROPIC_API_KEY = \"sk\" }",
            "[agent]\nenv = { ANTHROPIC_BASE_URL = \"ftp://x\" }",
        ] {
            assert!(parse_config(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn missing_file_means_defaults() {
        assert_eq!(
            load_config(Path::new("/nonexistent/picortexd.toml")).unwrap(),
            AgentConfig::default()
        );
    }

    #[test]
    fn the_view_is_required_and_validated() {
        let d = tempfile::tempdir().unwrap();
        assert!(load_view_config(d.path())
            .unwrap_err()
            .0
            .contains("agent.toml"));
        std::fs::write(
            d.path().join(TURN_AGENT_CONFIG),
            "[agent]\nmodel = \"sonnet\"\n",
        )
        .unwrap();
        assert_eq!(
            load_view_config(d.path()).unwrap().model.as_deref(),
            Some("sonnet")
        );
        std::fs::write(
            d.path().join(TURN_AGENT_CONFIG),
            "[agent]\nmodel = \"-x\"\n",
        )
        .unwrap();
        assert!(load_view_config(d.path()).is_err());
    }

    #[test]
    fn commands_resolve_on_the_fixed_path_only() {
        assert_eq!(
            resolve_command("sh", "/nonexistent:/bin").unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert!(resolve_command("sh", "relative:/nonexistent").is_err());
        assert!(
            resolve_command("/etc/passwd", AGENT_PATH).is_err(),
            "not executable"
        );
        assert!(resolve_command("/bin/sh", AGENT_PATH).is_ok());
    }
}
