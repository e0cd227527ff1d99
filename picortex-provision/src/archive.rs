//! Chat lifecycle (SPEC P5): archive (home tarred into the helper's state directory, home
//! removed, user locked; the slice and its limits stay), restore (on the next turn, transparently:
//! `users::ensure` calls `restore_if_archived`), and remove (archive, then delete the user).
//!
//! Everything that reads or writes inside a chat's home runs *as the chat user* (`setpriv` to its
//! uid/gid, no groups, no new privileges), so a home full of hostile symlinks can make tar do
//! nothing the chat user could not do itself. Only the archive file, which the chat never
//! touches, is opened by root.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use picortex_proto::ids::ChatTag;

use crate::users::{ChatAccount, UserError};

const ARCHIVE_DIR: &str = "/var/lib/picortex-provision/archives";
const SETPRIV: &str = "/usr/bin/setpriv";
const TAR: &str = "/usr/bin/tar";
const USERMOD: &str = "/usr/sbin/usermod";
const USERDEL: &str = "/usr/sbin/userdel";
const DU: &str = "/usr/bin/du";

/// The most a home may hold, on disk, to be archived: the archive is about this size.
pub const ARCHIVE_MAX_REAL: u64 = 8 << 30;
/// The most a home's files may add up to by their apparent sizes: a sparse file of terabytes is
/// tiny on disk, but tar must still walk it, and a home like that is a hostile one.
pub const ARCHIVE_MAX_APPARENT: u64 = 64 << 30;

/// Whether a home of these sizes may be archived; the refusal says which limit and by how much.
pub fn check_size(real: u64, apparent: u64) -> Result<(), String> {
    let gib = |n: u64| format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64);
    if real > ARCHIVE_MAX_REAL {
        return Err(format!(
            "the home holds {} on disk, more than the {} an archive may take; \
             not archived, nothing removed",
            gib(real),
            gib(ARCHIVE_MAX_REAL)
        ));
    }
    if apparent > ARCHIVE_MAX_APPARENT {
        return Err(format!(
            "the home's files add up to {} by their apparent sizes (sparse files), more than \
             {}; not archived, nothing removed",
            gib(apparent),
            gib(ARCHIVE_MAX_APPARENT)
        ));
    }
    Ok(())
}

