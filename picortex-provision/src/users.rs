//! Chat users and homes (SPEC P1, P5). One Unix user `chat-<tag>` and one home
//! `/var/lib/picortex/chats/<tag>` (0700, owned by that user) per chat id. The user is a systemd
//! user record in `/etc/userdb` (see `userdb`), never a line of `/etc/passwd`.
//!
//! The tag is the first 8 hex of sha256(chat id); a registry in the helper's own state directory
//! (`/var/lib/picortex-provision/chats/<tag>`, root-only) records which chat owns which tag, so a
//! collision is detected and resolved by taking more hex, and a user that exists without a
//! registry entry (not ours) is never adopted. The registry entry is written before the user, so
//! a helper killed midway leaves a state the next call completes.
//!
//! Homes are created through file descriptors (`openat` with `O_NOFOLLOW`, a subvolume made in
//! the opened parent, `fchown`), never by path, so a chat user cannot redirect the helper with a
//! symlink. Each home is a btrfs subvolume with the operator's disk quota (see disk.rs), set on
//! every call, so a changed limit reaches a chat at its next turn.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{fchmod, fstat, Mode};
use nix::unistd::{fchown, Gid, Uid, User};
use picortex_proto::ids::{ChatId, ChatTag, CHATS_DIR, CHAT_ID_MAX, CHAT_ID_MIN};

use crate::disk::DiskQuota;

const REGISTRY_DIR: &str = "/var/lib/picortex-provision/chats";
const GATEWAY_USER: &str = "picortex";

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("no free user name for this chat: tags of 8 to 16 hex characters are all taken")]
    Exhausted,
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Sys { path: String, source: nix::Error },
    #[error("creating user {user} failed: {detail}")]
    Create { user: String, detail: String },
    #[error("{0}")]
    Unsafe(String),
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
}

fn io(path: impl Into<String>) -> impl FnOnce(std::io::Error) -> UserError {
    let path = path.into();
    move |source| UserError::Io { path, source }
}
fn sys(path: impl Into<String>) -> impl FnOnce(nix::Error) -> UserError {
    let path = path.into();
    move |source| UserError::Sys { path, source }
}

#[derive(Debug, Clone)]
pub struct ChatAccount {
    pub tag: ChatTag,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// What the registry says about a tag.
enum Claim {
    Ours,
    /// Ours, but the chat was removed (RemoveChat): only EnsureChat brings it back, never a turn.
    Removed,
    Theirs,
    Free,
}

/// The line RemoveChat appends to a chat's registry entry.
const REMOVED: &str = "removed";

fn registry_path(tag: &ChatTag) -> PathBuf {
    Path::new(REGISTRY_DIR).join(tag.as_str())
}

fn claim_of(tag: &ChatTag, chat: &ChatId) -> Result<Claim, UserError> {
    let p = registry_path(tag);
    match std::fs::read_to_string(&p) {
        Ok(s) => {
            let mut lines = s.lines();
            match (lines.next(), lines.next()) {
                (Some(c), None) if c == chat.as_str() => Ok(Claim::Ours),
                (Some(c), Some(REMOVED)) if c == chat.as_str() => Ok(Claim::Removed),
                _ => Ok(Claim::Theirs),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Claim::Free),
        Err(e) => Err(io(p.display().to_string())(e)),
    }
}

fn write_claim(tag: &ChatTag, chat: &ChatId) -> Result<(), UserError> {
    std::fs::create_dir_all(REGISTRY_DIR).map_err(io(REGISTRY_DIR))?;
    let p = registry_path(tag);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc_o_nofollow())
        .open(&p)
        .map_err(io(p.display().to_string()))?;
    writeln!(f, "{chat}")
        .and_then(|_| f.sync_all())
        .map_err(io(p.display().to_string()))
}

fn libc_o_nofollow() -> i32 {
    OFlag::O_NOFOLLOW.bits()
}

/// Find the tag this chat owns, claiming one if it has none yet.
pub fn resolve_tag(chat: &ChatId) -> Result<ChatTag, UserError> {
    for len in 8..=16 {
        let tag = chat.tag_with_len(len);
        match claim_of(&tag, chat)? {
            Claim::Ours => return Ok(tag),
            Claim::Removed => {
                // An explicit EnsureChat brings a removed chat back under its old tag.
                let p = registry_path(&tag);
                std::fs::remove_file(&p).map_err(io(p.display().to_string()))?;
                write_claim(&tag, chat)?;
                return Ok(tag);
            }
            Claim::Theirs => {
                tracing::warn!(chat = %chat, tag = %tag, "tag collision with another chat; trying a longer tag");
            }
            Claim::Free => {
                if User::from_name(&tag.user_name())
                    .map_err(sys(tag.user_name()))?
                    .is_some()
                {
                    tracing::warn!(chat = %chat, user = %tag.user_name(),
                        "user exists but is not registered to any chat; not adopting it, trying a longer tag");
                    continue;
                }
                write_claim(&tag, chat)?;
                crate::failpoint::hit("ensure-after-claim");
                return Ok(tag);
            }
        }
    }
    Err(UserError::Exhausted)
}

/// Record in the chat's registry entry that RemoveChat deleted it: from now on only EnsureChat
/// provisions it again; StartTurn finds it unprovisioned.
pub fn mark_removed(tag: &ChatTag) -> Result<(), UserError> {
    let p = registry_path(tag);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc_o_nofollow())
        .open(&p)
        .map_err(io(p.display().to_string()))?;
    writeln!(f, "{REMOVED}")
        .and_then(|_| f.sync_all())
        .map_err(io(p.display().to_string()))
}

