//! Seeding `<home>/.claude/.claude.json` with `"hasCompletedOnboarding": true`, without which
//! `claude -p` run as a service user exits 0 with no output (research/claude-cli.md §6.2,
//! issue #95217). The chat user controls its home, so everything goes through file descriptors
//! with `O_NOFOLLOW`: a symlinked `.claude` or `.claude.json` is refused, never followed.

use nix::errno::Errno;
use nix::fcntl::{open, openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, Mode};
use nix::unistd::{geteuid, unlinkat, UnlinkatFlags};
use serde_json::{Map, Value};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

pub const CONFIG_DIR_NAME: &str = ".claude";
pub const STATE_FILE_NAME: &str = ".claude.json";
/// The CLI keeps project history in this file; it can grow, but not without bound.
const MAX_STATE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedError(pub String);

impl std::fmt::Display for SeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SeedError {}

/// What seeding did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeded {
    /// The flag was already there; nothing was written.
    AlreadyDone,
    /// The file was created or the flag merged into it.
    Written,
    /// The file was not a JSON object; it was set aside as `.claude.json.picortex-corrupt`.
    ReplacedCorrupt,
}

fn is_symlink(dir: impl AsFd, name: &str) -> Result<bool, SeedError> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(SeedError(format!("cannot stat {name}: {e}"))),
    }
}

/// The merge itself: the existing document (if any) plus the flag. Returns `None` when the
/// existing document already has the flag, and whether the old text was unusable.
pub fn merge_onboarding(existing: Option<&[u8]>) -> (Option<Vec<u8>>, bool) {
    let (mut map, corrupt) = match existing.map(serde_json::from_slice::<Value>) {
        None => (Map::new(), false),
        Some(Ok(Value::Object(m))) => (m, false),
        Some(_) => (Map::new(), true),
    };
    if map.get("hasCompletedOnboarding") == Some(&Value::Bool(true)) {
        return (None, false);
    }
    map.insert("hasCompletedOnboarding".into(), Value::Bool(true));
    let mut bytes = serde_json::to_vec_pretty(&Value::Object(map)).unwrap_or_default();
    bytes.push(b'\n');
    (Some(bytes), corrupt)
}

/// Make sure `<home>/.claude/.claude.json` says onboarding is done.
pub fn seed_onboarding(home: &Path) -> Result<Seeded, SeedError> {
    let dflags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let home_fd = open(home, dflags, Mode::empty())
        .map_err(|e| SeedError(format!("cannot open home {}: {e}", home.display())))?;

    if is_symlink(&home_fd, CONFIG_DIR_NAME)? {
        return Err(SeedError(format!(
            "{}/{CONFIG_DIR_NAME} is a symlink",
            home.display()
        )));
    }
    match mkdirat(&home_fd, CONFIG_DIR_NAME, Mode::S_IRWXU) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(SeedError(format!("cannot create {CONFIG_DIR_NAME}: {e}"))),
    }
    let dir = openat(&home_fd, CONFIG_DIR_NAME, dflags, Mode::empty()).map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR => SeedError(format!("{CONFIG_DIR_NAME} is not a directory")),
        e => SeedError(format!("cannot open {CONFIG_DIR_NAME}: {e}")),
    })?;
    let st = fstat(&dir).map_err(|e| SeedError(format!("cannot fstat {CONFIG_DIR_NAME}: {e}")))?;
    if st.st_uid != geteuid().as_raw() {
        return Err(SeedError(format!(
            "{CONFIG_DIR_NAME} is owned by uid {}",
            st.st_uid
        )));
    }
    if st.st_mode & 0o7777 != 0o700 {
        fchmod(&dir, Mode::S_IRWXU)
            .map_err(|e| SeedError(format!("cannot chmod {CONFIG_DIR_NAME}: {e}")))?;
    }

    if is_symlink(&dir, STATE_FILE_NAME)? {
        return Err(SeedError(format!(
            "{CONFIG_DIR_NAME}/{STATE_FILE_NAME} is a symlink"
        )));
    }
    let existing = read_state(&dir)?;
    let (bytes, corrupt) = merge_onboarding(existing.as_deref());
    let Some(bytes) = bytes else {
        return Ok(Seeded::AlreadyDone);
    };
    if corrupt {
        renameat(&dir, STATE_FILE_NAME, &dir, ".claude.json.picortex-corrupt").map_err(|e| {
            SeedError(format!(
                "cannot set aside the corrupt {STATE_FILE_NAME}: {e}"
            ))
        })?;
    }
    write_atomically(&dir, STATE_FILE_NAME, &bytes)?;
    Ok(if corrupt {
        Seeded::ReplacedCorrupt
    } else {
        Seeded::Written
    })
}

