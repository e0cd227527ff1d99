//! What the owner approved, carried out by the helper (SPEC C2, C3). The gateway names a source
//! chat and a path relative to its home; nothing else about it is trusted. Every source file is
//! opened beneath the source chat's home with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_XDEV)` (no `..`, no symlink anywhere on the way, no other mount), must be a regular
//! file within [`MAX_SHARED_FILE_BYTES`] (no directory, device, fifo or socket), and is read from
//! that descriptor only.
//!
//! A grant for one turn is a copy of the file, made for the turn and owned by the turn's user
//! (0400), in a root-only staging directory on the chats filesystem, bound read-only into that
//! turn's unit at [`shared_mount`]`(n)` (`BindReadOnlyPaths=`); ReleaseTurn deletes it. A copy
//! and not the file itself because the file is the other chat's user's, mode 0600: a bind mount
//! keeps owner and mode, and the turn's user could not read it. An import is a copy into the
//! destination chat's `inbox/` (see `inbox::deposit`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode};
use nix::unistd::{fchown, Gid, Uid};
use picortex_proto::consent::{check_relative_path, shared_mount, MAX_SHARED_FILE_BYTES};
use picortex_proto::ids::{ChatId, TurnId, CHATS_DIR};

use crate::inbox::{self, Deposited, InboxError};
use crate::users::{self, ChatAccount};

/// Root-only, on the chats filesystem: one directory per granted turn.
pub const STAGING: &str = ".picortex-grants";

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

impl From<InboxError> for ShareError {
    fn from(e: InboxError) -> Self {
        match e {
            InboxError::TooLarge(_) | InboxError::Unsafe(_) => ShareError::Refused(e.to_string()),
            e => ShareError::Failed(e.to_string()),
        }
    }
}

const DIR: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_RDONLY);

/// The provisioned account of `chat`; a chat never provisioned (or removed) has nothing to share.
pub fn account_of(chat: &ChatId) -> Result<ChatAccount, ShareError> {
    let tag = users::existing_tag(chat)
        .map_err(|e| ShareError::Failed(e.to_string()))?
        .ok_or_else(|| ShareError::Refused(format!("chat {chat} has no workspace")))?;
    users::account(&tag).map_err(|e| ShareError::Failed(e.to_string()))
}

