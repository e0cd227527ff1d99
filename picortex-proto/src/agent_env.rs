//! `[agent] env`: the few environment variables a deployment may give the agent (a company
//! gateway, Bedrock or Vertex, a model, retries), from a fixed list. The agent's environment is
//! otherwise built from nothing by picortex-run; the gateway checks the table at start and
//! picortex-run again before every turn, with this one rule.
//!
//! Secrets are not among them: the API key and the subscription token stay with
//! picortex-egress, which adds them to the agent's API requests (README, "The agent's
//! credential"); nor is the proxy, which is always picortex-egress's relay.

/// The names `[agent] env` may set. Everything else is refused, including every variable
/// picortex-run sets itself (HOME, PATH, CLAUDE_CONFIG_DIR, the telemetry switches…).
pub const ALLOWED: &[&str] = &[
    // Where the API is: a company gateway or proxy in front of Anthropic's API. picortex-egress
    // forwards the agent's API requests there (`api_url`); the agent itself is given the relay.
    "ANTHROPIC_BASE_URL",
    // Models.
    "ANTHROPIC_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "CLAUDE_CODE_SUBAGENT_MODEL",
    "CLAUDE_CODE_MAX_OUTPUT_TOKENS",
    "MAX_THINKING_TOKENS",
    "DISABLE_PROMPT_CACHING",
    // Amazon Bedrock.
    "CLAUDE_CODE_USE_BEDROCK",
    "AWS_REGION",
    "ANTHROPIC_BEDROCK_BASE_URL",
    "CLAUDE_CODE_SKIP_BEDROCK_AUTH",
    // Google Vertex AI.
    "CLAUDE_CODE_USE_VERTEX",
    "CLOUD_ML_REGION",
    "ANTHROPIC_VERTEX_PROJECT_ID",
    "ANTHROPIC_VERTEX_BASE_URL",
    "CLAUDE_CODE_SKIP_VERTEX_AUTH",
    // Retries and timeouts.
    "CLAUDE_CODE_MAX_RETRIES",
    "API_TIMEOUT_MS",
    "BASH_DEFAULT_TIMEOUT_MS",
    "BASH_MAX_TIMEOUT_MS",
    // The CA of a company gateway that re-signs TLS (research/claude-cli.md §4).
    "NODE_EXTRA_CA_CERTS",
];

/// Names picortex-run sets itself for the turn's one way out (`crate::egress`): a turn has no
/// network but its loopback, so the agent's proxy is always picortex-egress's relay.
const NETWORK: &[&str] = &["HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY"];

/// Where picortex-egress forwards the agent's API requests: `ANTHROPIC_BASE_URL` of the
/// operator's `[agent] env`, or Anthropic's API (`crate::egress::DEFAULT_API_URL`).
pub fn api_url<'a>(env: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    env.into_iter()
        .find(|(k, v)| *k == "ANTHROPIC_BASE_URL" && check(k, v).is_ok())
        .map_or_else(
            || crate::egress::DEFAULT_API_URL.to_owned(),
            |(_, v)| v.trim_end_matches('/').to_owned(),
        )
}

/// Names an operator may reach for that must come another way; the error says which.
const SECRETS: &[(&str, &str)] = &[
    ("ANTHROPIC_API_KEY", "anthropic-api-key"),
    ("ANTHROPIC_AUTH_TOKEN", "anthropic-api-key"),
    ("CLAUDE_CODE_OAUTH_TOKEN", "claude-oauth-token"),
];

/// Longest value accepted.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Most entries accepted (the list above is shorter).
pub const MAX_ENTRIES: usize = 64;

