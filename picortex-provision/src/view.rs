//! What a turn may see of the machine (SPEC P2: no chat learns another exists). The helper
//! prepares it at StartTurn, as root, from the machine's own files:
//! - a user database of three accounts (root, nobody, the chat's own user), bound read-only
//!   over the turn's /etc/passwd and /etc/group, since the real ones list every chat user;
//! - a skeleton of the cgroup tree with only the chat's own slice in it, bound over the turn's
//!   /sys/fs/cgroup, with that slice bound back (`CgroupView`);
//! - a directory with the `[agent]` table of the operator's configuration alone and a
//!   placeholder of the agent's credential (picortex-egress adds the real one to the agent's
//!   API requests) owned by the chat's user, bound read-only over the turn's
//!   `/etc/picortex`, because the rest of that directory (the owner's handles, the gateway's
//!   secrets) is no turn's business.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::users::{ChatAccount, UserError};
use picortex_proto::ids::{
    ChatTag, API_KEY_CREDENTIAL, OAUTH_CREDENTIAL, TURN_AGENT_CONFIG, VIEW_GROUPS, VIEW_USERS,
};

/// Where the per-chat views live: inside the helper's own state directory (root, 0700).
const VIEWS_DIR: &str = "/var/lib/picortex-provision/views";
/// A chat's views: `passwd`, `group`, `cgroup/`, `etc/`.
fn chat_views(tag: &ChatTag) -> PathBuf {
    Path::new(VIEWS_DIR).join(tag.as_str())
}

/// The lines of an `/etc/passwd` or `/etc/group` text whose first field is one of `names`, in
/// the file's order: the accounts a turn needs to resolve (itself, root, the overflow ids).
pub fn filter_db(text: &str, names: &[&str]) -> String {
    text.lines()
        .filter(|l| l.split(':').next().is_some_and(|n| names.contains(&n)))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The view's lines for the chat's own user and group (a user record in /etc/userdb, or a line
/// of /etc/passwd for a chat of an older picortex: either way, the account as NSS gave it).
pub fn own_lines(acct: &ChatAccount) -> (String, String) {
    (
        format!(
            "{}:x:{}:{}:picortex chat {}:{}:/usr/sbin/nologin\n",
            acct.user, acct.uid, acct.gid, acct.tag, acct.home
        ),
        format!("{}:x:{}:\n", acct.user, acct.gid),
    )
}

/// The turn's `/etc/passwd` and `/etc/group`, written for the chat and returned as paths: the
/// machine's root and nobody (nogroup), and the chat's own account.
pub fn write_user_db(acct: &ChatAccount) -> Result<(PathBuf, PathBuf), String> {
    let dir = chat_views(&acct.tag);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
    let (own_user, own_group) = own_lines(acct);
    let passwd = filter_db(&read("/etc/passwd")?, VIEW_USERS) + &own_user;
    let group = filter_db(&read("/etc/group")?, VIEW_GROUPS) + &own_group;
    let p = dir.join("passwd");
    let g = dir.join("group");
    replace(&p, &passwd)?;
    replace(&g, &group)?;
    Ok((p, g))
}

/// Remove a chat's views (when it is archived or removed: nothing of it runs then).
pub fn forget(tag: &ChatTag) -> Result<(), UserError> {
    let dir = chat_views(tag);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(UserError::Io {
            path: dir.display().to_string(),
            source,
        }),
    }
}

/// Where the operator puts the agent's credentials (root, 0600), see `CREDENTIALS`.
pub const OPERATOR_CREDENTIALS: &str = "/etc/picortex/credentials";
/// The agent's credentials a turn gets, by name in `OPERATOR_CREDENTIALS` and in the view.
pub const CREDENTIALS: &[&str] = &[API_KEY_CREDENTIAL, OAUTH_CREDENTIAL];
/// A credential is a token: anything larger is not one.
const MAX_CREDENTIAL_BYTES: u64 = 64 << 10;

/// The turn's `/etc/picortex`: a directory holding `agent` (the `[agent]` table, see
/// `load_agent_table`) as `TURN_AGENT_CONFIG`, and each of `CREDENTIALS` found in `creds` (the
/// operator's directory), copied for the chat's user alone (0400); one the operator removed is
/// removed. Returns the directory's path. The directory is bound, not its files, so a spare
/// already running sees the key the operator rotates at its chat's next turn start.
pub fn write_agent_view(acct: &ChatAccount, agent: &str, creds: &Path) -> Result<PathBuf, String> {
    let dir = chat_views(&acct.tag).join("etc");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    // The helper's UMask is 0077: the mode is set, not asked for (the chat user reads it).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    replace(&dir.join(TURN_AGENT_CONFIG), agent)?;
    sync_credentials(creds, &dir, acct.uid, acct.gid)?;
    Ok(dir)
}

/// For each of `CREDENTIALS` the operator put in `creds`, its placeholder
/// (`picortex_proto::egress::placeholder`) in `dir`, for `uid`:`gid` alone (0400), removed
/// from `dir` when it is gone from `creds`. Never the secret: the agent presents the
/// placeholder to the API through picortex-egress, which puts the real one in its place, so
/// nothing a turn runs can read or send the key.
fn sync_credentials(creds: &Path, dir: &Path, uid: u32, gid: u32) -> Result<(), String> {
    for name in CREDENTIALS {
        let (src, dst) = (creds.join(name), dir.join(name));
        let placeholder = picortex_proto::egress::placeholder(name)
            .ok_or_else(|| format!("{name}: no placeholder for this credential"))?;
        if credential_present(&src)? {
            replace_owned(&dst, placeholder.as_bytes(), uid, gid)?;
        } else {
            match std::fs::remove_file(&dst) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", dst.display())),
            }
        }
    }
    Ok(())
}

