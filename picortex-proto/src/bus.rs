//! The `org.picortex.Provision1` interface of the root helper, defined once: the gateway uses the
//! proxy below, the helper implements the same names, and `busctl introspect` shows both.

use std::collections::HashMap;
use zbus::{proxy, OwnedFd, Variant};

pub const PROVISION_NAME: &str = "org.picortex.Provision1";
pub const PROVISION_PATH: &str = "/org/picortex/Provision1";
pub const PROVISION_IFACE: &str = "org.picortex.Provision1";
pub const ERROR_PREFIX: &str = "org.picortex.Provision1.Error";
/// The most `DepositInbox` copies into a chat's inbox (Linq's own limit for pre-uploaded media);
/// the gateway's `[linq] media_max_bytes` is at most this.
pub const INBOX_MAX_BYTES: u64 = 100 << 20;

/// The journal namespace of every turn unit (`LogNamespace=`): what a turn writes — its agent's
/// output, anything it sends to journald, picortex-run's own lines — goes to a journald instance
/// of its own (`systemd-journald@picortex-turns`) with its own size limits, so no turn can rotate
/// the system journal (the helper's audit, the gateway's decisions) away, and nothing a turn
/// writes shows in a query of the system journal. `journalctl --namespace='*'` shows both.
pub const TURN_LOG_NAMESPACE: &str = "picortex-turns";

/// polkit actions, one per kind of privileged operation (`polkit/org.picortex.provision.policy`).
pub mod actions {
    pub const ENSURE_CHAT: &str = "org.picortex.provision.ensure-chat";
    pub const START_TURN: &str = "org.picortex.provision.start-turn";
    pub const MANAGE_CHAT: &str = "org.picortex.provision.manage-chat";
    /// Copy a file between chats' workspaces after the owner approved it (SPEC C3).
    pub const SHARE_FILE: &str = "org.picortex.provision.share-file";
}

/// Limits the gateway may ask for in `StartTurn`'s `limits` dictionary. The helper clamps to
/// these bounds and refuses keys it does not know.
pub mod limits {
    pub const MEMORY_MAX: &str = "MemoryMax";
    pub const TASKS_MAX: &str = "TasksMax";
    pub const RUNTIME_MAX_USEC: &str = "RuntimeMaxUSec";
    pub const CPU_WEIGHT: &str = "CPUWeight";
    pub const IO_WEIGHT: &str = "IOWeight";
    /// The slice's CPUQuota=, as systemd's bus spells it: CPU time per second of wall time.
    pub const CPU_QUOTA_PER_SEC_USEC: &str = "CPUQuotaPerSecUSec";

    pub const MEMORY_MAX_DEFAULT: u64 = 1 << 30;
    pub const MEMORY_MAX_MIN: u64 = 32 << 20;
    pub const MEMORY_MAX_MAX: u64 = 64 << 30;
    pub const TASKS_MAX_DEFAULT: u64 = 256;
    pub const TASKS_MAX_MIN: u64 = 8;
    pub const TASKS_MAX_MAX: u64 = 16384;
    pub const RUNTIME_MAX_USEC_DEFAULT: u64 = 600_000_000;
    pub const RUNTIME_MAX_USEC_MIN: u64 = 1_000_000;
    pub const RUNTIME_MAX_USEC_MAX: u64 = 24 * 3600 * 1_000_000;
    pub const CPU_WEIGHT_DEFAULT: u64 = 100;
    pub const IO_WEIGHT_DEFAULT: u64 = 100;
    /// One CPU's worth per chat: a busy chat cannot take the machine from the others.
    pub const CPU_QUOTA_PER_SEC_USEC_DEFAULT: u64 = 1_000_000;
    pub const CPU_QUOTA_PER_SEC_USEC_MIN: u64 = 10_000;
    pub const CPU_QUOTA_PER_SEC_USEC_MAX: u64 = 1024 * 1_000_000;
}

