//! The units the helper asks systemd for (SPEC T1): each turn is a transient
//! `picortex-turn-<id>.service` in the chat's `picortex-chat-<tag>.slice`, run as the chat user,
//! with picortex-run as its only command and the sandbox below. The property vector is built by a
//! plain function so tests can read it without a bus; `start_turn` only converts and sends it.
//!
//! How the gateway learns the outcome, even across its own restarts: the unit keeps its state
//! after the process exits (`RemainAfterExit=yes`; a failed unit stays failed) until the gateway
//! calls `ReleaseTurn`, so `ActiveState`/`Result`/`ExecMainStatus` can be read from systemd at any
//! time; and picortex-run's stdout is a file in the gateway's own state directory, handed over as
//! a file descriptor, so the result document outlives any process.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::{fstat, SFlag};
use picortex_proto::bus::TURN_LOG_NAMESPACE;
use picortex_proto::ids::{ChatId, TurnId, TURN_CONFIG_DIR};
use picortex_proto::turn::MAX_REQUEST_BYTES;
use zbus::{Fd, OwnedVariant, Variant};
use zbus_systemd::systemd1::ManagerProxy;

use crate::egress::{self, Range};
pub use crate::limits::Limits;
use crate::users::ChatAccount;
use crate::view;

/// Where `make install` put picortex-run; fixed at build time so no caller can choose what the
/// turn executes.
pub const RUN_BIN: &str = match option_env!("PICORTEX_RUN_BIN") {
    Some(p) => p,
    None => "/usr/libexec/picortex/picortex-run",
};

/// A unit property value, independent of the bus library so it can be inspected in tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Prop {
    Str(String),
    Bool(bool),
    U64(u64),
    U32(u32),
    I32(i32),
    Strs(Vec<String>),
    /// ExecStart: (path, argv, ignore-failure)
    Exec(Vec<(String, Vec<String>, bool)>),
    /// (allow-list?, names) as used by SystemCallFilter and RestrictAddressFamilies
    FlagStrs(bool, Vec<String>),
    /// IPAddressAllow/Deny: (family, address bytes, prefix length)
    Ips(Vec<(i32, Vec<u8>, u32)>),
    /// LogExtraFields: "FIELD=value" entries as byte arrays
    Bytes(Vec<Vec<u8>>),
    /// LoadCredential: (id, path) pairs; TemporaryFileSystem: (path, mount options) pairs
    Pairs(Vec<(String, String)>),
    /// BindPaths: (source, destination, ignore a missing source?, mount flags)
    Binds(Vec<(String, String, bool, u64)>),
}

/// `MS_REC`: BindPaths' flag for a recursive bind mount.
const MS_REC: u64 = 16384;

/// The allow-list of a turn's system calls.
pub const SYSCALL_ALLOW: &[&str] = &[
    "@system-service",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
];

/// System calls `@system-service` allows that a turn is refused (EPERM) all the same: io_uring
/// (a second way into the kernel that bypasses much of what seccomp sees, and a steady source
/// of privilege escalations), userfaultfd (lets a process stall the kernel mid-copy, a staple of
/// exploiting races) and the kernel keyrings (per-user kernel state an agent has no use for).
pub const DENIED_SYSCALLS: &[&str] = &[
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "userfaultfd",
    "add_key",
    "request_key",
    "keyctl",
];

/// Journal messages a turn may log per interval, before journald's free-space scaling.
pub const LOG_RATE_BURST: u32 = 500;
pub const LOG_RATE_INTERVAL_USEC: u64 = 30_000_000;

/// The turn's own /dev/shm: writable by the chat user, nothing executable, bounded.
pub const DEV_SHM_OPTIONS: &str = "mode=1777,nosuid,nodev,noexec,size=64M";

/// The gateway's state directory: the database, the turn results and every chat's home. A turn
/// sees an empty read-only tmpfs there, with only its own home bound back in.
pub const STATE_DIR: &str = "/var/lib/picortex";

fn s(v: &str) -> Prop {
    Prop::Str(v.to_owned())
}

/// What a turn's BPF address fence lets through: its own loopback, the one interface of its
/// network namespace (`PrivateNetwork=yes`), where picortex-run relays to picortex-egress.
/// Everything else is denied, should the namespace ever have more.
pub fn loopback_only() -> (Vec<Range>, Vec<Range>) {
    const AF_INET: i32 = 2;
    const AF_INET6: i32 = 10;
    let mut v6_loop = vec![0u8; 16];
    if let Some(last) = v6_loop.last_mut() {
        *last = 1;
    }
    (
        vec![(AF_INET, vec![127, 0, 0, 0], 8), (AF_INET6, v6_loop, 128)],
        vec![(AF_INET, vec![0; 4], 0), (AF_INET6, vec![0; 16], 0)],
    )
}