/// Open `rel` beneath `acct`'s home for reading: see the module doc for what is refused.
pub fn open_beneath(acct: &ChatAccount, rel: &str) -> Result<(std::fs::File, u64), ShareError> {
    check_relative_path(rel).map_err(ShareError::Refused)?;
    let home = open(Path::new(&acct.home), DIR, Mode::empty())
        .map_err(|e| ShareError::Failed(format!("{}: {e}", acct.home)))?;
    let st = fstat(&home).map_err(|e| ShareError::Failed(e.to_string()))?;
    if st.st_uid != acct.uid {
        return Err(ShareError::Refused(format!(
            "{} is not owned by its chat's user",
            acct.home
        )));
    }
    // O_NONBLOCK: opening a fifo must not wait for a writer; it is refused just below.
    let how = OpenHow::new()
        .flags(
            OFlag::O_RDONLY
                | OFlag::O_CLOEXEC
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY,
        )
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let fd = match openat2(&home, rel, how) {
        Err(Errno::ENOSYS) => walk_beneath(&home, rel),
        r => r,
    }
    .map_err(|e| match e {
        Errno::ELOOP => ShareError::Refused(format!("{rel}: a symlink is on the way")),
        Errno::EXDEV => ShareError::Refused(format!("{rel}: leaves the workspace")),
        Errno::ENOENT => ShareError::Refused(format!("{rel}: no such file")),
        e => ShareError::Refused(format!("{rel}: {e}")),
    })?;
    let st = fstat(&fd).map_err(|e| ShareError::Failed(e.to_string()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(ShareError::Refused(format!(
            "{rel}: not a regular file (a directory, device, fifo or socket)"
        )));
    }
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if size > MAX_SHARED_FILE_BYTES {
        return Err(ShareError::Refused(format!(
            "{rel}: {size} bytes, more than the cap of {MAX_SHARED_FILE_BYTES}"
        )));
    }
    Ok((std::fs::File::from(fd), size))
}

/// What openat2 does here, for a kernel or seccomp filter without it: each component opened
/// with O_NOFOLLOW (directories with O_DIRECTORY), on the home's file system only. The path has
/// no `..` or `.` ([`check_relative_path`]), so nothing can climb out.
fn walk_beneath(home: &OwnedFd, rel: &str) -> nix::Result<OwnedFd> {
    let dev = fstat(home)?.st_dev;
    let mut comps = rel.split('/').peekable();
    let mut dir: Option<OwnedFd> = None;
    while let Some(c) = comps.next() {
        let parent = dir.as_ref().unwrap_or(home);
        let last = comps.peek().is_none();
        let flags = if last {
            OFlag::O_RDONLY
                | OFlag::O_CLOEXEC
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
        } else {
            DIR
        };
        let fd = openat(parent, c, flags, Mode::empty())?;
        if fstat(&fd)?.st_dev != dev {
            return Err(Errno::EXDEV);
        }
        if last {
            return Ok(fd);
        }
        dir = Some(fd);
    }
    Err(Errno::ENOENT)
}

/// Parse and check the gateway's grants: (source chat id, path relative to its home).
pub fn parse_grants(grants: &[(String, String)]) -> Result<Vec<(ChatId, String)>, String> {
    if grants.len() > picortex_proto::consent::MAX_GRANTS_PER_TURN {
        return Err(format!(
            "{} grants, more than {}",
            grants.len(),
            picortex_proto::consent::MAX_GRANTS_PER_TURN
        ));
    }
    grants
        .iter()
        .map(|(c, p)| {
            let chat = ChatId::parse(c).map_err(|e| e.to_string())?;
            check_relative_path(p)?;
            Ok((chat, p.clone()))
        })
        .collect()
}

/// `<CHATS_DIR>/.picortex-grants/<turn>`, root 0700, created fresh.
fn staging_dir(turn: &TurnId, create: bool) -> Result<Option<OwnedFd>, ShareError> {
    let fail = |w: &str, e: Errno| ShareError::Failed(format!("{CHATS_DIR}/{STAGING}{w}: {e}"));
    let chats = open(Path::new(CHATS_DIR), DIR, Mode::empty()).map_err(|e| fail("", e))?;
    let root_dir = |parent: &OwnedFd, name: &str| -> Result<Option<OwnedFd>, ShareError> {
        if create {
            match mkdirat(parent, name, Mode::S_IRWXU) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(fail(name, e)),
            }
        }
        let fd = match openat(parent, name, DIR, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if !create => return Ok(None),
            Err(e) => return Err(fail(name, e)),
        };
        let st = fstat(&fd).map_err(|e| fail(name, e))?;
        if st.st_uid != 0 || st.st_mode & 0o077 != 0 {
            return Err(ShareError::Failed(format!(
                "{CHATS_DIR}/{STAGING}: {name} is not root's alone (uid {} mode {:o})",
                st.st_uid,
                st.st_mode & 0o7777
            )));
        }
        Ok(Some(fd))
    };
    let Some(top) = root_dir(&chats, STAGING)? else {
        return Ok(None);
    };
    root_dir(&top, turn.as_str())
}

/// The staging path of grant `n` of `turn`.
pub fn staged_path(turn: &TurnId, n: usize) -> PathBuf {
    Path::new(CHATS_DIR)
        .join(STAGING)
        .join(turn.as_str())
        .join(n.to_string())
}

