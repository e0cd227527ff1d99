//! Writing a file into a chat's `inbox/` safely (SPEC C3, M1): the one way the helper puts bytes
//! into a home it does not own. The chat's user controls everything in the home, so every step
//! works on descriptors and never follows a name the user could have planted: `inbox` is opened
//! with O_NOFOLLOW|O_DIRECTORY (created 0700 and given to the user when missing), the file is
//! created with O_EXCL|O_NOFOLLOW under a sanitised name (suffixed on collision, never
//! overwriting), handed to the user and made 0600 before a byte is written, and the copy stops
//! at `cap` (a partial file is removed). The caller supplies the bytes as a reader.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};
use sha2::{Digest, Sha256};

pub const INBOX_DIR: &str = "inbox";
/// The longest file name kept from a hint, in bytes (suffix included).
const MAX_NAME: usize = 100;
/// How many suffixed names are tried before giving up.
const MAX_TRIES: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposited {
    /// Relative to the home: `inbox/<name>`.
    pub rel_path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("{0}")]
    Unsafe(String),
    #[error("the file is larger than the cap of {0} bytes")]
    TooLarge(u64),
    #[error("{what}: {source}")]
    Sys { what: String, source: Errno },
    #[error("copying: {0}")]
    Io(#[from] std::io::Error),
}

fn sys(what: impl Into<String>) -> impl FnOnce(Errno) -> InboxError {
    let what = what.into();
    move |source| InboxError::Sys { what, source }
}

const DIR: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_RDONLY);

/// A file name from a hint: its last component, only `[A-Za-z0-9._-]` (others become `_`), no
/// leading dot, at most [`MAX_NAME`] bytes; `file` when nothing is left.
pub fn sanitize(hint: &str) -> String {
    let last = hint.rsplit('/').next().unwrap_or("");
    let mut s: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    while s.starts_with('.') {
        s.remove(0);
    }
    s.truncate(MAX_NAME - 8);
    if s.is_empty() || s.chars().all(|c| c == '_') {
        "file".into()
    } else {
        s
    }
}

/// The n-th candidate: `name`, then `stem-1.ext`, `stem-2.ext`, …
fn candidate(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{n}.{ext}"),
        _ => format!("{name}-{n}"),
    }
}

/// The chat's `inbox/`, opened without following anything, created (0700, the user's) if
/// missing. `home` must be the user's own directory.
fn open_inbox(home: &Path, uid: u32, gid: u32) -> Result<OwnedFd, InboxError> {
    let h = open(home, DIR, Mode::empty()).map_err(sys(home.display().to_string()))?;
    let st = fstat(&h).map_err(sys(home.display().to_string()))?;
    if st.st_uid != uid {
        return Err(InboxError::Unsafe(format!(
            "{} is owned by uid {}, not the chat's {uid}",
            home.display(),
            st.st_uid
        )));
    }
    let fd = match openat(&h, INBOX_DIR, DIR, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            match mkdirat(&h, INBOX_DIR, Mode::S_IRWXU) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(sys("mkdir inbox")(e)),
            }
            let fd = openat(&h, INBOX_DIR, DIR, Mode::empty()).map_err(sys("inbox"))?;
            let st = fstat(&fd).map_err(sys("inbox"))?;
            if st.st_uid == 0 {
                // Ours, just made: the user's from now on.
                fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                    .map_err(sys("chown inbox"))?;
                fchmod(&fd, Mode::S_IRWXU).map_err(sys("chmod inbox"))?;
            }
            fd
        }
        Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
            return Err(InboxError::Unsafe(
                "inbox is a symlink or not a directory; refusing to write through it".into(),
            ))
        }
        Err(e) => return Err(sys("inbox")(e)),
    };
    let st = fstat(&fd).map_err(sys("inbox"))?;
    if st.st_uid != uid {
        return Err(InboxError::Unsafe(format!(
            "inbox is owned by uid {}, not the chat's {uid}",
            st.st_uid
        )));
    }
    Ok(fd)
}