/// `du -s` of the home as the chat user, on disk or by apparent size, in bytes.
fn du(acct: &ChatAccount, apparent: bool) -> Result<u64, UserError> {
    let mut c = as_user(acct, DU);
    // Not -x: on an overlay a file's st_dev is its layer's, not the directory's, and -x would
    // skip every file (a chat cannot mount anything into its home to escape the count).
    c.args(["-s", "-B1"]);
    if apparent {
        c.arg("--apparent-size");
    }
    c.arg(&acct.home).current_dir("/");
    let out = c.stdin(Stdio::null()).output().map_err(io(DU))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next().and_then(|n| n.parse().ok()) {
        Some(n) if out.status.success() => Ok(n),
        _ => Err(UserError::Unsafe(format!(
            "du of {} failed: {}",
            acct.home,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

fn io(path: impl Into<String>) -> impl FnOnce(std::io::Error) -> UserError {
    let path = path.into();
    move |source| UserError::Io { path, source }
}

/// A command with a clean environment, as root.
fn root_cmd(bin: &str) -> Command {
    let mut c = Command::new(bin);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C");
    c
}

/// A command run as the chat user, in its home.
fn as_user(acct: &ChatAccount, bin: &str) -> Command {
    let mut c = root_cmd(SETPRIV);
    c.args([
        &format!("--reuid={}", acct.uid),
        &format!("--regid={}", acct.gid),
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--",
        bin,
    ]);
    c
}

fn run(mut c: Command, what: &str) -> Result<(), UserError> {
    let out = c.stdin(Stdio::null()).output().map_err(io(what))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(UserError::Unsafe(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The newest live archive of a chat, if any: `<tag>-<unix ms>.tar`.
pub fn latest_archive(tag: &ChatTag) -> Option<PathBuf> {
    let prefix = format!("{}-", tag.as_str());
    let mut best: Option<(u128, PathBuf)> = None;
    for e in std::fs::read_dir(ARCHIVE_DIR).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(ts) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".tar"))
            .and_then(|t| t.parse::<u128>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| ts > *b) {
            best = Some((ts, e.path()));
        }
    }
    best.map(|(_, p)| p)
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Tar the home into the state directory, remove it, lock the user. Returns the archive path.
pub fn archive(acct: &ChatAccount) -> Result<PathBuf, UserError> {
    let home = Path::new(&acct.home);
    if !home.exists() {
        return latest_archive(&acct.tag)
            .ok_or_else(|| UserError::Unsafe(format!("{} has no home and no archive", acct.user)));
    }
    // Measured first: root writes the archive, and a home must not make it write more than the
    // home really holds (ENOSPC for everyone else).
    check_size(du(acct, false)?, du(acct, true)?).map_err(UserError::Unsafe)?;
    std::fs::create_dir_all(ARCHIVE_DIR).map_err(io(ARCHIVE_DIR))?;
    // Written as .partial and renamed once complete and synced: a live `<tag>-<ms>.tar` always
    // holds a whole home, so a helper killed at any point leaves either the home or an archive
    // that `users::ensure` restores from (see `empty_home`).
    let path = PathBuf::from(format!("{ARCHIVE_DIR}/{}-{}.tar", acct.tag, now_ms()));
    let partial = path.with_extension("tar.partial");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&partial)
        .map_err(io(partial.display().to_string()))?;
    // --sparse stores holes as holes. The archive is copied from tar's stdout with a cap, should
    // the home hold more than was measured (it cannot grow, the chat's units are stopped, but
    // the archive is root's to write).
    let mut c = as_user(acct, TAR);
    c.args([
        "--create",
        "--sparse",
        "--file=-",
        "--numeric-owner",
        "--one-file-system",
        "-C",
        &acct.home,
        ".",
    ]);
    c.current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(io(TAR))?;
    // tar's complaints are read beside the copy, so a full stderr pipe cannot stall it.
    let errs = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::Read::take(&mut e, 64 << 10), &mut v);
            let _ = std::io::copy(&mut e, &mut std::io::sink());
            v
        })
    });
    let cap = ARCHIVE_MAX_REAL + (ARCHIVE_MAX_REAL >> 4);
    let copied = match child.stdout.take() {
        Some(out) => {
            let mut w = std::io::BufWriter::new(file.try_clone().map_err(io("archive"))?);
            let n = std::io::copy(&mut std::io::Read::take(out, cap + 1), &mut w);
            n.and_then(|n| std::io::Write::flush(&mut w).map(|_| n))
        }
        None => Ok(0),
    };
    if !matches!(copied, Ok(n) if n <= cap) {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&partial);
        return Err(UserError::Unsafe(format!(
            "archive of {} stopped: {}",
            acct.home,
            copied.map_or_else(|e| e.to_string(), |_| format!("larger than {cap} bytes"))
        )));
    }
    let status = child.wait().map_err(io(TAR))?;
    let stderr = errs.and_then(|t| t.join().ok()).unwrap_or_default();
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(UserError::Unsafe(format!(
            "tar of {} failed: {}",
            acct.home,
            String::from_utf8_lossy(&stderr).trim()
        )));
    }
    file.sync_all().map_err(io(partial.display().to_string()))?;
    std::fs::rename(&partial, &path).map_err(io(path.display().to_string()))?;
    File::open(ARCHIVE_DIR)
        .and_then(|d| d.sync_all())
        .map_err(io(ARCHIVE_DIR))?;
    crate::failpoint::hit("archive-after-tar");
    empty_home(acct)?;
    crate::failpoint::hit("archive-after-empty");
    std::fs::remove_dir(home).map_err(io(acct.home.clone()))?;
    // A user record (see userdb) is locked for good (no password, no login shell); a user of an
    // older picortex is a line of /etc/passwd and /etc/shadow, locked while archived.
    if !crate::userdb::exists(&acct.tag) {
        let mut lock = root_cmd(USERMOD);
        lock.args(["--lock", "--expiredate", "1", &acct.user]);
        run(lock, "usermod --lock")?;
    }
    // Its views (the agent's credential among them) are made again at its next turn.
    crate::view::forget(&acct.tag)?;
    Ok(path)
}

