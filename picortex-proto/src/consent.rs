//! What the consent loop (SPEC C2, C3) needs all three programs to agree on: the requests an
//! agent makes through picortex-run's MCP tools (`request_access`, `import_file`), which leave the
//! turn in its result document; the shape of a path the owner can be asked about; and where an
//! approved grant appears inside a turn. Every value here comes from the agent, i.e. from the
//! untrusted side: the gateway bounds it ([`AccessRequest::validate`]) and the helper re-checks
//! every path against the real file system (openat2, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS).

use serde::{Deserialize, Serialize};

/// The most requests one turn may carry out.
pub const MAX_REQUESTS_PER_TURN: usize = 4;
/// The longest `why` an agent may give, in bytes.
pub const MAX_WHY_BYTES: usize = 500;
/// The longest relative path, in bytes (PATH_MAX-ish but smaller: this is read on a phone).
pub const MAX_PATH_BYTES: usize = 512;
/// The most path components.
pub const MAX_PATH_DEPTH: usize = 16;
/// The most grants one turn can get (`StartGrantedTurn`), single-use and standing together.
pub const MAX_GRANTS_PER_TURN: usize = 8;
/// The largest file a grant or an import may carry (the helper copies it).
pub const MAX_SHARED_FILE_BYTES: u64 = 16 << 20;

/// Where the n-th grant of a turn appears inside it, read-only. Under the gateway's state
/// directory, which a turn sees as an empty read-only tmpfs: nothing is created in any home.
pub const SHARED_DIR: &str = "/var/lib/picortex/shared";

/// The MCP server's name in `--mcp-config`, and its tools as the agent's allow-list names them.
pub const MCP_SERVER: &str = "picortex";
pub const TOOL_REQUEST_ACCESS: &str = "request_access";
pub const TOOL_IMPORT_FILE: &str = "import_file";

/// `from_chat` naming the owner's own workspace (their 1:1 chat's home).
pub const OWNER_WORKSPACE: &str = "owner";

/// One thing the agent asked for during a turn.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AccessRequest {
    /// Read access, for one answer, to `what`: a path relative to the owner's workspace.
    Read { what: String, why: String },
    /// A copy of `path` (relative to `from_chat`'s home; `owner` for the owner's workspace) into
    /// the asking chat's `inbox/`.
    Import {
        from_chat: String,
        path: String,
        why: String,
    },
}

impl AccessRequest {
    pub fn path(&self) -> &str {
        match self {
            AccessRequest::Read { what, .. } => what,
            AccessRequest::Import { path, .. } => path,
        }
    }
    pub fn why(&self) -> &str {
        match self {
            AccessRequest::Read { why, .. } | AccessRequest::Import { why, .. } => why,
        }
    }
    pub fn kind_str(&self) -> &'static str {
        match self {
            AccessRequest::Read { .. } => "read",
            AccessRequest::Import { .. } => "import",
        }
    }

    /// The path well-formed, `why` bounded, `from_chat` the owner's workspace or a Linq id.
    pub fn validate(&self) -> Result<(), String> {
        check_relative_path(self.path())?;
        let why = self.why();
        if why.len() > MAX_WHY_BYTES || why.chars().any(|c| c.is_control() && c != '\n') {
            return Err(format!(
                "why: longer than {MAX_WHY_BYTES} bytes or has control characters"
            ));
        }
        if let AccessRequest::Import { from_chat, .. } = self {
            if from_chat != OWNER_WORKSPACE && !crate::ids::is_linq_id(from_chat) {
                return Err("from_chat is neither \"owner\" nor a chat id".into());
            }
        }
        Ok(())
    }
}

/// A path relative to a chat's home: not empty, not absolute, no `.`/`..`/empty components, no
/// NUL or control characters, bounded. The helper still opens it with RESOLVE_BENEATH and
/// RESOLVE_NO_SYMLINKS: this only keeps nonsense out of the log and the owner's DM.
pub fn check_relative_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > MAX_PATH_BYTES {
        return Err(format!(
            "path is empty or longer than {MAX_PATH_BYTES} bytes"
        ));
    }
    if p.starts_with('/') {
        return Err("path is absolute; give it relative to the workspace".into());
    }
    if p.chars().any(char::is_control) {
        return Err("path has control characters".into());
    }
    let parts: Vec<&str> = p.split('/').collect();
    if parts.len() > MAX_PATH_DEPTH {
        return Err(format!("path is deeper than {MAX_PATH_DEPTH} components"));
    }
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err("path has an empty, \".\" or \"..\" component".into());
    }
    Ok(())
}

/// Where grant `n` (0-based) of a turn is mounted.
pub fn shared_mount(n: usize) -> String {
    format!("{SHARED_DIR}/{n}")
}

/// The line the gateway adds to a granted turn's prompt for each grant: what the owner approved
/// and where the agent finds it. One format, read by the stand-in agent in tests.
pub fn grant_note(what: &str, mount: &str) -> String {
    format!("{GRANT_NOTE_PREFIX} {what} is readable at {mount}")
}
pub const GRANT_NOTE_PREFIX: &str = "[picortex grant]";

/// The line a re-run after an approved import gets: where the copy landed (relative to home).
pub fn import_note(path: &str, dest: &str) -> String {
    format!("{IMPORT_NOTE_PREFIX} {path} was copied into this chat's workspace at ~/{dest}")
}
pub const IMPORT_NOTE_PREFIX: &str = "[picortex import]";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_and_plain() {
        for ok in ["notes.txt", "a/b/c.md", "dir with space/x", "ünï.txt"] {
            check_relative_path(ok).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "a/.",
            "a\nb",
            "a\0b",
            &"a/".repeat(20),
            &"x".repeat(MAX_PATH_BYTES + 1),
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_round_trip_and_are_bounded() {
        let r = AccessRequest::Read {
            what: "notes/plan.md".into(),
            why: "they asked about the plan".into(),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<AccessRequest>(&j).unwrap(), r);
        r.validate().unwrap();
        let long = AccessRequest::Read {
            what: "a".into(),
            why: "w".repeat(MAX_WHY_BYTES + 1),
        };
        assert!(long.validate().is_err());
        let bad_chat = AccessRequest::Import {
            from_chat: "../x".into(),
            path: "a".into(),
            why: String::new(),
        };
        assert!(bad_chat.validate().is_err());
        assert!(serde_json::from_str::<AccessRequest>(
            r#"{"kind":"read","what":"a","why":"b","extra":1}"#
        )
        .is_err());
    }
}
