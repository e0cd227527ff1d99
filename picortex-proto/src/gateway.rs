//! The `org.picortex.Gateway1` interface of the gateway (picortexd), defined once: picortexd
//! serves it on the system bus, `picortexctl` uses the proxy below. Reading needs the polkit
//! action `org.picortex.gateway.read`, changing anything `org.picortex.gateway.manage`.
//!
//! Records are `a{sv}` dictionaries with snake_case keys (self-describing in `busctl` output);
//! a key whose value is unknown is left out. A chat is named by its Linq id or, while it waits
//! for a decision, by its quarantine number (`3` or `#3`).

use std::collections::HashMap;

use zbus::{proxy, OwnedVariant};

pub const GATEWAY_NAME: &str = "org.picortex.Gateway1";
pub const GATEWAY_PATH: &str = "/org/picortex/Gateway1";
pub const GATEWAY_IFACE: &str = "org.picortex.Gateway1";

/// polkit actions (`polkit/org.picortex.gateway.policy`).
pub mod actions {
    pub const READ: &str = "org.picortex.gateway.read";
    pub const MANAGE: &str = "org.picortex.gateway.manage";
}

/// One record as a client sees it: key → variant.
pub type Record = HashMap<String, OwnedVariant>;

#[proxy(
    interface = "org.picortex.Gateway1",
    default_service = "org.picortex.Gateway1",
    default_path = "/org/picortex/Gateway1"
)]
pub trait Gateway1 {
    /// Every chat: id, kind, name, access, attention, limits, today's cost, last activity.
    fn list_chats(&self) -> zbus::Result<Vec<Record>>;

    /// One chat in detail, with its recent gate decisions and turns.
    fn get_chat(&self, chat: &str) -> zbus::Result<(Record, Vec<Record>, Vec<Record>)>;

    /// Chats waiting for the owner's decision (quarantine).
    fn list_pending(&self) -> zbus::Result<Vec<Record>>;

    /// Requests of chats' agents for something of the owner's, waiting for an answer.
    fn list_requests(&self) -> zbus::Result<Vec<Record>>;

    /// Counts: chats, turns queued/running, replies pending, today's cost, the version.
    fn stats(&self) -> zbus::Result<Record>;

    /// Cost per chat since `since_ms` (unix milliseconds).
    fn cost(&self, since_ms: i64) -> zbus::Result<Vec<Record>>;

    /// Why a message was (not) answered: the message, its gate decisions, its turns, the reply.
    fn why(&self, message: &str) -> zbus::Result<(Record, Vec<Record>, Vec<Record>, Vec<String>)>;

    #[zbus(allow_interactive_auth)]
    fn set_attention(&self, chat: &str, mode: &str) -> zbus::Result<String>;
    #[zbus(allow_interactive_auth)]
    fn set_memory_max(&self, chat: &str, memory_max: &str) -> zbus::Result<String>;
    #[zbus(allow_interactive_auth)]
    fn set_budget(&self, chat: &str, daily_budget_usd: &str) -> zbus::Result<String>;
    #[zbus(allow_interactive_auth)]
    fn set_permission_mode(&self, chat: &str, permission_mode: &str) -> zbus::Result<String>;
    #[zbus(allow_interactive_auth)]
    fn allow(&self, chat: &str) -> zbus::Result<String>;
    #[zbus(allow_interactive_auth)]
    fn block(&self, chat: &str) -> zbus::Result<String>;
    /// `answer`: yes, no or always.
    #[zbus(allow_interactive_auth)]
    fn answer_request(&self, number: i64, answer: &str) -> zbus::Result<String>;
    #[zbus(allow_interactive_auth)]
    fn archive(&self, chat: &str) -> zbus::Result<String>;
    #[zbus(allow_interactive_auth)]
    fn remove(&self, chat: &str) -> zbus::Result<String>;
    #[zbus(allow_interactive_auth)]
    fn new_session(&self, chat: &str) -> zbus::Result<String>;

    #[zbus(signal)]
    fn turn_started(&self, chat: &str, turn: &str, kind: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    fn turn_finished(
        &self,
        chat: &str,
        turn: &str,
        outcome: &str,
        cost_usd: f64,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn pending_added(&self, number: i64, chat: &str) -> zbus::Result<()>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}