/// Check one `[agent] env` entry; the error is a sentence for the operator.
pub fn check(name: &str, value: &str) -> Result<(), String> {
    if let Some((_, cred)) = SECRETS.iter().find(|(n, _)| *n == name) {
        return Err(format!(
            "{name} is a secret and cannot be set in the configuration: put it in \
             /etc/picortex/credentials/{cred} (root, 0600), which only the turn's unit can read"
        ));
    }
    if NETWORK.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        return Err(format!(
            "{name} is set by picortex: a turn reaches the network only through picortex-egress \
             (the agent's API always; other hosts as [sandbox] egress and egress_allow say)"
        ));
    }
    if !ALLOWED.contains(&name) {
        return Err(format!(
            "{name} is not a variable picortex passes to the agent (allowed: {})",
            ALLOWED.join(", ")
        ));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!("{name}: value longer than {MAX_VALUE_BYTES} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{name}: value contains a control character"));
    }
    if name.ends_with("_BASE_URL") {
        let ok = ["http://", "https://"]
            .iter()
            .any(|s| value.starts_with(s) && value.len() > s.len())
            && !value.contains(char::is_whitespace);
        if !ok {
            return Err(format!("{name}: must be an http:// or https:// URL"));
        }
    }
    if name == "NODE_EXTRA_CA_CERTS" && !value.starts_with('/') {
        return Err(format!("{name}: must be an absolute path"));
    }
    Ok(())
}

/// Check a whole table (name → value).
pub fn check_all<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<(), String> {
    let mut n = 0;
    for (k, v) in entries {
        n += 1;
        if n > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        check(k, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_admits_deployment_settings() {
        check("ANTHROPIC_BASE_URL", "https://llm.example.com/anthropic").unwrap();
        check("ANTHROPIC_BASE_URL", "http://198.51.100.1").unwrap();
        check("CLAUDE_CODE_USE_BEDROCK", "1").unwrap();
        check("AWS_REGION", "eu-west-1").unwrap();
        check("CLAUDE_CODE_USE_VERTEX", "1").unwrap();
        check("ANTHROPIC_VERTEX_PROJECT_ID", "my-project").unwrap();
        check("ANTHROPIC_MODEL", "claude-sonnet-4-5").unwrap();
        check("NODE_EXTRA_CA_CERTS", "/etc/ssl/certs/corp.pem").unwrap();
    }

    #[test]
    fn everything_else_is_refused_with_a_reason() {
        for name in [
            "HOME",
            "PATH",
            "CLAUDE_CONFIG_DIR",
            "LD_PRELOAD",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
            "CREDENTIALS_DIRECTORY",
            "CLAUDE_CODE_OAUTH_TOKEN_FILE_DESCRIPTOR",
            "anthropic_base_url",
            "",
        ] {
            assert!(check(name, "x").is_err(), "{name} accepted");
        }
        let e = check("ANTHROPIC_API_KEY", "sk-ant-x").unwrap_err();
        assert!(e.contains("credentials/anthropic-api-key"), "{e}");
        assert!(
            !e.contains("sk-ant-x"),
            "the error must not echo the secret"
        );
        let e = check("CLAUDE_CODE_OAUTH_TOKEN", "t").unwrap_err();
        assert!(e.contains("credentials/claude-oauth-token"), "{e}");
    }

    #[test]
    fn values_are_checked() {
        assert!(check("ANTHROPIC_BASE_URL", "file:///etc/passwd").is_err());
        assert!(check("ANTHROPIC_BASE_URL", "https://").is_err());
        assert!(check("ANTHROPIC_BASE_URL", "https://a b").is_err());
        let e = check("HTTPS_PROXY", "http://proxy.example.com:3128").unwrap_err();
        assert!(e.contains("picortex-egress"), "{e}");
        assert!(check("no_proxy", "x").is_err());
        assert!(check("AWS_REGION", "eu\nX=1").is_err());
        assert!(check("AWS_REGION", "a\0b").is_err());
        assert!(check("AWS_REGION", &"x".repeat(MAX_VALUE_BYTES + 1)).is_err());
        assert!(check("NODE_EXTRA_CA_CERTS", "corp.pem").is_err());
        assert!(check_all([("AWS_REGION", "x"), ("HOME", "/")]).is_err());
        check_all([("AWS_REGION", "x"), ("CLAUDE_CODE_MAX_RETRIES", "2")]).unwrap();
    }

    #[test]
    fn the_api_is_the_operators_base_url_or_anthropics() {
        assert_eq!(api_url([]), crate::egress::DEFAULT_API_URL);
        assert_eq!(
            api_url([
                ("AWS_REGION", "x"),
                ("ANTHROPIC_BASE_URL", "http://198.51.100.1/")
            ]),
            "http://198.51.100.1"
        );
        assert_eq!(
            api_url([("ANTHROPIC_BASE_URL", "file:///x")]),
            crate::egress::DEFAULT_API_URL
        );
    }
}
