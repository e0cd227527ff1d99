//! `picortexd --backup DIR`: a consistent copy of the log (SQLite `VACUUM INTO`, safe while the
//! gateway runs) and, when run as root, the small things a restore needs besides it: the
//! helper's registry of which chat owns which user, the chat users' records (`/etc/userdb`; a
//! chat of an older picortex: its passwd/group lines), and the configuration. The chat homes and archives are big and live on their own filesystem: the
//! RESTORE.txt written with the copy says how to save and put back those (and the credentials).

use std::path::{Path, PathBuf};

/// Where the pieces come from (fixed in production; tests point them at a scratch directory).
pub struct Sources {
    pub state_dir: PathBuf,
    pub registry_dir: PathBuf,
    pub passwd: PathBuf,
    pub group: PathBuf,
    /// The chat users' systemd user records (picortex-provision's `userdb`).
    pub userdb: PathBuf,
    pub config: PathBuf,
}

impl Sources {
    pub fn system(state_dir: &Path, config: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            registry_dir: "/var/lib/picortex-provision/chats".into(),
            passwd: "/etc/passwd".into(),
            group: "/etc/group".into(),
            userdb: "/etc/userdb".into(),
            config: config.to_owned(),
        }
    }
}

/// What a backup holds.
#[derive(Debug, Default)]
pub struct Report {
    pub dir: PathBuf,
    pub copied: Vec<String>,
    pub skipped: Vec<String>,
}

/// Copy the live database at `db` to `to` (which must not exist), consistently.
pub fn copy_database(db: &Path, to: &Path) -> Result<(), String> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("{}: {e}", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let to_s = to
        .to_str()
        .ok_or_else(|| format!("{}: not a UTF-8 path", to.display()))?;
    conn.execute("VACUUM INTO ?1", [to_s])
        .map_err(|e| format!("VACUUM INTO {}: {e}", to.display()))?;
    Ok(())
}

/// Make a backup in a new directory below `dest`, named for the time.
pub fn run(src: &Sources, dest: &Path, as_root: bool) -> Result<Report, String> {
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .map_err(|e| e.to_string())?;
    let dir = dest.join(format!("picortex-backup-{stamp}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut r = Report {
        dir: dir.clone(),
        ..Report::default()
    };
    copy_database(&src.state_dir.join("picortex.db"), &dir.join("picortex.db"))?;
    r.copied
        .push("picortex.db (the log: chats, messages, turns, outbox)".into());

    if as_root {
        // The registry: one small file per chat tag.
        let reg = dir.join("provision-registry");
        match std::fs::read_dir(&src.registry_dir) {
            Ok(entries) => {
                std::fs::create_dir_all(&reg).map_err(|e| e.to_string())?;
                let mut n = 0;
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_file()) {
                        std::fs::copy(e.path(), reg.join(e.file_name()))
                            .map_err(|err| format!("{}: {err}", e.path().display()))?;
                        n += 1;
                    }
                }
                r.copied.push(format!(
                    "provision-registry/ ({n} chats: which chat owns which user)"
                ));
            }
            Err(e) => r
                .skipped
                .push(format!("{}: {e}", src.registry_dir.display())),
        }
        // The chat users and the gateway's, as passwd/group lines.
        let mut users = String::new();
        for f in [&src.passwd, &src.group] {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            for l in text.lines() {
                if l.starts_with("chat-") || l.starts_with("picortex:") {
                    users.push_str(&format!("{}: {l}\n", f.display()));
                }
            }
        }
        std::fs::write(dir.join("users.txt"), users).map_err(|e| e.to_string())?;
        r.copied.push(
            "users.txt (passwd and group lines of the chat users of an older picortex)".into(),
        );
        // The chat users' records: chat-<tag>.user/.group, and the <id>.user/.group links to them.
        let n = copy_user_records(&src.userdb, &dir.join("userdb"))?;
        r.copied.push(format!(
            "userdb/ ({n} files: the chat users' records, /etc/userdb)"
        ));
        if src.config.exists() {
            std::fs::copy(&src.config, dir.join("picortexd.toml"))
                .map_err(|e| format!("{}: {e}", src.config.display()))?;
            r.copied.push("picortexd.toml (the configuration)".into());
        }
    } else {
        r.skipped.push(
            "the helper's registry, the chat users and the configuration: run as root to include them"
                .into(),
        );
    }
    std::fs::write(dir.join("RESTORE.txt"), restore_text(&r)).map_err(|e| e.to_string())?;
    Ok(r)
}