/// What the helper learns about the machine and prepares for the chat at StartTurn
/// (`Host::probe`, see `view.rs`); kept apart so the property builder stays a pure function.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Host {
    /// Every address assigned to the machine's interfaces, as single-address ranges.
    /// The turn's cgroup tree, see `view::CgroupView`.
    pub cgroups: Option<view::CgroupView>,
    /// The turn's /etc/passwd and /etc/group: (passwd file, group file).
    pub user_db: Option<(String, String)>,
    /// The turn's `/etc/picortex`, holding the `[agent]` table for picortex-run (see
    /// `view::write_agent_view`); without it, `/etc/picortex` is inaccessible.
    pub agent_view: Option<String>,
}

impl Host {
    /// `config`: the operator's configuration of this call (`config::read`).
    pub fn probe(acct: &ChatAccount, config: &str) -> Result<Self, String> {
        let (p, g) = view::write_user_db(acct)?;
        Ok(Self {
            cgroups: view::write_cgroup_view(acct, std::path::Path::new(CGROUP_ROOT))?,
            user_db: Some((p.display().to_string(), g.display().to_string())),
            agent_view: Some(
                view::write_agent_view(
                    acct,
                    &view::agent_table(config)
                        .map_err(|e| format!("{}: {e}", egress::CONFIG_PATH))?,
                    std::path::Path::new(view::OPERATOR_CREDENTIALS),
                )?
                .display()
                .to_string(),
            ),
        })
    }
}

/// Files of /etc a turn has no business reading that every user may: the user and group
/// database backups, and the chats' user records (`userdb`: every chat user is in them; the
/// operator's configuration, which names the
/// owner, is replaced by the helper's view of it, see `view_properties`). The rest is out of reach
/// without a mount of its own, which each costs the unit's start-up (SPEC P5): `/run` is an
/// empty tmpfs (`RUN_KEPT` bound back), `/var/lib/picortex-provision` is root's alone (0700),
/// the shadow backups are root's and group shadow's, and chat users are system users, which
/// get no subordinate ids (`/etc/subuid`, `/etc/subgid`).
/// `-`: a path missing on this machine is no error.
pub const HIDDEN_PATHS: &[&str] = &["-/etc/passwd-", "-/etc/group-", "-/etc/userdb"];
/// Hidden as well when the helper has no view of it to put there.
const OPERATOR_CONFIG_DIR: &str = "-/etc/picortex";

/// What of `/run` a turn keeps (read-only): picortex-egress's socket directory, the turn's one
/// way out (see `loopback_only`). (journald's sockets, for the agent's syslog and native log
/// lines, are systemd's to bind: those of the turns' own journal, `LogNamespace=`.) Everything
/// else there — the system bus, systemd's runtime state (transient unit files, per-unit records
/// and drop-ins name every chat's turns and slices, with their Linq chat ids),
/// systemd-userdbd's socket (it answers from the real user database), /run/lock and /run/user,
/// other units' credentials — is gone. systemd mounts the unit's own credentials in after.
/// Not resolved's `resolv.conf` either: in its own network namespace a turn reaches no resolver
/// (127.0.0.53 is the machine's loopback, not the turn's), and picortex-egress resolves the
/// names of the connections it allows; each bind would only cost the sandbox's set-up.
pub const RUN_KEPT: &[&str] = &[picortex_proto::egress::SOCKET_DIR];

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// An empty read-only tmpfs in a turn, with only the cgroup view in it (see the sandbox).
const SYS_FS: &str = "/sys/fs";

