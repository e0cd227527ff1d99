//! How a turn reaches the network (SPEC T1), agreed between the helper (which gives each turn
//! unit a network namespace of its own, with only loopback, and binds `SOCKET_DIR` in),
//! picortex-run (which relays `RELAY_PORT` on the turn's loopback to `SOCKET`) and
//! picortex-egress (which listens on `SOCKET`, applies the operator's `[sandbox]` egress policy
//! to every `CONNECT`, and forwards the agent's API requests with the real credential added).

/// The directory the egress socket is in (systemd creates it for `picortex-egress.socket`).
pub const SOCKET_DIR: &str = "/run/picortex-egress";
/// The egress proxy's socket: chat users connect, nobody else is served.
pub const SOCKET: &str = "/run/picortex-egress/egress.sock";
/// The port picortex-run listens on, in the turn's own network namespace (its loopback alone).
pub const RELAY_PORT: u16 = 3128;

/// `http://127.0.0.1:3128`: the agent's HTTP(S) proxy and its API base URL at once (a request
/// with a path is forwarded to the API; `CONNECT` opens a tunnel where the policy allows).
pub fn relay_url() -> String {
    format!("http://127.0.0.1:{RELAY_PORT}")
}

/// What the turn's view holds in place of the agent's credentials: shaped like them, so the
/// CLI takes the same path it would with the real ones, and worth nothing. picortex-egress puts
/// the real one in each request it forwards.
pub const PLACEHOLDER_API_KEY: &str = "sk-ant-api03-picortex-egress-adds-the-real-key";
pub const PLACEHOLDER_OAUTH_TOKEN: &str = "sk-ant-oat01-picortex-egress-adds-the-real-token";

/// The placeholder for a credential, by its file name (`ids::API_KEY_CREDENTIAL`, …).
pub fn placeholder(credential: &str) -> Option<&'static str> {
    match credential {
        crate::ids::API_KEY_CREDENTIAL => Some(PLACEHOLDER_API_KEY),
        crate::ids::OAUTH_CREDENTIAL => Some(PLACEHOLDER_OAUTH_TOKEN),
        _ => None,
    }
}

/// Where the agent's API is when the operator's `[agent] env` names none.
pub const DEFAULT_API_URL: &str = "https://api.anthropic.com";
