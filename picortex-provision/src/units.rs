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
use picortex_proto::ids::{ChatId, TurnId};
use picortex_proto::turn::MAX_REQUEST_BYTES;
use zbus::{Fd, OwnedVariant, Variant};
use zbus_systemd::systemd1::ManagerProxy;

use crate::egress::Egress;
pub use crate::limits::Limits;
use crate::users::ChatAccount;

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

/// The gateway's state directory: the database, the turn results and every chat's home. A turn
/// sees an empty read-only tmpfs there, with only its own home bound back in.
pub const STATE_DIR: &str = "/var/lib/picortex";

fn s(v: &str) -> Prop {
    Prop::Str(v.to_owned())
}

/// Addresses a turn may never reach, whatever the egress mode: the host itself, link-local
/// (cloud metadata lives at 169.254.169.254), and the private and shared ranges of the LAN.
pub fn denied_ranges() -> Vec<(i32, Vec<u8>, u32)> {
    const AF_INET: i32 = 2;
    const AF_INET6: i32 = 10;
    let mut v6_loop = vec![0u8; 16];
    if let Some(last) = v6_loop.last_mut() {
        *last = 1;
    }
    let mut fe80 = vec![0u8; 16];
    fe80.splice(0..2, [0xfe, 0x80]);
    let mut fc00 = vec![0u8; 16];
    fc00.splice(0..1, [0xfc]);
    vec![
        (AF_INET, vec![127, 0, 0, 0], 8),
        (AF_INET, vec![169, 254, 0, 0], 16),
        (AF_INET, vec![10, 0, 0, 0], 8),
        (AF_INET, vec![172, 16, 0, 0], 12),
        (AF_INET, vec![192, 168, 0, 0], 16),
        (AF_INET, vec![100, 64, 0, 0], 10),
        (AF_INET, vec![0, 0, 0, 0], 8),
        (AF_INET6, v6_loop, 128),
        (AF_INET6, fe80, 10),
        (AF_INET6, fc00, 7),
    ]
}

/// The transient service for one turn. Resource limits live on the chat's slice (see
/// `slice_properties`); this carries the sandbox, the runtime cap and the command.
pub fn turn_properties(
    acct: &ChatAccount,
    chat: &ChatId,
    turn: &TurnId,
    limits: &Limits,
    egress: &Egress,
) -> Vec<(&'static str, Prop)> {
    let mut props = base_turn_properties(acct, chat, turn, limits);
    if let Egress::Allowlist(allow) = egress {
        // Deny everything, then allow only the operator's ranges (systemd: allow wins over deny).
        for (k, p) in props.iter_mut() {
            if *k == "IPAddressDeny" {
                *p = Prop::Ips(vec![(2, vec![0, 0, 0, 0], 0), (10, vec![0; 16], 0)]);
            }
        }
        props.push(("IPAddressAllow", Prop::Ips(allow.clone())));
    }
    // The agent's API key (SPEC T2): systemd reads it as root and exposes it only inside this
    // unit, in $CREDENTIALS_DIRECTORY, where picortex-run points the agent's apiKeyHelper at it.
    if std::path::Path::new(API_KEY_PATH).is_file() {
        props.push((
            "LoadCredential",
            Prop::Pairs(vec![(
                API_KEY_CREDENTIAL.to_owned(),
                API_KEY_PATH.to_owned(),
            )]),
        ));
    }
    props
}

/// Where the operator puts the Anthropic API key (root, 0600).
pub const API_KEY_PATH: &str = "/etc/picortex/credentials/anthropic-api-key";
pub const API_KEY_CREDENTIAL: &str = "anthropic-api-key";