/// What of the machine a turn sees, from `host`: its own user database, and of the cgroup tree
/// only its own chat's slice (ProtectControlGroups alone only makes the tree read-only).
fn view_properties(host: &Host, props: &mut Vec<(&'static str, Prop)>) {
    let mut binds: Vec<_> = RUN_KEPT
        .iter()
        .map(|p| ((*p).to_owned(), (*p).to_owned(), true, MS_REC))
        .collect();
    if let Some((p, g)) = &host.user_db {
        binds.push((p.clone(), "/etc/passwd".to_owned(), false, 0));
        binds.push((g.clone(), "/etc/group".to_owned(), false, 0));
    }
    if let Some(cg) = &host.cgroups {
        binds.push((
            cg.skeleton.display().to_string(),
            CGROUP_ROOT.to_owned(),
            false,
            0,
        ));
        // A slice with no directory yet in a hierarchy is no reason to fail the turn.
        binds.extend(cg.own.iter().map(|o| (o.clone(), o.clone(), true, MS_REC)));
    }
    match &host.agent_view {
        Some(dir) => binds.push((dir.clone(), TURN_CONFIG_DIR.to_owned(), false, 0)),
        None => {
            for (k, p) in props.iter_mut() {
                if let ("InaccessiblePaths", Prop::Strs(gone)) = (*k, p) {
                    gone.push(OPERATOR_CONFIG_DIR.to_owned());
                }
            }
        }
    }
    props.push(("BindReadOnlyPaths", Prop::Binds(binds)));
}

/// The transient service for one turn. Resource limits live on the chat's slice (see
/// `slice_properties`); this carries the sandbox, the runtime cap and the command.
pub fn turn_properties(
    acct: &ChatAccount,
    chat: &ChatId,
    turn: &TurnId,
    limits: &Limits,
    host: &Host,
) -> Vec<(&'static str, Prop)> {
    let mut props = base_turn_properties(acct, chat, turn, limits);
    view_properties(host, &mut props);
    props
}

/// The owner's grants for this one turn (SPEC C2): each staged copy bound read-only at its mount
/// point, and nothing else. A turn without grants gets no such property at all.
pub fn grant_properties(grants: &[(String, String)], props: &mut Vec<(&'static str, Prop)>) {
    if grants.is_empty() {
        return;
    }
    props.push((
        "BindReadOnlyPaths",
        Prop::Binds(
            grants
                .iter()
                .map(|(src, dst)| (src.clone(), dst.clone(), false, 0))
                .collect(),
        ),
    ));
}

fn base_turn_properties(
    acct: &ChatAccount,
    chat: &ChatId,
    turn: &TurnId,
    limits: &Limits,
) -> Vec<(&'static str, Prop)> {
    let (loopback, everything) = loopback_only();
    vec![
        (
            "Description",
            Prop::Str(format!("picortex turn {turn} for chat {}", acct.tag)),
        ),
        ("Type", s("exec")),
        ("Slice", Prop::Str(acct.tag.slice())),
        ("User", s(&acct.user)),
        ("Group", s(&acct.user)),
        ("WorkingDirectory", s(&acct.home)),
        (
            "ExecStart",
            Prop::Exec(vec![(
                RUN_BIN.to_owned(),
                vec![RUN_BIN.to_owned(), "--turn".to_owned(), turn.to_string()],
                false,
            )]),
        ),
        ("StandardError", s("journal")),
        // A turn's processes log (stderr, syslog, journald's native socket) into a journal of
        // their own (see TURN_LOG_NAMESPACE): a flood there, of entries or of bytes, rotates
        // only turns' lines away, never the helper's audit or the gateway's log (SPEC P6, P7).
        // systemd binds that instance's sockets at /run/systemd/journal in the unit.
        ("LogNamespace", s(TURN_LOG_NAMESPACE)),
        // And within it, past the burst, journald drops the unit's messages until the interval
        // ends, and says how many it dropped (journald scales the burst up with free space).
        (
            "LogRateLimitIntervalUSec",
            Prop::U64(LOG_RATE_INTERVAL_USEC),
        ),
        ("LogRateLimitBurst", Prop::U32(LOG_RATE_BURST)),
        ("SyslogIdentifier", s("picortex-turn")),
        (
            "LogExtraFields",
            Prop::Bytes(vec![
                format!("PICORTEX_CHAT={chat}").into_bytes(),
                format!("PICORTEX_TURN={turn}").into_bytes(),
            ]),
        ),
        // Keep the unit (and its Result) until the gateway has read it; see the module doc.
        ("RemainAfterExit", Prop::Bool(true)),
        ("RuntimeMaxUSec", Prop::U64(limits.runtime_max_usec)),
        ("TimeoutStopUSec", Prop::U64(5_000_000)),
        ("OOMPolicy", s("stop")),
        ("UMask", Prop::U32(0o077)),
        // The sandbox.
        ("NoNewPrivileges", Prop::Bool(true)),
        ("ProtectSystem", s("strict")),
        ("ProtectHome", s("yes")),
        ("ReadWritePaths", Prop::Strs(vec![acct.home.clone()])),
        // Other chats' homes are 0700 and the database 0600, but a turn should not even learn
        // which chats exist: /var/lib/picortex is an empty tmpfs with only this home in it.
        // And /dev/shm: PrivateDevices binds the machine's own into the private /dev, where
        // every turn running at the same time (of any chat) could leave files for the others.
        // Each turn gets an empty one; what it puts there counts against the chat's MemoryMax.
        // And /run: see RUN_KEPT.
        // And /sys/fs: nothing there is a turn's business but its own slice of the cgroup tree
        // (see `view_properties`, bound back in); the rest (bpf, pstore, fuse, each
        // filesystem's tunables) goes. systemd unmounts everything below a TemporaryFileSystem=
        // first: on a hybrid-cgroup machine a dozen hierarchies leave the unit's mount table,
        // which systemd 252 reads again for every mount it makes while building the sandbox
        // (about 140 times: ~8% less set-up CPU per turn measured on such a machine).
        (
            "TemporaryFileSystem",
            Prop::Pairs(vec![
                (STATE_DIR.to_owned(), "ro".to_owned()),
                ("/dev/shm".to_owned(), DEV_SHM_OPTIONS.to_owned()),
                ("/run".to_owned(), "ro".to_owned()),
                (SYS_FS.to_owned(), "ro".to_owned()),
            ]),
        ),
        (
            "BindPaths",
            Prop::Binds(vec![(acct.home.clone(), acct.home.clone(), false, MS_REC)]),
        ),
        // /tmp and /var/tmp are private (PrivateTmp) and read-only: they live on the host's
        // disk, outside the chat's quota, so the agent's temporary files go to ~/.tmp ($TMPDIR)
        // instead, and the home is the one place a turn writes to. (/run is a read-only tmpfs:
        // systemd 252 leaves the real one writable under ProtectSystem=strict once ProtectProc=
        // is set, and /run/lock is a 1777 tmpfs every chat could share files through.)
        (
            "ReadOnlyPaths",
            Prop::Strs(vec!["/tmp".to_owned(), "/var/tmp".to_owned()]),
        ),
        (
            "InaccessiblePaths",
            Prop::Strs(HIDDEN_PATHS.iter().map(|p| (*p).to_owned()).collect()),
        ),
        ("PrivateTmp", Prop::Bool(true)),
        ("PrivateDevices", Prop::Bool(true)),
        ("PrivateIPC", Prop::Bool(true)),
        ("ProtectProc", s("invisible")),
        ("ProcSubset", s("pid")),
        ("CapabilityBoundingSet", Prop::U64(0)),
        ("AmbientCapabilities", Prop::U64(0)),
        ("RestrictSUIDSGID", Prop::Bool(true)),
        ("LockPersonality", Prop::Bool(true)),
        ("RestrictRealtime", Prop::Bool(true)),
        // A uint64 mask of the namespace types that may be created: none.
        ("RestrictNamespaces", Prop::U64(0)),
        ("ProtectKernelTunables", Prop::Bool(true)),
        ("ProtectKernelModules", Prop::Bool(true)),
        ("ProtectKernelLogs", Prop::Bool(true)),
        ("ProtectControlGroups", Prop::Bool(true)),
        ("ProtectClock", Prop::Bool(true)),
        ("ProtectHostname", Prop::Bool(true)),
        ("RemoveIPC", Prop::Bool(true)),
        ("KeyringMode", s("private")),
        (
            "SystemCallArchitectures",
            Prop::Strs(vec!["native".to_owned()]),
        ),
        // Plus Landlock's calls (not in @system-service): picortex-run puts the agent in a
        // Landlock domain of its own (picortex-run/src/scope.rs); a process can only ever
        // restrict itself further with them.
        (
            "SystemCallFilter",
            Prop::FlagStrs(
                true,
                SYSCALL_ALLOW.iter().map(|c| (*c).to_owned()).collect(),
            ),
        ),
        // A second, inverted list takes these back out of the allow-list above, as a
        // `SystemCallFilter=~…` line after the first does in a unit file.
        (
            "SystemCallFilter",
            Prop::FlagStrs(
                false,
                DENIED_SYSCALLS.iter().map(|c| (*c).to_owned()).collect(),
            ),
        ),
        ("SystemCallErrorNumber", Prop::I32(1)), // EPERM rather than a kill, so the agent can report it
        (
            "RestrictAddressFamilies",
            Prop::FlagStrs(
                true,
                vec!["AF_UNIX".into(), "AF_INET".into(), "AF_INET6".into()],
            ),
        ),
        // A network namespace of its own: only loopback, where picortex-run relays to
        // picortex-egress (the agent's API, and CONNECT where `[sandbox]` allows). Nothing of
        // the machine's network shows: not its addresses, nor other chats' sockets in
        // /proc/net, nor abstract sockets bound in the host's namespace.
        ("PrivateNetwork", Prop::Bool(true)),
        ("IPAddressAllow", Prop::Ips(loopback)),
        ("IPAddressDeny", Prop::Ips(everything)),
        // Not MemoryDenyWriteExecute: the agent's JavaScript engine needs a JIT.
    ]
}

/// The devices a turn's `PrivateDevices=yes` lets it open (systemd 252: the pseudo-devices, the
/// terminal ones, the pty slaves; `ProtectClock=yes` adds the clock, read-only), with the same
/// access, in the form of `DeviceAllow=`.
pub const TURN_DEVICES: &[(&str, &str)] = &[
    ("/dev/null", "rwm"),
    ("/dev/zero", "rwm"),
    ("/dev/full", "rwm"),
    ("/dev/random", "rwm"),
    ("/dev/urandom", "rwm"),
    ("/dev/tty", "rwm"),
    ("/dev/ptmx", "rwm"),
    ("char-pts", "rw"),
    ("char-rtc", "r"),
];

/// Per-chat resource limits, applied to the chat's slice so they cover every process of the
/// chat however many turns it runs.
pub fn slice_properties(limits: &Limits) -> Vec<(&'static str, Prop)> {
    vec![
        // The slice holds the device policy its turns get from PrivateDevices=, so that it
        // needs the devices controller for as long as it exists. Without it, each turn that
        // starts or ends in a chat's slice flips whether the chat slices need that controller,
        // and systemd re-applies every sibling slice's cgroup settings: PID 1 spent ~25 ms more
        // per turn start with 40 chats (measured), growing with the number of chats.
        ("DevicePolicy", s("closed")),
        (
            "DeviceAllow",
            Prop::Pairs(
                TURN_DEVICES
                    .iter()
                    .map(|(d, a)| ((*d).to_owned(), (*a).to_owned()))
                    .collect(),
            ),
        ),
        ("MemoryMax", Prop::U64(limits.memory_max)),
        ("MemorySwapMax", Prop::U64(0)),
        ("TasksMax", Prop::U64(limits.tasks_max)),
        // CPU and disk shared fairly between chats, and no chat above its CPU quota however
        // idle the machine (P7: the gateway and other chats keep what they need).
        ("CPUWeight", Prop::U64(limits.cpu_weight)),
        ("IOWeight", Prop::U64(limits.io_weight)),
        (
            "CPUQuotaPerSecUSec",
            Prop::U64(limits.cpu_quota_per_sec_usec),
        ),
    ]
}

fn to_variant(p: &Prop) -> zbus::Result<OwnedVariant> {
    let v: Variant<'_> = match p {
        Prop::Str(x) => Variant::from(x.as_str()),
        Prop::Bool(x) => Variant::from(*x),
        Prop::U64(x) => Variant::from(*x),
        Prop::U32(x) => Variant::from(*x),
        Prop::I32(x) => Variant::from(*x),
        Prop::Strs(x) => Variant::from(x.clone()),
        Prop::Exec(x) => Variant::from(x.clone()),
        Prop::FlagStrs(b, x) => Variant::from((*b, x.clone())),
        Prop::Ips(x) => Variant::from(x.clone()),
        Prop::Bytes(x) => Variant::from(x.clone()),
        Prop::Pairs(x) => Variant::from(x.clone()),
        Prop::Binds(x) => Variant::from(x.clone()),
    };
    OwnedVariant::try_from(v)
}

fn convert(props: &[(&'static str, Prop)]) -> zbus::Result<Vec<(String, OwnedVariant)>> {
    props
        .iter()
        .map(|(k, p)| Ok(((*k).to_owned(), to_variant(p)?)))
        .collect()
}

/// The request fd must be a small regular file (a memfd) we can read; the result fd a regular
/// file open for writing. Anything else (a socket, a pipe, a directory, a device) is refused.
pub fn check_fds(request: &OwnedFd, result: &OwnedFd) -> Result<(), String> {
    let st = fstat(request.as_fd()).map_err(|e| format!("request fd: {e}"))?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    // A pipe is how the gateway hands a request to a unit started ahead of its turn.
    if kind != SFlag::S_IFREG && kind != SFlag::S_IFIFO {
        return Err("request fd is neither a regular file nor a pipe".into());
    }
    if kind == SFlag::S_IFREG && u64::try_from(st.st_size).unwrap_or(u64::MAX) > MAX_REQUEST_BYTES {
        return Err(format!("request is larger than {MAX_REQUEST_BYTES} bytes"));
    }
    let st = fstat(result.as_fd()).map_err(|e| format!("result fd: {e}"))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err("result fd is not a regular file".into());
    }
    let fl = fcntl(result.as_fd(), FcntlArg::F_GETFL).map_err(|e| format!("result fd: {e}"))?;
    let acc = OFlag::from_bits_truncate(fl) & OFlag::O_ACCMODE;
    if acc != OFlag::O_WRONLY && acc != OFlag::O_RDWR {
        return Err("result fd is not open for writing".into());
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("turn unit {0} already exists")]
    Exists(String),
    #[error("systemd: {0}")]
    Systemd(String),
}

fn systemd_err(e: zbus::Error) -> UnitError {
    if let zbus::Error::MethodError(name, _, _) = &e {
        if name.as_str() == "org.freedesktop.systemd1.UnitExists" {
            return UnitError::Exists(e.to_string());
        }
    }
    UnitError::Systemd(e.to_string())
}

/// Everything a turn unit is made of, checked.
pub struct TurnSpec<'a> {
    pub acct: &'a ChatAccount,
    pub chat: &'a ChatId,
    pub turn: &'a TurnId,
    pub limits: &'a Limits,
    pub host: &'a Host,
    /// Approved grants (SPEC C2): (staged copy, mount point inside the turn), see `share`.
    pub grants: &'a [(String, String)],
}

/// The limits this helper process last applied to each slice: setting them again would rewrite
/// the slice's drop-ins on every turn for nothing.
fn applied() -> &'static std::sync::Mutex<HashMap<String, Limits>> {
    static APPLIED: std::sync::OnceLock<std::sync::Mutex<HashMap<String, Limits>>> =
        std::sync::OnceLock::new();
    APPLIED.get_or_init(Default::default)
}