/// Empty the home as the user (it owns everything in it); the directory itself stays.
pub fn empty_home(acct: &ChatAccount) -> Result<(), UserError> {
    let mut chmod = as_user(acct, "/usr/bin/chmod");
    chmod.args(["-R", "u+rwX", &acct.home]).current_dir("/");
    run(chmod, "chmod of the home")?;
    let mut find = as_user(acct, "/usr/bin/find");
    find.args([&acct.home, "-mindepth", "1", "-delete"])
        .current_dir("/");
    run(find, "emptying the home")
}

/// Called with the home freshly (re)created and empty: if the chat was archived, unpack its
/// newest archive into it as the chat user and unlock the user. Returns whether it restored.
pub fn restore_if_archived(acct: &ChatAccount) -> Result<Option<PathBuf>, UserError> {
    let Some(path) = latest_archive(&acct.tag) else {
        return Ok(None);
    };
    let file = File::open(&path).map_err(io(path.display().to_string()))?;
    let mut c = as_user(acct, TAR);
    c.args([
        "--extract",
        "--file=-",
        "--no-same-owner",
        "--delay-directory-restore",
        "-C",
        &acct.home,
    ]);
    let out = c
        .current_dir("/")
        .stdin(Stdio::from(file))
        .output()
        .map_err(io(TAR))?;
    if !out.status.success() {
        return Err(UserError::Unsafe(format!(
            "restoring {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if !crate::userdb::exists(&acct.tag) {
        let mut unlock = root_cmd(USERMOD);
        unlock.args(["--unlock", "--expiredate", "", &acct.user]);
        run(unlock, "usermod --unlock")?;
    }
    // Keep it for the record, out of the way of the next restore.
    let done = path.with_extension("tar.restored");
    std::fs::rename(&path, &done).map_err(io(path.display().to_string()))?;
    Ok(Some(done))
}

/// Archive (if there is anything to archive), then delete the user. The archive is kept, renamed
/// so it is never restored: a chat that writes again starts afresh.
pub fn remove(acct: &ChatAccount) -> Result<Option<PathBuf>, UserError> {
    let archived = if Path::new(&acct.home).exists() {
        Some(archive(acct)?)
    } else {
        latest_archive(&acct.tag)
    };
    // A user record (see userdb); a user of an older picortex is a line of /etc/passwd.
    if !crate::userdb::remove(&acct.tag, acct.uid)? {
        let mut del = root_cmd(USERDEL);
        del.arg(&acct.user);
        run(del, "userdel")?;
    }
    // Before anything else can look: a turn must not bring the user back.
    crate::users::mark_removed(&acct.tag)?;
    crate::view::forget(&acct.tag)?;
    let kept = match archived {
        Some(p) => {
            let removed = p.with_extension("tar.removed");
            std::fs::rename(&p, &removed).map_err(io(p.display().to_string()))?;
            Some(removed)
        }
        None => None,
    };
    Ok(kept)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn homes_too_big_on_disk_or_by_apparent_size_are_refused() {
        assert!(check_size(1 << 20, 1 << 20).is_ok());
        assert!(check_size(ARCHIVE_MAX_REAL, ARCHIVE_MAX_APPARENT).is_ok());
        let e = check_size(ARCHIVE_MAX_REAL + 1, 0).unwrap_err();
        assert!(
            e.contains("on disk") && e.contains("nothing removed"),
            "{e}"
        );
        let e = check_size(4096, 1 << 40).unwrap_err();
        assert!(e.contains("1024.0 GiB") && e.contains("sparse"), "{e}");
    }
}