fn base_turn_properties(
    acct: &ChatAccount,
    chat: &ChatId,
    turn: &TurnId,
    limits: &Limits,
) -> Vec<(&'static str, Prop)> {
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
        (
            "TemporaryFileSystem",
            Prop::Pairs(vec![(STATE_DIR.to_owned(), "ro".to_owned())]),
        ),
        (
            "BindPaths",
            Prop::Binds(vec![(acct.home.clone(), acct.home.clone(), false, MS_REC)]),
        ),
        // /run: systemd 252 leaves it writable under ProtectSystem=strict once ProtectProc= is
        // set (its API-VFS /run entry escapes the read-only remount), and /run/lock is a 1777
        // tmpfs every chat could share files through. /var/tmp is the private one (PrivateTmp),
        // made read-only: the home is the one place a turn writes to that outlives it.
        (
            "ReadOnlyPaths",
            Prop::Strs(vec!["/run".to_owned(), "/var/tmp".to_owned()]),
        ),
        // No system bus: everything on it is polkit-checked, but systemd's unit list is
        // world-readable and names every chat's turns and slices, with their Linq chat ids in
        // LogExtraFields; and a turn has no business with any bus service. The helper's
        // registry and the gateway's credential sources are root-only already.
        (
            "InaccessiblePaths",
            Prop::Strs(vec![
                "-/run/dbus".to_owned(),
                "-/var/lib/picortex-provision".to_owned(),
                "-/etc/picortex/credentials".to_owned(),
            ]),
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
        (
            "SystemCallFilter",
            Prop::FlagStrs(true, vec!["@system-service".to_owned()]),
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
        ("IPAddressDeny", Prop::Ips(denied_ranges())),
        // Not MemoryDenyWriteExecute: the agent's JavaScript engine needs a JIT.
    ]
}

/// Per-chat resource limits, applied to the chat's slice so they cover every process of the
/// chat however many turns it runs.
pub fn slice_properties(limits: &Limits) -> Vec<(&'static str, Prop)> {
    vec![
        ("MemoryMax", Prop::U64(limits.memory_max)),
        ("MemorySwapMax", Prop::U64(0)),
        ("TasksMax", Prop::U64(limits.tasks_max)),
        ("CPUWeight", Prop::U64(limits.cpu_weight)),
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
    pub egress: &'a Egress,
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
        egress,
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
    let mut props =
        convert(&turn_properties(acct, chat, turn, limits, egress)).map_err(systemd_err)?;
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
        let p = turn_properties(&a, &chat, &turn, &Limits::default(), &Egress::Internet);
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
    }

    #[test]
    fn io_uring_userfaultfd_and_keyrings_are_taken_out_of_the_allow_list() {
        let a = acct();
        let chat = ChatId::parse("abc").unwrap();
        let turn = TurnId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let p = turn_properties(&a, &chat, &turn, &Limits::default(), &Egress::Internet);
        let filters: Vec<&Prop> = p
            .iter()
            .filter(|(k, _)| *k == "SystemCallFilter")
            .map(|(_, v)| v)
            .collect();
        // Order matters: the allow-list first, then what is taken out of it.
        assert_eq!(
            filters,
            [
                &Prop::FlagStrs(true, vec!["@system-service".into()]),
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
        let p = turn_properties(&a, &chat, &turn, &Limits::default(), &Egress::Internet);
        assert_eq!(
            get(&p, "TemporaryFileSystem"),
            &Prop::Pairs(vec![("/var/lib/picortex".into(), "ro".into())])
        );
        assert!(
            a.home.starts_with(&format!("{STATE_DIR}/")),
            "the home must lie under the hidden state dir"
        );
        let Prop::Strs(ro) = get(&p, "ReadOnlyPaths") else {
            panic!("ReadOnlyPaths")
        };
        assert!(ro.contains(&"/run".to_owned()) && ro.contains(&"/var/tmp".to_owned()));
        let Prop::Strs(gone) = get(&p, "InaccessiblePaths") else {
            panic!("InaccessiblePaths")
        };
        assert!(gone.contains(&"-/run/dbus".to_owned()));
        assert!(
            gone.iter().all(|g| g.starts_with("-/")),
            "a missing path must not fail the turn"
        );
        assert_eq!(get(&p, "PrivateTmp"), &Prop::Bool(true));
        assert_eq!(get(&p, "ProtectProc"), &Prop::Str("invisible".into()));
    }

    #[test]
    fn an_allowlist_denies_everything_else() {
        let a = acct();
        let chat = ChatId::parse("abc").unwrap();
        let turn = TurnId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let allow = vec![(2, vec![160, 79, 104, 0], 23)];
        let p = turn_properties(
            &a,
            &chat,
            &turn,
            &Limits::default(),
            &Egress::Allowlist(allow.clone()),
        );
        assert_eq!(
            get(&p, "IPAddressDeny"),
            &Prop::Ips(vec![(2, vec![0, 0, 0, 0], 0), (10, vec![0; 16], 0)])
        );
        assert_eq!(get(&p, "IPAddressAllow"), &Prop::Ips(allow));
        let p = turn_properties(&a, &chat, &turn, &Limits::default(), &Egress::Internet);
        assert!(p.iter().all(|(k, _)| *k != "IPAddressAllow"));
        assert_eq!(get(&p, "IPAddressDeny"), &Prop::Ips(denied_ranges()));
    }

    #[test]
    fn denied_ranges_cover_loopback_link_local_and_private() {
        let d = denied_ranges();
        for (fam, addr, len) in [
            (2, vec![127, 0, 0, 0], 8),
            (2, vec![169, 254, 0, 0], 16),
            (2, vec![10, 0, 0, 0], 8),
            (2, vec![192, 168, 0, 0], 16),
        ] {
            assert!(
                d.contains(&(fam, addr.clone(), len)),
                "{addr:?}/{len} missing"
            );
        }
        assert!(d
            .iter()
            .all(|(f, a, _)| (*f == 2 && a.len() == 4) || (*f == 10 && a.len() == 16)));
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
            &Egress::Internet,
        ))
        .unwrap();
        convert(&slice_properties(&Limits::default())).unwrap();
    }
}