/// Copy the chat users' records of `from` into `to` (links as links): how many files.
fn copy_user_records(from: &Path, to: &Path) -> Result<usize, String> {
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("{}: {e}", from.display())),
    };
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        let ours =
            |n: &str| n.starts_with("chat-") && (n.ends_with(".user") || n.ends_with(".group"));
        let meta = std::fs::symlink_metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            if ours(&target.to_string_lossy()) {
                std::os::unix::fs::symlink(&target, to.join(&name))
                    .map_err(|e| format!("{}: {e}", to.join(&name).display()))?;
                n += 1;
            }
        } else if meta.is_file() && ours(&name) {
            std::fs::copy(&p, to.join(&name)).map_err(|e| format!("{}: {e}", p.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

fn restore_text(r: &Report) -> String {
    let mut s = String::from("picortex backup\n\nIn this directory:\n");
    for c in &r.copied {
        s.push_str(&format!("  - {c}\n"));
    }
    if !r.skipped.is_empty() {
        s.push_str("\nNot included:\n");
        for c in &r.skipped {
            s.push_str(&format!("  - {c}\n"));
        }
    }
    s.push_str(
        "
Not copied by picortexd --backup (save them with the filesystem's tools, at the same time):
  - the chat homes: /var/lib/picortex/chats (a btrfs filesystem; e.g. a read-only snapshot per
    home and `btrfs send`, or `tar --xattrs --acls -C /var/lib/picortex/chats -c .`)
  - archived chats: /var/lib/picortex-provision/archives
  - the credentials: /etc/picortex/credentials (secrets: keep them apart)

To restore, on a machine with the same picortex version installed:
  1. systemctl stop picortexd.socket picortexd.service
  2. cp -a userdb/. /etc/userdb/ (the chat users' records; nsswitch.conf must list `systemd`
     for passwd and group); add the lines of users.txt, if any, to /etc/passwd and /etc/group
     (same names and ids; `vipw`, `vigr`), then `pwck -s && grpck -s`
  3. install -d -m700 /var/lib/picortex-provision/chats &&
     cp provision-registry/* /var/lib/picortex-provision/chats/
  4. put the chat homes back in /var/lib/picortex/chats (owned by their chat users, mode 0700),
     and the archives in /var/lib/picortex-provision/archives
  5. install -o picortex -g picortex -m600 picortex.db /var/lib/picortex/picortex.db
     (remove any picortex.db-wal and picortex.db-shm next to it first)
  6. cp picortexd.toml /etc/picortex/ and put the credentials back; picortexd --check-config
  7. systemctl start picortexd.socket picortexd.service
",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_holds_the_log_the_registry_and_the_users() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let store = crate::store::Store::open(&state.join("picortex.db")).unwrap();
        drop(store);
        {
            let c = rusqlite::Connection::open(state.join("picortex.db")).unwrap();
            c.execute(
                "INSERT INTO events (event_id, event_type, received_at, request_id, body) VALUES ('e1', 'message.received', 1, 'r', '{}')",
                [],
            )
            .unwrap();
        }
        let reg = d.path().join("registry");
        std::fs::create_dir_all(&reg).unwrap();
        std::fs::write(reg.join("0123abcd"), "chat-id\n").unwrap();
        std::fs::write(d.path().join("passwd"), "root:x:0:0::/root:/bin/sh\nchat-0123abcd:x:1001:1001::/var/lib/picortex/chats/chat-0123abcd:/usr/sbin/nologin\n").unwrap();
        std::fs::write(d.path().join("group"), "chat-0123abcd:x:1001:\n").unwrap();
        let userdb = d.path().join("userdb");
        std::fs::create_dir_all(&userdb).unwrap();
        std::fs::write(userdb.join("chat-89abcdef.user"), "{}").unwrap();
        std::fs::write(userdb.join("chat-89abcdef.group"), "{}").unwrap();
        std::os::unix::fs::symlink("chat-89abcdef.user", userdb.join("1900000001.user")).unwrap();
        std::fs::write(userdb.join("someone.user"), "{}").unwrap();
        let src = Sources {
            state_dir: state.clone(),
            registry_dir: reg,
            passwd: d.path().join("passwd"),
            group: d.path().join("group"),
            userdb: userdb.clone(),
            config: d.path().join("none.toml"),
        };
        let out = d.path().join("out");
        let r = run(&src, &out, true).unwrap();
        let copy = rusqlite::Connection::open(r.dir.join("picortex.db")).unwrap();
        let n: i64 = copy
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            std::fs::read_to_string(r.dir.join("provision-registry/0123abcd")).unwrap(),
            "chat-id\n"
        );
        let users = std::fs::read_to_string(r.dir.join("users.txt")).unwrap();
        assert!(users.contains("passwd: chat-0123abcd:x:1001"), "{users}");
        assert!(users.contains("group: chat-0123abcd:x:1001:"), "{users}");
        assert!(!users.contains("root:"), "{users}");
        let mut records: Vec<String> = std::fs::read_dir(r.dir.join("userdb"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        records.sort();
        assert_eq!(
            records,
            [
                "1900000001.user",
                "chat-89abcdef.group",
                "chat-89abcdef.user"
            ]
        );
        assert!(
            std::fs::symlink_metadata(r.dir.join("userdb/1900000001.user"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let restore = std::fs::read_to_string(r.dir.join("RESTORE.txt")).unwrap();
        assert!(
            restore.contains("provision-registry/ (1 chats"),
            "{restore}"
        );

        // Not root: the log only, and RESTORE.txt says what is missing.
        let r = run(&src, &d.path().join("out2"), false).unwrap();
        assert!(!r.dir.join("users.txt").exists());
        let restore = std::fs::read_to_string(r.dir.join("RESTORE.txt")).unwrap();
        assert!(restore.contains("run as root to include them"), "{restore}");
    }
}
