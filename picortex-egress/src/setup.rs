//! What picortex-egress reads as root before it serves anyone: the operator's configuration
//! (the `[sandbox]` egress policy, and where the agent's API is) and the agent's credential;
//! then it becomes `USER` for good. Each a plain function over text, so the rules are tested
//! without root.

use std::io::Read;
use std::path::Path;

use picortex_proto::ids::{API_KEY_CREDENTIAL, OAUTH_CREDENTIAL};
use serde::Deserialize;

use crate::sandbox::{self, Egress, CONFIG_PATH};

/// The system user picortex-egress serves as (sysusers.d/picortex.conf).
pub const USER: &str = "picortex-egress";
/// Where the operator keeps the agent's credentials (root, 0600).
pub const CREDENTIALS_DIR: &str = "/etc/picortex/credentials";
/// Largest configuration or credential file read.
const MAX_FILE: u64 = 1 << 20;

/// The agent's credential, as picortex-egress adds it to each API request.
#[derive(Clone, PartialEq)]
pub enum Credential {
    /// `x-api-key: …`
    ApiKey(String),
    /// `authorization: Bearer …` (a Claude subscription token)
    OAuth(String),
    /// Neither file is there: requests go on without one and the API says no.
    None,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl Credential {
    /// Its name for the log (never the secret).
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::ApiKey(_) => API_KEY_CREDENTIAL,
            Credential::OAuth(_) => OAUTH_CREDENTIAL,
            Credential::None => "none",
        }
    }
}

/// Everything a request is served with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub egress: Egress,
    /// Where API requests go, without a trailing slash.
    pub api_url: String,
    pub credential: Credential,
}

#[derive(Deserialize, Default)]
struct File {
    #[serde(default)]
    agent: Agent,
}

#[derive(Deserialize, Default)]
struct Agent {
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
}

/// The policy and the API's URL from the configuration's text (`""`: no file, the defaults).
pub fn parse_config(text: &str) -> Result<(Egress, String), String> {
    let egress = sandbox::parse(text)?;
    let f: File = toml::from_str(text).map_err(|e| sandbox::toml_error(CONFIG_PATH, text, &e))?;
    let url = picortex_proto::agent_env::api_url(
        f.agent.env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    Ok((egress, url))
}

/// The credential from the contents of the two files (`None`: missing or empty): the API key
/// if there is one, as the CLI itself prefers it.
pub fn pick_credential(api_key: Option<String>, oauth: Option<String>) -> Credential {
    let clean = |s: Option<String>| s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    match (clean(api_key), clean(oauth)) {
        (Some(k), _) => Credential::ApiKey(k),
        (None, Some(t)) => Credential::OAuth(t),
        (None, None) => Credential::None,
    }
}

/// A file's text, or `None` if it does not exist; not followed if a symlink, bounded.
fn read_optional(path: &Path) -> Result<Option<String>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut text = String::new();
    f.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!(
            "{} is larger than {MAX_FILE} bytes",
            path.display()
        ));
    }
    Ok(Some(text))
}

/// Read everything, as root.
pub fn load() -> Result<Settings, String> {
    let text = read_optional(Path::new(CONFIG_PATH))?.unwrap_or_default();
    let (egress, api_url) = parse_config(&text)?;
    let dir = Path::new(CREDENTIALS_DIR);
    let credential = pick_credential(
        read_optional(&dir.join(API_KEY_CREDENTIAL))?,
        read_optional(&dir.join(OAUTH_CREDENTIAL))?,
    );
    Ok(Settings {
        egress,
        api_url,
        credential,
    })
}

/// Become `USER` (its group alone, no supplementary groups) for good; the unit's bounding set
/// holds nothing more than what this needs, and setuid away from root clears every capability.
pub fn drop_privileges() -> Result<(), String> {
    use nix::unistd::{setgroups, setresgid, setresuid, User};
    let user = User::from_name(USER)
        .map_err(|e| format!("looking up user {USER}: {e}"))?
        .ok_or_else(|| {
            format!("no user {USER}: run systemd-sysusers (sysusers.d/picortex.conf creates it)")
        })?;
    setgroups(&[user.gid]).map_err(|e| format!("setgroups: {e}"))?;
    setresgid(user.gid, user.gid, user.gid).map_err(|e| format!("setresgid: {e}"))?;
    setresuid(user.uid, user.uid, user.uid).map_err(|e| format!("setresuid: {e}"))?;
    if nix::unistd::setuid(nix::unistd::Uid::from_raw(0)).is_ok() {
        return Err("still able to become root after dropping privileges".into());
    }
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("prctl(PR_SET_DUMPABLE): {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_api_is_the_operators_and_the_policy_defaults_to_an_empty_allowlist() {
        let (e, url) = parse_config("").unwrap();
        assert_eq!(
            e,
            Egress::Allowlist {
                ranges: vec![],
                names: vec![]
            }
        );
        assert_eq!(url, picortex_proto::egress::DEFAULT_API_URL);
        let (e, url) = parse_config(
            "[owner]\nhandles = [\"+1555\"]\n[agent]\nenv = { ANTHROPIC_BASE_URL = \"http://198.51.100.1/\" }\n[sandbox]\negress = \"internet\"\n",
        )
        .unwrap();
        assert_eq!(e, Egress::Internet);
        assert_eq!(url, "http://198.51.100.1");
        assert!(parse_config("[sandbox]\negress = \"all\"")
            .unwrap_err()
            .contains("sandbox.egress"));
    }

    #[test]
    fn the_api_key_wins_and_blank_files_count_as_none() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            pick_credential(s("sk-ant-1\n"), s("sk-ant-oat01-x")),
            Credential::ApiKey("sk-ant-1".into())
        );
        assert_eq!(
            pick_credential(s(" \n"), s("sk-ant-oat01-x\n")),
            Credential::OAuth("sk-ant-oat01-x".into())
        );
        assert_eq!(pick_credential(None, s("")), Credential::None);
        // The log names the kind, never the secret.
        let k = Credential::ApiKey("sk-ant-secret".into());
        assert_eq!(format!("{k:?}"), API_KEY_CREDENTIAL);
    }

    #[test]
    fn files_are_optional_bounded_and_never_followed() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_optional(&d.path().join("none")).unwrap(), None);
        std::fs::write(d.path().join("k"), "x").unwrap();
        assert_eq!(
            read_optional(&d.path().join("k")).unwrap(),
            Some("x".into())
        );
        std::os::unix::fs::symlink(d.path().join("k"), d.path().join("l")).unwrap();
        assert!(read_optional(&d.path().join("l")).is_err());
        std::fs::write(d.path().join("big"), vec![b'a'; (MAX_FILE + 1) as usize]).unwrap();
        assert!(read_optional(&d.path().join("big")).is_err());
    }
}