/// Apply the chat's limits to its slice (when they changed), then start the turn unit.
pub async fn start_turn(
    conn: &zbus::Connection,
    spec: &TurnSpec<'_>,
    request: OwnedFd,
    result: OwnedFd,
) -> Result<String, UnitError> {
    let TurnSpec {
        acct,
        chat,
        turn,
        limits,
        host,
        grants,
    } = *spec;
    let mgr = ManagerProxy::new(conn).await.map_err(systemd_err)?;
    let slice = acct.tag.slice();
    let known = applied().lock().ok().and_then(|m| m.get(&slice).cloned());
    if known.as_ref() != Some(limits) {
        mgr.load_unit(slice.clone()).await.map_err(systemd_err)?;
        mgr.set_unit_properties(
            slice.clone(),
            true,
            convert(&slice_properties(limits)).map_err(systemd_err)?,
        )
        .await
        .map_err(systemd_err)?;
        if let Ok(mut m) = applied().lock() {
            m.insert(slice, limits.clone());
        }
    }

    let unit = turn.unit_name();
    let mut props = turn_properties(acct, chat, turn, limits, host);
    grant_properties(grants, &mut props);
    let mut props = convert(&props).map_err(systemd_err)?;
    props.push(("StandardInputFileDescriptor".into(), fd_variant(&request)?));
    props.push(("StandardOutputFileDescriptor".into(), fd_variant(&result)?));
    mgr.start_transient_unit(unit.clone(), "fail".into(), props, vec![])
        .await
        .map_err(systemd_err)?;
    // systemd holds its own duplicates now; ours close here.
    drop(request);
    drop(result);
    Ok(unit)
}