fn read_state(dir: &OwnedFd) -> Result<Option<Vec<u8>>, SeedError> {
    read_regular(dir, STATE_FILE_NAME, MAX_STATE_BYTES)
}

/// A regular file under `dir`, read whole up to `max` bytes; `None` if it does not exist.
fn read_regular(dir: &OwnedFd, name: &str, max: u64) -> Result<Option<Vec<u8>>, SeedError> {
    // O_NONBLOCK: a FIFO planted under the name must not block us; it is refused below.
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = match openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => return Err(SeedError(format!("{name} is a symlink"))),
        Err(e) => return Err(SeedError(format!("cannot open {name}: {e}"))),
    };
    let st = fstat(&fd).map_err(|e| SeedError(format!("cannot fstat {name}: {e}")))?;
    if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
        return Err(SeedError(format!("{name} is not a regular file")));
    }
    let mut buf = Vec::new();
    std::fs::File::from(fd)
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| SeedError(format!("cannot read {name}: {e}")))?;
    if buf.len() as u64 > max {
        return Err(SeedError(format!("{name} is larger than {max} bytes")));
    }
    Ok(Some(buf))
}

/// Open (creating it 0700 when missing) the directory `name` under `parent`, refusing a symlink
/// or one owned by anyone else.
fn open_own_dir(parent: &OwnedFd, name: &str) -> Result<OwnedFd, SeedError> {
    let dflags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match mkdirat(parent, name, Mode::S_IRWXU) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(SeedError(format!("cannot create {name}: {e}"))),
    }
    let dir = openat(parent, name, dflags, Mode::empty()).map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR => SeedError(format!("{name} is not a directory")),
        e => SeedError(format!("cannot open {name}: {e}")),
    })?;
    let st = fstat(&dir).map_err(|e| SeedError(format!("cannot fstat {name}: {e}")))?;
    if st.st_uid != geteuid().as_raw() {
        return Err(SeedError(format!("{name} is owned by uid {}", st.st_uid)));
    }
    Ok(dir)
}

/// The agent's temporary directory, inside the home: a turn's /tmp is read-only, because a
/// private /tmp lives on the host's disk beside the database, outside the chat's quota.
pub const TMP_DIR_NAME: &str = ".tmp";

/// Everything the agent needs in the home before it runs: the onboarding flag and its
/// temporary directory (`$TMPDIR`, 0700, never a symlink).
pub fn seed_home(home: &Path) -> Result<Seeded, SeedError> {
    let seeded = seed_onboarding(home)?;
    let dflags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let home_fd = open(home, dflags, Mode::empty())
        .map_err(|e| SeedError(format!("cannot open home {}: {e}", home.display())))?;
    let tmp = open_own_dir(&home_fd, TMP_DIR_NAME)?;
    fchmod(&tmp, Mode::S_IRWXU)
        .map_err(|e| SeedError(format!("cannot chmod {TMP_DIR_NAME}: {e}")))?;
    Ok(seeded)
}

/// The text of `<home>/<dirs…>/<name>`, seeded with `default` when it does not exist yet (the
/// owner may edit it afterwards). Every component is opened without following symlinks.
pub fn seeded_file(
    home: &Path,
    dirs: &[&str],
    name: &str,
    default: &[u8],
    max: u64,
) -> Result<Vec<u8>, SeedError> {
    let dflags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = open(home, dflags, Mode::empty())
        .map_err(|e| SeedError(format!("cannot open home {}: {e}", home.display())))?;
    for d in dirs {
        dir = open_own_dir(&dir, d)?;
    }
    if let Some(text) = read_regular(&dir, name, max)? {
        return Ok(text);
    }
    write_atomically(&dir, name, default)?;
    Ok(default.to_vec())
}