/// Whether the operator's credential file is there: a regular file (a symlink is refused, not
/// followed) that is not empty (as for the gateway's own credentials) and no larger than a
/// token. Its contents are picortex-egress's to read, not the helper's.
fn credential_present(path: &Path) -> Result<bool, String> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if !m.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if m.len() > MAX_CREDENTIAL_BYTES {
        return Err(format!(
            "{} is larger than {MAX_CREDENTIAL_BYTES} bytes",
            path.display()
        ));
    }
    Ok(m.len() > 0)
}

/// Like `replace`, for the chat's user alone: mode 0400, owned by `uid`:`gid`.
fn replace_owned(path: &Path, bytes: &[u8], uid: u32, gid: u32) -> Result<(), String> {
    write_view_file(path, bytes, 0o400, Some((uid, gid)))
}

/// Write `text` to `path` through a temporary file and a rename (0644: the chat user reads it
/// through the bind mount; the directory above stays root's alone).
fn replace(path: &Path, text: &str) -> Result<(), String> {
    write_view_file(path, text.as_bytes(), 0o644, None)
}

/// Write `bytes` to `path` through a temporary file and a rename, with `mode` (set, not asked
/// for: the helper runs with UMask=0077) and, if given, that owner. A file that already holds
/// them so is left as it is: StartTurn writes the views each time, and a rename per turn would
/// be a write (and a sync) per turn for nothing. (The chat users' records are written so too.)
pub fn write_view_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let same = std::fs::symlink_metadata(path).is_ok_and(|m| {
        m.is_file()
            && m.mode() & 0o7777 == mode
            && owner.is_none_or(|(u, g)| m.uid() == u && m.gid() == g)
    }) && std::fs::read(path).is_ok_and(|old| old == bytes);
    if same {
        return Ok(());
    }
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let err = |e: std::io::Error| format!("{}: {e}", tmp.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::fchown(&f, Some(u), Some(g)).map_err(err)?;
    }
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The turn's view of the cgroup tree: `skeleton`, bound read-only over its /sys/fs/cgroup,
/// holds nothing but the directories down to its own chat's slice, and `own` lists those
/// slices, each bound back from the real tree over its empty directory. One bind hides every
/// hierarchy however many the machine has (a hybrid machine has ten; a mount each would add
/// tens of milliseconds to every turn's start, SPEC P5), and a bind at /sys/fs/cgroup itself
/// takes precedence over ProtectControlGroups' read-only one, which a tmpfs there would not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupView {
    pub skeleton: PathBuf,
    pub own: Vec<String>,
}