#[proxy(
    interface = "org.picortex.Provision1",
    default_service = "org.picortex.Provision1",
    default_path = "/org/picortex/Provision1"
)]
pub trait Provision {
    /// Create (or repair) the chat's Unix user, 0700 home and slice. Idempotent.
    /// Returns (user name, uid, home, slice).
    fn ensure_chat(&self, chat_id: &str) -> zbus::Result<(String, u32, String, String)>;

    /// Start `picortex-turn-<turn_id>.service` for the chat. `request` becomes the unit's stdin
    /// (a `TurnRequest`), `result` its stdout (where picortex-run writes a `TurnResult`).
    /// Returns the unit name. Fails with `…Error.UnitExists` if the turn was already started.
    fn start_turn(
        &self,
        chat_id: &str,
        turn_id: &str,
        request: OwnedFd,
        result: OwnedFd,
        limits: HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<String>;

    /// StartTurn with the owner's grants for this one turn: (source chat id, path relative to
    /// its home), each bound read-only at `consent::shared_mount(n)` (SPEC C2).
    #[allow(clippy::too_many_arguments)]
    fn start_granted_turn(
        &self,
        chat_id: &str,
        turn_id: &str,
        request: OwnedFd,
        result: OwnedFd,
        limits: HashMap<&str, Variant<'_>>,
        grants: Vec<(String, String)>,
    ) -> zbus::Result<String>;

    /// Copy `path` of `source_chat`'s home into `dest_chat`'s `inbox/` (SPEC C3).
    /// Returns (path relative to the destination home, sha256 hex, size).
    fn import_file(
        &self,
        source_chat: &str,
        path: &str,
        dest_chat: &str,
    ) -> zbus::Result<(String, String, u64)>;

    /// Copy the bytes of `file` (read from its start, at most [`INBOX_MAX_BYTES`]) into a new
    /// file of the chat's `inbox/`, named after `name_hint` (sanitised; never overwriting), owned
    /// by the chat's user, 0600: how media a person sent reaches the chat's home without the
    /// gateway ever writing there. Returns (path relative to the home, sha256 hex, size).
    fn deposit_inbox(
        &self,
        chat_id: &str,
        name_hint: &str,
        file: OwnedFd,
    ) -> zbus::Result<(String, String, u64)>;

    /// Copies of the files the agent left in the chat's `outbox/` to be sent (media out): only
    /// regular files of a type Linq takes, at most [`INBOX_MAX_BYTES`] each, never through a
    /// symlink. Returns ((name, content type, size, sha256 hex, memory copy)…, (name, why
    /// refused)…). Nothing is removed: see `clear_outbox`.
    #[allow(clippy::type_complexity)]
    fn collect_outbox(
        &self,
        chat_id: &str,
    ) -> zbus::Result<(
        Vec<(String, String, u64, String, OwnedFd)>,
        Vec<(String, String)>,
    )>;

    /// Remove each (name, sha256) from the chat's `outbox/` if the name still holds those bytes
    /// (once the gateway has recorded the file for sending). Returns how many were removed.
    fn clear_outbox(&self, chat_id: &str, done: Vec<(String, String)>) -> zbus::Result<u32>;

    /// Stop and forget a finished turn's unit (it is kept, RemainAfterExit, until the gateway has
    /// read its outcome).
    fn release_turn(&self, turn_id: &str) -> zbus::Result<()>;

    /// ReleaseTurn(`release_turn_id`), then StartTurn, under one authorisation: how the gateway
    /// lets an answered turn's unit go as it starts the chat's next (spare) one. The release
    /// comes first and its failure does not stop the start. Returns the started unit's name.
    #[allow(clippy::too_many_arguments)]
    fn release_and_start_turn(
        &self,
        release_turn_id: &str,
        chat_id: &str,
        turn_id: &str,
        request: OwnedFd,
        result: OwnedFd,
        limits: HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<String>;

    /// Archive an idle chat: its home is tarred into the helper's state directory and removed,
    /// its user locked; the next turn restores it. Returns the archive's path.
    fn archive_chat(&self, chat_id: &str) -> zbus::Result<String>;

    /// Archive the chat (if it has a home), then delete its user. Returns the archive's path
    /// (empty if there was nothing to keep).
    fn remove_chat(&self, chat_id: &str) -> zbus::Result<String>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}