/// Copy each granted file for `turn`, run as `grantee`; returns (staged source, mount point)
/// pairs for BindReadOnlyPaths=. Any refusal refuses the whole turn.
pub fn stage_grants(
    turn: &TurnId,
    grantee: &ChatAccount,
    grants: &[(ChatId, String)],
) -> Result<Vec<(String, String)>, ShareError> {
    if grants.is_empty() {
        return Ok(Vec::new());
    }
    remove_staged(turn);
    let dir = staging_dir(turn, true)?
        .ok_or_else(|| ShareError::Failed("staging directory vanished".into()))?;
    let mut out = Vec::new();
    for (n, (chat, rel)) in grants.iter().enumerate() {
        let src = account_of(chat)?;
        let (mut file, _) = open_beneath(&src, rel)?;
        let name = n.to_string();
        let fd = openat(
            &dir,
            name.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(|e| ShareError::Failed(format!("staging {name}: {e}")))?;
        let mut out_file = std::fs::File::from(fd);
        inbox::copy_hashed(&mut file, &mut out_file, MAX_SHARED_FILE_BYTES)?;
        fchown(
            &out_file,
            Some(Uid::from_raw(grantee.uid)),
            Some(Gid::from_raw(grantee.gid)),
        )
        .map_err(|e| ShareError::Failed(format!("chown staged grant: {e}")))?;
        fchmod(&out_file, Mode::S_IRUSR)
            .map_err(|e| ShareError::Failed(format!("chmod staged grant: {e}")))?;
        out.push((staged_path(turn, n).display().to_string(), shared_mount(n)));
    }
    Ok(out)
}

/// Delete a turn's staged grants, if any (at ReleaseTurn, and before staging anew).
pub fn remove_staged(turn: &TurnId) {
    if let Ok(Some(_)) = staging_dir(turn, false) {
        // The directory is root's alone (checked above), so removing it by path is safe.
        let _ = std::fs::remove_dir_all(Path::new(CHATS_DIR).join(STAGING).join(turn.as_str()));
    }
}

/// Copy `rel` of `from`'s home into `to`'s `inbox/`.
pub fn import(from: &ChatAccount, rel: &str, to: &ChatAccount) -> Result<Deposited, ShareError> {
    let (mut file, _) = open_beneath(from, rel)?;
    Ok(inbox::deposit(
        Path::new(&to.home),
        to.uid,
        to.gid,
        rel,
        &mut file,
        MAX_SHARED_FILE_BYTES,
    )?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn acct(home: &Path) -> ChatAccount {
        ChatAccount {
            tag: picortex_proto::ids::ChatTag::parse("0123456789abcdef").unwrap(),
            user: "me".into(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            home: home.display().to_string(),
        }
    }

    #[test]
    fn only_plain_files_beneath_the_home_open() {
        let d = tempfile::tempdir().unwrap();
        let h = d.path();
        std::fs::create_dir(h.join("docs")).unwrap();
        std::fs::write(h.join("docs/plan.md"), "the plan").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", h.join("link")).unwrap();
        std::os::unix::fs::symlink("docs", h.join("dirlink")).unwrap();
        nix::unistd::mkfifo(&h.join("fifo"), Mode::S_IRWXU).unwrap();
        let a = acct(h);
        let (mut f, size) = open_beneath(&a, "docs/plan.md").unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).unwrap();
        assert_eq!((s.as_str(), size), ("the plan", 8));
        for bad in [
            "link",
            "dirlink/plan.md",
            "fifo",
            "docs",
            "../x",
            "/etc/passwd",
            "nope",
        ] {
            assert!(
                matches!(open_beneath(&a, bad), Err(ShareError::Refused(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn grants_are_checked_at_the_door() {
        let ok = vec![(
            "4c6113a3-cb58-46e5-a29c-326444779872".to_owned(),
            "a.txt".to_owned(),
        )];
        assert_eq!(parse_grants(&ok).unwrap().len(), 1);
        for bad in [
            vec![("x y".to_owned(), "a".to_owned())],
            vec![(ok[0].0.clone(), "../a".to_owned())],
            vec![ok[0].clone(); 9],
        ] {
            assert!(parse_grants(&bad).is_err());
        }
    }
}