/// The hierarchies, relative to `root`, in which a turn gets its chat's slice back: the root
/// on a unified machine; `memory` (the limit and OOM counter the agent's runtime and
/// picortex-run read) and `unified`, where present, on a hybrid or v1 one.
pub fn own_slice_hierarchies(root: &Path) -> Vec<String> {
    if root.join("cgroup.controllers").exists() {
        return vec![String::new()];
    }
    ["memory", "unified"]
        .into_iter()
        .filter(|h| root.join(h).join("cgroup.procs").exists())
        .map(str::to_owned)
        .collect()
}

/// `hierarchy/picortex.slice/picortex-chat.slice/<slice>` (no leading slash).
fn slice_rel(hierarchy: &str, slice: &str) -> String {
    let tail = format!("picortex.slice/picortex-chat.slice/{slice}");
    if hierarchy.is_empty() {
        tail
    } else {
        format!("{hierarchy}/{tail}")
    }
}

/// Writes the chat's cgroup skeleton under the views directory (None on a machine without a
/// cgroup tree, where there is nothing to hide).
pub fn write_cgroup_view(acct: &ChatAccount, root: &Path) -> Result<Option<CgroupView>, String> {
    let hierarchies = own_slice_hierarchies(root);
    if hierarchies.is_empty() {
        return Ok(None);
    }
    let skeleton = chat_views(&acct.tag).join("cgroup");
    let slice = acct.tag.slice();
    let mut own = Vec::new();
    for h in &hierarchies {
        let rel = slice_rel(h, &slice);
        let d = skeleton.join(&rel);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&d)
            .map_err(|e| format!("{}: {e}", d.display()))?;
        own.push(root.join(&rel).display().to_string());
    }
    // The helper's UMask is 0077: the modes are set, not asked for (the chat user must be able
    // to walk down to its slice).
    for h in &hierarchies {
        let mut p = skeleton.clone();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        for part in slice_rel(h, &slice).split('/') {
            p.push(part);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    Ok(Some(CgroupView { skeleton, own }))
}

/// The `[agent]` table of the operator's configuration, alone, as TOML (empty if absent).
pub fn agent_table(text: &str) -> Result<String, String> {
    let t: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
    let mut only = toml::Table::new();
    if let Some(a) = t.get("agent") {
        only.insert("agent".to_owned(), a.clone());
    }
    let body = toml::to_string(&only).map_err(|e| e.to_string())?;
    Ok(format!(
        "# The [agent] table of /etc/picortex/picortexd.toml, passed by picortex-provision.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn the_user_database_keeps_only_the_named_accounts() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/usr/sbin/nologin\n\
                      chat-aaaa1111:x:990:990::/var/lib/picortex/chats/aaaa1111:/usr/sbin/nologin\n\
                      chat-bbbb2222:x:991:991::/var/lib/picortex/chats/bbbb2222:/usr/sbin/nologin\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                      chat-aaaa1111x:x:992:992::/:/bin/sh\n";
        let v = filter_db(passwd, &["root", "nobody", "chat-aaaa1111"]);
        assert_eq!(
            v,
            "root:x:0:0:root:/root:/bin/bash\n\
             chat-aaaa1111:x:990:990::/var/lib/picortex/chats/aaaa1111:/usr/sbin/nologin\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        );
        assert!(!v.contains("bbbb2222"));
    }

    #[test]
    fn the_chats_own_lines_come_from_its_account() {
        let acct = ChatAccount {
            tag: ChatTag::parse("aaaa1111").unwrap(),
            user: "chat-aaaa1111".into(),
            uid: 1_900_000_001,
            gid: 1_900_000_001,
            home: "/var/lib/picortex/chats/aaaa1111".into(),
        };
        let (p, g) = own_lines(&acct);
        assert_eq!(
            p,
            "chat-aaaa1111:x:1900000001:1900000001:picortex chat aaaa1111:/var/lib/picortex/chats/aaaa1111:/usr/sbin/nologin\n"
        );
        assert_eq!(g, "chat-aaaa1111:x:1900000001:\n");
    }

    #[test]
    fn a_turn_gets_placeholders_of_the_operators_credentials_never_the_secret() {
        use std::os::unix::fs::MetadataExt;
        let root = tempdir();
        let (creds, view) = (root.join("creds"), root.join("view"));
        std::fs::create_dir(&creds).unwrap();
        std::fs::create_dir(&view).unwrap();
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        std::fs::write(creds.join(API_KEY_CREDENTIAL), "sk-ant-1").unwrap();
        sync_credentials(&creds, &view, uid, gid).unwrap();
        let key = view.join(API_KEY_CREDENTIAL);
        let placeholder = picortex_proto::egress::PLACEHOLDER_API_KEY;
        assert_eq!(std::fs::read_to_string(&key).unwrap(), placeholder);
        let m = std::fs::metadata(&key).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o400, uid, gid));
        assert!(!view.join(OAUTH_CREDENTIAL).exists());
        // Rotated: still the placeholder. Removed: so is the placeholder. Empty counts as none.
        std::fs::write(creds.join(API_KEY_CREDENTIAL), "sk-ant-2").unwrap();
        sync_credentials(&creds, &view, uid, gid).unwrap();
        assert_eq!(std::fs::read_to_string(&key).unwrap(), placeholder);
        std::fs::write(creds.join(API_KEY_CREDENTIAL), "").unwrap();
        std::fs::write(creds.join(OAUTH_CREDENTIAL), "sk-ant-oat01-x").unwrap();
        sync_credentials(&creds, &view, uid, gid).unwrap();
        assert!(!key.exists());
        assert_eq!(
            std::fs::read_to_string(view.join(OAUTH_CREDENTIAL)).unwrap(),
            picortex_proto::egress::PLACEHOLDER_OAUTH_TOKEN
        );
        // A symlink in the operator's directory is refused, not followed.
        std::fs::remove_file(creds.join(API_KEY_CREDENTIAL)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", creds.join(API_KEY_CREDENTIAL)).unwrap();
        assert!(sync_credentials(&creds, &view, uid, gid).is_err());
        assert!(!key.exists());
    }

    #[test]
    fn only_the_agent_table_is_passed_on() {
        let t = agent_table(
            "[owner]\nhandles = [\"+15550002000\"]\n[agent]\ncommand = \"/opt/c\"\nextra_args = [\"--x\", \"1\"]\nmodel = \"sonnet\"\n[sandbox]\negress = \"internet\"\n",
        )
        .unwrap();
        assert!(!t.contains("15550002000") && !t.contains("sandbox"), "{t}");
        let back: toml::Table = t.parse().unwrap();
        assert_eq!(back["agent"]["command"].as_str(), Some("/opt/c"));
        assert_eq!(back["agent"]["model"].as_str(), Some("sonnet"));
        assert_eq!(
            back["agent"]["extra_args"].as_array().map(Vec::len),
            Some(2)
        );
        // No [agent]: an empty document, which means the defaults.
        let none: toml::Table = agent_table("[owner]\nhandles = []\n")
            .unwrap()
            .parse()
            .unwrap();
        assert!(none.is_empty());
        assert!(agent_table("[agent\n").is_err());
    }

    #[test]
    fn a_turn_gets_its_slice_back_in_the_memory_and_unified_hierarchies_only() {
        let d = tempdir();
        // Hybrid: memory and unified, never the others.
        for h in ["memory", "pids", "unified", "devices", "systemd"] {
            std::fs::create_dir_all(d.join(h)).unwrap();
            std::fs::write(d.join(h).join("cgroup.procs"), "").unwrap();
        }
        std::fs::create_dir_all(d.join("notacgroup")).unwrap();
        assert_eq!(own_slice_hierarchies(&d), ["memory", "unified"]);
        assert_eq!(
            slice_rel("memory", "picortex-chat-ab.slice"),
            "memory/picortex.slice/picortex-chat.slice/picortex-chat-ab.slice"
        );
        // Unified: the root.
        let u = d.join("unified");
        std::fs::write(u.join("cgroup.controllers"), "").unwrap();
        assert_eq!(own_slice_hierarchies(&u), [""]);
        assert_eq!(
            slice_rel("", "picortex-chat-ab.slice"),
            "picortex.slice/picortex-chat.slice/picortex-chat-ab.slice"
        );
        // No cgroup tree at all.
        assert!(own_slice_hierarchies(&d.join("missing")).is_empty());
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "picortex-view-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
