//! Chat users as systemd user records (`/etc/userdb/*.user`, `*.group`), not lines of
//! `/etc/passwd` (issue 7): useradd and userdel replace `/etc/passwd` and `/etc/group` by a
//! rename, and the kernel detaches every mount on a replaced file in every namespace, so each
//! new chat used to tear the private user database off every turn running at that moment (which
//! then saw every chat's user) and fail the unit systemd was building (226/NAMESPACE). Records
//! are files of their own in a directory: creating one renames nothing a turn has mounted, and
//! the directory itself is hidden in turns (`units::HIDDEN_PATHS`).
//!
//! nss-systemd (libnss-systemd, `systemd` in nsswitch.conf's passwd and group lines) and
//! systemd itself read these drop-ins directly: `getent`, `User=` of a unit, `ls -l` all see the
//! user. A record is written through a temporary file and a rename inside the directory; the
//! group first and the user last, so a user record always has its group.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use picortex_proto::ids::ChatTag;

use crate::users::UserError;

pub const USERDB_DIR: &str = "/etc/userdb";
const NOLOGIN: &str = "/usr/sbin/nologin";

/// The JSON user record of a chat's user (only safe characters go in: a hex tag, numbers and
/// fixed paths, so no escaping is needed).
pub fn user_record(tag: &ChatTag, uid: u32) -> String {
    format!(
        "{{\"userName\":\"{}\",\"uid\":{uid},\"gid\":{uid},\"realName\":\"picortex chat {tag}\",\
         \"homeDirectory\":\"{}\",\"shell\":\"{NOLOGIN}\",\"disposition\":\"regular\",\
         \"locked\":true}}\n",
        tag.user_name(),
        tag.home()
    )
}

/// The JSON group record of a chat's user's own group.
pub fn group_record(tag: &ChatTag, gid: u32) -> String {
    format!(
        "{{\"groupName\":\"{}\",\"gid\":{gid},\"disposition\":\"regular\"}}\n",
        tag.user_name()
    )
}

/// The files of one chat's records in `dir`: (by name, by number) for the group, then the user.
/// nss-systemd looks a user up by `<name>.user` and by `<uid>.user`; the numbered ones are
/// symlinks to the named ones.
pub fn record_paths(dir: &Path, tag: &ChatTag, id: u32) -> [(PathBuf, PathBuf); 2] {
    let n = tag.user_name();
    [
        (
            dir.join(format!("{n}.group")),
            dir.join(format!("{id}.group")),
        ),
        (
            dir.join(format!("{n}.user")),
            dir.join(format!("{id}.user")),
        ),
    ]
}

fn err(p: &Path) -> impl FnOnce(std::io::Error) -> UserError + '_ {
    move |source| UserError::Io {
        path: p.display().to_string(),
        source,
    }
}

/// Write a record (0644: every process reads user records) through a temporary file in the same
/// directory and a rename.
fn replace(tag: &ChatTag, path: &Path, text: &str) -> Result<(), UserError> {
    crate::view::write_view_file(path, text.as_bytes(), 0o644, None).map_err(|detail| {
        UserError::Create {
            user: tag.user_name(),
            detail,
        }
    })
}

/// `link` → `target` (a name in the same directory), replacing whatever `link` was.
fn relink(link: &Path, target: &Path) -> Result<(), UserError> {
    let name = target.file_name().map(PathBuf::from).unwrap_or_default();
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp).map_err(err(&tmp))?;
    std::fs::rename(&tmp, link).map_err(err(link))
}

/// Create the chat's user and group (uid = gid = `id`) in `dir`.
pub fn create_in(dir: &Path, tag: &ChatTag, id: u32) -> Result<(), UserError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(err(dir))?;
    let [(group, group_n), (user, user_n)] = record_paths(dir, tag, id);
    replace(tag, &group, &group_record(tag, id))?;
    relink(&group_n, &group)?;
    replace(tag, &user, &user_record(tag, id))?;
    relink(&user_n, &user)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir))
}

/// Remove the chat's records from `dir` (the user first): Ok(false) when it had none there.
pub fn remove_in(dir: &Path, tag: &ChatTag, id: u32) -> Result<bool, UserError> {
    let [(group, group_n), (user, user_n)] = record_paths(dir, tag, id);
    let mut had = false;
    for p in [user_n, user, group_n, group] {
        match std::fs::remove_file(&p) {
            Ok(()) => had = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&p)(e)),
        }
    }
    Ok(had)
}

pub fn create(tag: &ChatTag, id: u32) -> Result<(), UserError> {
    create_in(Path::new(USERDB_DIR), tag, id)?;
    tracing::info!(user = %tag.user_name(), uid = id, "created user record in {USERDB_DIR}");
    Ok(())
}

/// Whether the chat's user is a record here (not a line of /etc/passwd, as a chat of an older
/// picortex is).
pub fn exists(tag: &ChatTag) -> bool {
    Path::new(USERDB_DIR)
        .join(format!("{}.user", tag.user_name()))
        .is_file()
}

pub fn remove(tag: &ChatTag, id: u32) -> Result<bool, UserError> {
    remove_in(Path::new(USERDB_DIR), tag, id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tag() -> ChatTag {
        ChatTag::parse("aaaa1111").unwrap()
    }

    #[test]
    fn records_are_the_json_nss_systemd_reads() {
        let u = user_record(&tag(), 1_900_000_001);
        assert_eq!(
            u,
            "{\"userName\":\"chat-aaaa1111\",\"uid\":1900000001,\"gid\":1900000001,\
             \"realName\":\"picortex chat aaaa1111\",\
             \"homeDirectory\":\"/var/lib/picortex/chats/aaaa1111\",\
             \"shell\":\"/usr/sbin/nologin\",\"disposition\":\"regular\",\"locked\":true}\n"
        );
        assert_eq!(
            group_record(&tag(), 7),
            "{\"groupName\":\"chat-aaaa1111\",\"gid\":7,\"disposition\":\"regular\"}\n"
        );
    }

    #[test]
    fn create_and_remove_touch_the_chats_files_alone() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("userdb");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("other.user"), "x").unwrap();
        create_in(&dir, &tag(), 1_900_000_001).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "1900000001.group",
                "1900000001.user",
                "chat-aaaa1111.group",
                "chat-aaaa1111.user",
                "other.user"
            ]
        );
        assert_eq!(
            std::fs::read_link(dir.join("1900000001.user")).unwrap(),
            PathBuf::from("chat-aaaa1111.user")
        );
        let m = std::fs::metadata(dir.join("chat-aaaa1111.user")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o644);
        // Again: the same files, nothing left over.
        create_in(&dir, &tag(), 1_900_000_001).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 5);
        assert!(remove_in(&dir, &tag(), 1_900_000_001).unwrap());
        assert!(!remove_in(&dir, &tag(), 1_900_000_001).unwrap());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }
}