/// A temp file beside the target, fsync'd, then renamed over it: a reader (or a crash) sees the
/// old document or the new one, never half of one.
fn write_atomically(dir: &OwnedFd, name: &str, bytes: &[u8]) -> Result<(), SeedError> {
    let tmp = format!("{name}.picortex-{}", std::process::id());
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir); // a leftover of a killed run
    let fd = openat(dir, tmp.as_str(), flags, Mode::S_IRUSR | Mode::S_IWUSR)
        .map_err(|e| SeedError(format!("cannot create {tmp}: {e}")))?;
    let mut file = std::fs::File::from(fd);
    let result = file
        .write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| SeedError(format!("cannot write {tmp}: {e}")))
        .and_then(|_| {
            renameat(dir, tmp.as_str(), dir, name)
                .map_err(|e| SeedError(format!("cannot rename {tmp}: {e}")))
        });
    if result.is_err() {
        let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn state(home: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(home.join(".claude/.claude.json")).unwrap()).unwrap()
    }

    #[test]
    fn merge_keeps_other_keys() {
        let (b, corrupt) = merge_onboarding(Some(br#"{"numStartups": 3, "projects": {}}"#));
        let v: Value = serde_json::from_slice(&b.unwrap()).unwrap();
        assert_eq!(v["numStartups"], 3);
        assert_eq!(v["hasCompletedOnboarding"], true);
        assert!(!corrupt);
        assert_eq!(
            merge_onboarding(Some(br#"{"hasCompletedOnboarding": true}"#)).0,
            None
        );
        assert!(merge_onboarding(Some(b"[1]")).1);
        assert!(merge_onboarding(Some(b"{trunc")).1);
        assert!(merge_onboarding(None).0.is_some());
    }

    #[test]
    fn creates_the_dir_and_file() {
        let home = tempfile::tempdir().unwrap();
        assert_eq!(seed_onboarding(home.path()).unwrap(), Seeded::Written);
        assert_eq!(state(home.path())["hasCompletedOnboarding"], true);
        let mode = std::fs::metadata(home.path().join(".claude"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o700);
        let mode = std::fs::metadata(home.path().join(".claude/.claude.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(seed_onboarding(home.path()).unwrap(), Seeded::AlreadyDone);
        let names: Vec<_> = std::fs::read_dir(home.path().join(".claude"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(".claude.json")],
            "no temp files left"
        );
    }

    #[test]
    fn merges_into_an_existing_object_and_fixes_the_dir_mode() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".claude")).unwrap();
        std::fs::set_permissions(
            home.path().join(".claude"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(
            home.path().join(".claude/.claude.json"),
            r#"{"userID":"u","hasCompletedOnboarding":false}"#,
        )
        .unwrap();
        assert_eq!(seed_onboarding(home.path()).unwrap(), Seeded::Written);
        let v = state(home.path());
        assert_eq!(
            (v["userID"].as_str(), v["hasCompletedOnboarding"].as_bool()),
            (Some("u"), Some(true))
        );
        let mode = std::fs::metadata(home.path().join(".claude"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o700);
    }

    #[test]
    fn a_corrupt_file_is_set_aside() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".claude")).unwrap();
        std::fs::write(home.path().join(".claude/.claude.json"), "{\"half\": ").unwrap();
        assert_eq!(
            seed_onboarding(home.path()).unwrap(),
            Seeded::ReplacedCorrupt
        );
        assert_eq!(state(home.path())["hasCompletedOnboarding"], true);
        assert!(home
            .path()
            .join(".claude/.claude.json.picortex-corrupt")
            .exists());
    }

    #[test]
    fn symlinks_are_refused_not_followed() {
        let home = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        symlink(elsewhere.path(), home.path().join(".claude")).unwrap();
        let e = seed_onboarding(home.path()).unwrap_err();
        assert!(e.0.contains("symlink"), "{e}");
        assert!(
            std::fs::read_dir(elsewhere.path())
                .unwrap()
                .next()
                .is_none(),
            "nothing written through it"
        );

        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".claude")).unwrap();
        let target = elsewhere.path().join("victim.json");
        std::fs::write(&target, "{}").unwrap();
        symlink(&target, home.path().join(".claude/.claude.json")).unwrap();
        let e = seed_onboarding(home.path()).unwrap_err();
        assert!(e.0.contains("symlink"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "{}");

        let e = seed_onboarding(&home.path().join(".claude/.claude.json")).unwrap_err();
        assert!(e.0.contains("cannot open home"), "{e}");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".claude")).unwrap();
        nix::unistd::mkfifo(&home.path().join(".claude/.claude.json"), Mode::S_IRWXU).unwrap();
        let e = seed_onboarding(home.path()).unwrap_err();
        assert!(e.0.contains("not a regular file"), "{e}");
    }
}