/// The tag a chat already owns (and was not removed from), without claiming one.
pub fn existing_tag(chat: &ChatId) -> Result<Option<ChatTag>, UserError> {
    for len in 8..=16 {
        let tag = chat.tag_with_len(len);
        if let Claim::Ours = claim_of(&tag, chat)? {
            return Ok(Some(tag));
        }
    }
    Ok(None)
}

/// The account of a provisioned chat, without creating anything.
pub fn account(tag: &ChatTag) -> Result<ChatAccount, UserError> {
    let name = tag.user_name();
    let user = User::from_name(&name)
        .map_err(sys(name.clone()))?
        .ok_or_else(|| UserError::Unsafe(format!("user {name} does not exist")))?;
    if user.dir != Path::new(&tag.home()) {
        return Err(UserError::Unsafe(format!(
            "user {name} has home {}, not {}",
            user.dir.display(),
            tag.home()
        )));
    }
    Ok(ChatAccount {
        user: name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: tag.home(),
        tag: tag.clone(),
    })
}

/// Create or repair the chat's user and home, and set the home's disk quota. Idempotent.
/// Refuses before creating anything when the chats filesystem cannot hold a quota.
/// `config`: the operator's configuration of this call (`config::read`).
pub fn ensure(chat: &ChatId, config: &str) -> Result<(ChatAccount, DiskQuota), UserError> {
    let quota = crate::disk::parse(config)?;
    let chats = open_trusted_dir(CHATS_DIR)?;
    crate::disk::check_chats_fs(&chats, CHATS_DIR)?;
    // Traversable, not listable: a turn must not learn which other chats exist. A fresh
    // filesystem's root comes 0755.
    let st = fstat(&chats).map_err(sys(CHATS_DIR))?;
    if st.st_mode & 0o777 != 0o711 {
        fchmod(&chats, Mode::from_bits_truncate(0o711)).map_err(sys(CHATS_DIR))?;
    }
    let tag = resolve_tag(chat)?;
    let name = tag.user_name();
    let user = match User::from_name(&name).map_err(sys(name.clone()))? {
        Some(u) => u,
        None => {
            crate::userdb::create(&tag, chat_uid(&tag)?)?;
            User::from_name(&name)
                .map_err(sys(name.clone()))?
                .ok_or_else(|| UserError::Create {
                    user: name.clone(),
                    detail: format!(
                        "its record is in {} but the system does not see it: /etc/nsswitch.conf \
                         must list `systemd` for passwd and group (package libnss-systemd)",
                        crate::userdb::USERDB_DIR
                    ),
                })?
        }
    };
    if user.dir != Path::new(&tag.home()) {
        return Err(UserError::Unsafe(format!(
            "user {name} has home {} instead of {}; refusing to touch it",
            user.dir.display(),
            tag.home()
        )));
    }
    let had_home = Path::new(&tag.home()).exists();
    make_home(&chats, &tag, user.uid, user.gid, quota)?;
    let acct = ChatAccount {
        user: name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: tag.home(),
        tag,
    };
    if had_home && crate::archive::latest_archive(&acct.tag).is_some() {
        // A live archive beside a home: an archive was cut short after its tar was complete
        // (the home may be half emptied). The archive is the truth: finish emptying, restore.
        tracing::warn!(chat = %chat, user = %acct.user, "an archive of this chat was interrupted; restoring from it");
        crate::archive::empty_home(&acct)?;
    }
    if !had_home || crate::archive::latest_archive(&acct.tag).is_some() {
        if let Some(from) = crate::archive::restore_if_archived(&acct)? {
            tracing::info!(chat = %chat, user = %acct.user, archive = %from.display(), "restored archived chat");
        }
    }
    Ok((acct, quota))
}