/// Copy `src` (at most `cap` bytes) into `home/inbox/` as a new file of the user's, mode 0600.
pub fn deposit(
    home: &Path,
    uid: u32,
    gid: u32,
    name_hint: &str,
    src: &mut dyn Read,
    cap: u64,
) -> Result<Deposited, InboxError> {
    let dir = open_inbox(home, uid, gid)?;
    let base = sanitize(name_hint);
    let create =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut made = None;
    for n in 0..MAX_TRIES {
        let name = candidate(&base, n);
        match openat(&dir, name.as_str(), create, Mode::S_IRUSR | Mode::S_IWUSR) {
            Ok(fd) => {
                made = Some((name, fd));
                break;
            }
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(sys(format!("inbox/{name}"))(e)),
        }
    }
    let (name, fd) = made.ok_or_else(|| {
        InboxError::Unsafe(format!(
            "{MAX_TRIES} files named like {base} already in inbox"
        ))
    })?;
    let remove = |e: InboxError| {
        let _ = unlinkat(&dir, name.as_str(), UnlinkatFlags::NoRemoveDir);
        e
    };
    fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(sys("chown"))
        .map_err(remove)?;
    fchmod(&fd, Mode::S_IRUSR | Mode::S_IWUSR)
        .map_err(sys("chmod"))
        .map_err(remove)?;
    let mut out = std::fs::File::from(fd);
    let (sha256, size) = copy_hashed(src, &mut out, cap).map_err(remove)?;
    out.sync_all().map_err(InboxError::Io).map_err(remove)?;
    Ok(Deposited {
        rel_path: Path::new(INBOX_DIR).join(&name),
        sha256,
        size,
    })
}

/// Copy at most `cap` bytes, hashing them; more than `cap` is an error.
pub fn copy_hashed(
    src: &mut dyn Read,
    out: &mut dyn Write,
    cap: u64,
) -> Result<(String, u64), InboxError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut size = 0u64;
    let mut limited = src.take(cap.saturating_add(1));
    loop {
        let n = limited.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > cap {
            return Err(InboxError::TooLarge(cap));
        }
        let chunk = buf.get(..n).unwrap_or_default();
        h.update(chunk);
        out.write_all(chunk)?;
    }
    Ok((hex::encode(h.finalize()), size))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn me() -> (u32, u32) {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(sanitize("../../etc/passwd"), "passwd");
        assert_eq!(sanitize(".bashrc"), "bashrc");
        assert_eq!(sanitize("a b;c.txt"), "a_b_c.txt");
        assert_eq!(sanitize(""), "file");
        assert_eq!(sanitize("///"), "file");
        assert_eq!(sanitize("ééé"), "file");
        assert!(sanitize(&"x".repeat(500)).len() <= MAX_NAME);
        assert_eq!(candidate("a.txt", 2), "a-2.txt");
        assert_eq!(candidate("a", 1), "a-1");
    }

    #[test]
    fn deposits_never_overwrite_and_keep_to_the_cap() {
        let d = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let a = deposit(d.path(), uid, gid, "notes.txt", &mut &b"hello"[..], 100).unwrap();
        assert_eq!(a.rel_path, Path::new("inbox/notes.txt"));
        assert_eq!(a.size, 5);
        assert_eq!(
            a.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let b = deposit(d.path(), uid, gid, "notes.txt", &mut &b"again"[..], 100).unwrap();
        assert_eq!(b.rel_path, Path::new("inbox/notes-1.txt"));
        assert_eq!(
            std::fs::read(d.path().join("inbox/notes.txt")).unwrap(),
            b"hello"
        );
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(d.path().join("inbox/notes.txt")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        let big = [0u8; 101];
        assert!(matches!(
            deposit(d.path(), uid, gid, "big", &mut &big[..], 100),
            Err(InboxError::TooLarge(100))
        ));
        assert!(!d.path().join("inbox/big").exists(), "partial file removed");
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), d.path().join("inbox")).unwrap();
        assert!(matches!(
            deposit(d.path(), uid, gid, "x", &mut &b"x"[..], 10),
            Err(InboxError::Unsafe(_))
        ));
        std::fs::remove_file(d.path().join("inbox")).unwrap();
        std::fs::create_dir(d.path().join("inbox")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("t"), d.path().join("inbox/x")).unwrap();
        let r = deposit(d.path(), uid, gid, "x", &mut &b"x"[..], 10).unwrap();
        assert_eq!(r.rel_path, Path::new("inbox/x-1"));
        assert!(!elsewhere.path().join("t").exists());
    }
}