fn fd_variant(fd: &OwnedFd) -> Result<OwnedVariant, UnitError> {
    OwnedVariant::try_from(Variant::from(Fd::from(fd.as_fd())))
        .map_err(|e| UnitError::Systemd(e.to_string()))
}

/// Stop everything running in a chat's slice (its turn, its spare) before its home goes away.
pub async fn stop_slice(conn: &zbus::Connection, slice: &str) -> Result<(), UnitError> {
    let mgr = ManagerProxy::new(conn).await.map_err(systemd_err)?;
    match mgr.stop_unit(slice.to_owned(), "replace".into()).await {
        Ok(_) => Ok(()),
        Err(zbus::Error::MethodError(name, _, _))
            if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
        {
            Ok(())
        }
        Err(e) => Err(systemd_err(e)),
    }
}

/// Stop a finished turn's unit and clear its failed state so systemd forgets it.
pub async fn release_turn(conn: &zbus::Connection, turn: &TurnId) -> Result<(), UnitError> {
    let mgr = ManagerProxy::new(conn).await.map_err(systemd_err)?;
    let unit = turn.unit_name();
    match mgr.stop_unit(unit.clone(), "replace".into()).await {
        Ok(_) => {}
        Err(zbus::Error::MethodError(name, _, _))
            if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
        {
            return Ok(())
        }
        Err(e) => return Err(systemd_err(e)),
    }
    let _ = mgr.reset_failed_unit(unit).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]
    use super::*;
    use picortex_proto::bus::limits as L;

    fn acct() -> ChatAccount {
        let chat = ChatId::parse("4c6113a3-cb58-46e5-a29c-326444779872").unwrap();
        let tag = chat.tag();
        ChatAccount {
            user: tag.user_name(),
            uid: 990,
            gid: 990,
            home: tag.home(),
            tag,
        }
    }

    fn get<'a>(props: &'a [(&'static str, Prop)], k: &str) -> &'a Prop {
        &props
            .iter()
            .find(|(n, _)| *n == k)
            .unwrap_or_else(|| panic!("no {k}"))
            .1
    }

    #[test]
    fn turn_unit_runs_picortex_run_as_the_chat_user_in_its_slice() {
        let a = acct();
        let chat = ChatId::parse("4c6113a3-cb58-46e5-a29c-326444779872").unwrap();
        let turn = TurnId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let p = turn_properties(&a, &chat, &turn, &Limits::default(), &Host::default());
        assert_eq!(get(&p, "User"), &Prop::Str(a.user.clone()));
        assert_eq!(
            get(&p, "Slice"),
            &Prop::Str(format!("picortex-chat-{}.slice", a.tag))
        );
        assert_eq!(get(&p, "WorkingDirectory"), &Prop::Str(a.home.clone()));
        assert_eq!(
            get(&p, "ExecStart"),
            &Prop::Exec(vec![(
                RUN_BIN.into(),
                vec![RUN_BIN.into(), "--turn".into(), turn.to_string()],
                false
            )])
        );
        assert_eq!(get(&p, "ReadWritePaths"), &Prop::Strs(vec![a.home.clone()]));
        assert_eq!(
            get(&p, "BindPaths"),
            &Prop::Binds(vec![(a.home.clone(), a.home.clone(), false, MS_REC)])
        );
        assert_eq!(get(&p, "ProtectSystem"), &Prop::Str("strict".into()));
        assert_eq!(get(&p, "CapabilityBoundingSet"), &Prop::U64(0));
        assert_eq!(
            get(&p, "RuntimeMaxUSec"),
            &Prop::U64(L::RUNTIME_MAX_USEC_DEFAULT)
        );
        assert!(
            p.iter().all(|(k, _)| *k != "Environment"),
            "no environment: nothing secret may travel in unit properties"
        );
        assert!(
            p.iter().all(|(k, _)| *k != "MemoryDenyWriteExecute"),
            "the agent's JIT needs W+X memory"
        );
        // Every property name appears once, bar SystemCallFilter's allow-list and its exceptions.
        let mut names: Vec<_> = p.iter().map(|(k, _)| *k).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len() + 1, p.len());
        // The result channel is the gateway's stdout file alone: stderr goes to the journal
        // (unset, systemd would duplicate stdout onto it).
        assert_eq!(get(&p, "StandardError"), &Prop::Str("journal".into()));
        assert_eq!(get(&p, "LogRateLimitBurst"), &Prop::U32(500));
        assert_eq!(get(&p, "LogRateLimitIntervalUSec"), &Prop::U64(30_000_000));
    }

    #[test]
    fn grants_are_exactly_their_read_only_binds() {
        let mut none = Vec::new();
        grant_properties(&[], &mut none);
        assert!(
            none.is_empty(),
            "a turn without grants gets no bind for them"
        );
        let mut p = Vec::new();
        let g = vec![
            ("/s/t/0".to_owned(), "/var/lib/picortex/shared/0".to_owned()),
            ("/s/t/1".to_owned(), "/var/lib/picortex/shared/1".to_owned()),
        ];
        grant_properties(&g, &mut p);
        assert_eq!(
            p,
            vec![(
                "BindReadOnlyPaths",
                Prop::Binds(vec![
                    (
                        "/s/t/0".into(),
                        "/var/lib/picortex/shared/0".into(),
                        false,
                        0
                    ),
                    (
                        "/s/t/1".into(),
                        "/var/lib/picortex/shared/1".into(),
                        false,
                        0
                    ),
                ])
            )]
        );
    }

    #[test]
    fn io_uring_userfaultfd_and_keyrings_are_taken_out_of_the_allow_list() {
        let a = acct();
        let chat = ChatId::parse("abc").unwrap();
        let turn = TurnId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let p = turn_properties(&a, &chat, &turn, &Limits::default(), &Host::default());
        let filters: Vec<&Prop> = p
            .iter()
            .filter(|(k, _)| *k == "SystemCallFilter")
            .map(|(_, v)| v)
            .collect();
        // Order matters: the allow-list first, then what is taken out of it.
        assert_eq!(
            filters,
            [
                &Prop::FlagStrs(
                    true,
                    [
                        "@system-service",
                        "landlock_create_ruleset",
                        "landlock_add_rule",
                        "landlock_restrict_self"
                    ]
                    .map(String::from)
                    .to_vec()
                ),
                &Prop::FlagStrs(
                    false,
                    [
                        "io_uring_setup",
                        "io_uring_enter",
                        "io_uring_register",
                        "userfaultfd",
                        "add_key",
                        "request_key",
                        "keyctl"
                    ]
                    .map(String::from)
                    .to_vec()
                ),
            ]
        );
        assert_eq!(get(&p, "SystemCallErrorNumber"), &Prop::I32(1));
    }

    #[test]
    fn turn_sees_only_its_own_home_of_the_state_dir_and_no_bus() {
        let a = acct();
        let chat = ChatId::parse("4c6113a3-cb58-46e5-a29c-326444779872").unwrap();
        let turn = TurnId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let p = turn_properties(&a, &chat, &turn, &Limits::default(), &Host::default());
        assert_eq!(
            get(&p, "TemporaryFileSystem"),
            &Prop::Pairs(vec![
                ("/var/lib/picortex".into(), "ro".into()),
                ("/dev/shm".into(), DEV_SHM_OPTIONS.into()),
                ("/run".into(), "ro".into()),
                ("/sys/fs".into(), "ro".into()),
            ])
        );
        // Of /run, only picortex-egress's socket directory comes back; journald's sockets are
        // those of the turns' own journal, which systemd binds there.
        let Prop::Binds(binds) = get(&p, "BindReadOnlyPaths") else {
            panic!("BindReadOnlyPaths")
        };
        let run: Vec<_> = binds.iter().filter(|b| b.1.starts_with("/run")).collect();
        assert_eq!(run.len(), RUN_KEPT.len(), "{run:?}");
        assert!(run.iter().all(|b| b.0 == b.1 && b.2), "{run:?}");
        assert!(
            !run.iter().any(|b| b.1.starts_with("/run/systemd/journal")),
            "{run:?}"
        );
        assert_eq!(
            get(&p, "LogNamespace"),
            &Prop::Str(TURN_LOG_NAMESPACE.into())
        );
        assert_eq!(get(&p, "PrivateDevices"), &Prop::Bool(true));
        assert!(
            a.home.starts_with(&format!("{STATE_DIR}/")),
            "the home must lie under the hidden state dir"
        );
        let Prop::Strs(ro) = get(&p, "ReadOnlyPaths") else {
            panic!("ReadOnlyPaths")
        };
        for d in ["/tmp", "/var/tmp"] {
            assert!(ro.contains(&d.to_owned()), "{d} writable");
        }
        let Prop::Strs(gone) = get(&p, "InaccessiblePaths") else {
            panic!("InaccessiblePaths")
        };
        assert!(gone.contains(&"-/etc/picortex".to_owned()));
        assert!(
            gone.iter().all(|g| g.starts_with("-/")),
            "a missing path must not fail the turn"
        );
        assert_eq!(get(&p, "PrivateTmp"), &Prop::Bool(true));
        assert_eq!(get(&p, "ProtectProc"), &Prop::Str("invisible".into()));
    }

    #[test]
    fn a_turn_has_a_network_of_its_own_and_reaches_only_its_loopback() {
        let a = acct();
        let chat = ChatId::parse("abc").unwrap();
        let turn = TurnId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let p = turn_properties(&a, &chat, &turn, &Limits::default(), &Host::default());
        assert_eq!(get(&p, "PrivateNetwork"), &Prop::Bool(true));
        let v6_loop = std::net::Ipv6Addr::LOCALHOST.octets().to_vec();
        assert_eq!(
            get(&p, "IPAddressAllow"),
            &Prop::Ips(vec![(2, vec![127, 0, 0, 0], 8), (10, v6_loop, 128)])
        );
        assert_eq!(
            get(&p, "IPAddressDeny"),
            &Prop::Ips(vec![(2, vec![0, 0, 0, 0], 0), (10, vec![0; 16], 0)])
        );
        // Its way out, picortex-egress's socket, is kept in its otherwise empty /run.
        assert!(RUN_KEPT.contains(&picortex_proto::egress::SOCKET_DIR));
        assert!(picortex_proto::egress::SOCKET
            .starts_with(&format!("{}/", picortex_proto::egress::SOCKET_DIR)));
    }

    #[test]
    fn a_turn_sees_its_own_users_slice_and_agent_settings() {
        let a = acct();
        let chat = ChatId::parse("abc").unwrap();
        let turn = TurnId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let own = format!(
            "/sys/fs/cgroup/memory/picortex.slice/picortex-chat.slice/{}",
            a.tag.slice()
        );
        let host = Host {
            cgroups: Some(view::CgroupView {
                skeleton: "/v/cgroup".into(),
                own: vec![own.clone()],
            }),
            user_db: Some(("/v/passwd".into(), "/v/group".into())),
            agent_view: Some("/v/etc".into()),
        };
        let p = turn_properties(&a, &chat, &turn, &Limits::default(), &host);
        let run = RUN_KEPT
            .iter()
            .map(|p| ((*p).to_owned(), (*p).to_owned(), true, MS_REC));
        // The skeleton over the whole tree, then the chat's own slice back over it.
        assert_eq!(
            get(&p, "BindReadOnlyPaths"),
            &Prop::Binds(
                run.chain([
                    ("/v/passwd".into(), "/etc/passwd".into(), false, 0),
                    ("/v/group".into(), "/etc/group".into(), false, 0),
                    ("/v/cgroup".into(), "/sys/fs/cgroup".into(), false, 0),
                    (own.clone(), own, true, MS_REC),
                    ("/v/etc".into(), "/etc/picortex".into(), false, 0),
                ])
                .collect()
            )
        );
        // No credential of the helper's making: each is a mount in the host's namespace.
        assert!(p.iter().all(|(k, _)| *k != "SetCredential"));
        let Prop::Strs(gone) = get(&p, "InaccessiblePaths") else {
            panic!("InaccessiblePaths")
        };
        for g in ["-/etc/passwd-", "-/etc/group-", "-/etc/userdb"] {
            assert!(gone.contains(&g.to_owned()), "{g}");
        }
        // The view replaces the operator's configuration, not both at once.
        assert!(!gone.contains(&"-/etc/picortex".to_owned()));
        convert(&p).unwrap();
    }

    #[test]
    fn slices_carry_cpu_and_io_shares_a_cpu_quota_and_the_turns_device_policy() {
        let mut d = HashMap::new();
        d.insert(
            "CPUQuotaPerSecUSec".to_owned(),
            OwnedVariant::from(500_000u64),
        );
        d.insert("IOWeight".to_owned(), OwnedVariant::from(50u64));
        let l = Limits::from_dict(&d).unwrap();
        let p = slice_properties(&l);
        assert_eq!(get(&p, "CPUQuotaPerSecUSec"), &Prop::U64(500_000));
        assert_eq!(get(&p, "IOWeight"), &Prop::U64(50));
        assert_eq!(get(&p, "CPUWeight"), &Prop::U64(100));
        assert_eq!(get(&p, "DevicePolicy"), &Prop::Str("closed".into()));
        let Prop::Pairs(allowed) = get(&p, "DeviceAllow") else {
            panic!("DeviceAllow is a list of pairs");
        };
        assert!(allowed.contains(&("/dev/null".to_owned(), "rwm".to_owned())));
        assert_eq!(allowed.len(), TURN_DEVICES.len());
        let p = slice_properties(&Limits::default());
        assert_eq!(get(&p, "CPUQuotaPerSecUSec"), &Prop::U64(1_000_000));
        d.insert("CPUQuotaPerSecUSec".to_owned(), OwnedVariant::from(0u64));
        assert!(Limits::from_dict(&d).unwrap_err().contains("outside"));
    }

    #[test]
    fn all_properties_convert_to_variants() {
        let a = acct();
        let chat = ChatId::parse("abc").unwrap();
        let turn = TurnId::parse("0123456789abcdef0123456789abcdef").unwrap();
        convert(&turn_properties(
            &a,
            &chat,
            &turn,
            &Limits::default(),
            &Host::default(),
        ))
        .unwrap();
        convert(&slice_properties(&Limits::default())).unwrap();
    }
}