/// The uid a chat's user gets: derived from its tag, so a user deleted and created again (or
/// restored on another machine) gets the same uid and finds its home still its own; the next
/// free one when another user holds it.
fn chat_uid(tag: &ChatTag) -> Result<u32, UserError> {
    let span = CHAT_ID_MAX - CHAT_ID_MIN + 1;
    let seed = tag
        .as_str()
        .get(..8)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0)
        % span;
    for i in 0..span.min(4096) {
        let uid = CHAT_ID_MIN + (seed + i) % span;
        let taken = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map_err(sys(format!("uid {uid}")))?
            .is_some()
            || nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(uid))
                .map_err(sys(format!("gid {uid}")))?
                .is_some();
        if !taken {
            return Ok(uid);
        }
    }
    Err(UserError::Exhausted)
}

/// Open a directory path component by component without following symlinks. Every component
/// must be owned by root or by the gateway user and writable by nobody else, and the last one
/// (the chats directory) by root alone: the gateway owns its state directory, so it could swap a
/// `chats` of its own in, and this refuses that.
fn open_trusted_dir(path: &str) -> Result<OwnedFd, UserError> {
    let gateway_uid = User::from_name(GATEWAY_USER)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let mut fd = open("/", flags, Mode::empty()).map_err(sys("/"))?;
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (i, comp) in comps.iter().enumerate() {
        if *comp == ".." || *comp == "." {
            return Err(UserError::Unsafe(format!("{path}: relative component")));
        }
        let next =
            openat(&fd, *comp, flags, Mode::empty()).map_err(sys(format!("{path} ({comp})")))?;
        let st = fstat(&next).map_err(sys(path.to_owned()))?;
        let last = i + 1 == comps.len();
        let owner_ok = st.st_uid == 0 || (!last && Some(st.st_uid) == gateway_uid);
        if !owner_ok || st.st_mode & 0o022 != 0 {
            return Err(UserError::Unsafe(format!(
                "{path}: {comp} must be owned by root{} and writable only by its owner (it is uid {} mode {:o}); see tmpfiles.d/picortex.conf",
                if last { "" } else { " or picortex" },
                st.st_uid,
                st.st_mode & 0o7777
            )));
        }
        fd = next;
    }
    Ok(fd)
}

/// The home as a subvolume of its own in `parent` (the chats directory), owned by the chat's
/// user, mode 0700, with its quota.
fn make_home(
    parent: &OwnedFd,
    tag: &ChatTag,
    uid: Uid,
    gid: Gid,
    quota: DiskQuota,
) -> Result<(), UserError> {
    let name = tag.as_str();
    match crate::disk::create_subvolume(parent, name) {
        Ok(()) | Err(nix::Error::EEXIST) => {}
        Err(e) => return Err(sys(tag.home())(e)),
    }
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let home = openat(parent, name, flags, Mode::empty()).map_err(sys(tag.home()))?;
    let st = fstat(&home).map_err(sys(tag.home()))?;
    if st.st_uid != 0 && st.st_uid != uid.as_raw() {
        return Err(UserError::Unsafe(format!(
            "{} is owned by uid {}, not {}",
            tag.home(),
            st.st_uid,
            uid
        )));
    }
    fchown(&home, Some(uid), Some(gid)).map_err(sys(tag.home()))?;
    fchmod(&home, Mode::S_IRWXU).map_err(sys(tag.home()))?;
    crate::disk::apply(&home, &tag.home(), quota)?;
    Ok(())
}
