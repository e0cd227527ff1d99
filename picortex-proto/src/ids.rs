//! Names derived from chat and turn ids (SPEC P1). A chat id is whatever Linq says it is (a UUID
//! today); nothing derived from it is ever used before it passes `ChatId::parse`.

use sha2::{Digest, Sha256};
use std::fmt;

/// Where chat homes live; the helper refuses any path outside it.
pub const CHATS_DIR: &str = "/var/lib/picortex/chats";
/// Parent of every chat slice (`picortex-chat-<hex>.slice` nests under it by systemd's dash rule).
pub const CHAT_SLICE_PARENT: &str = "picortex-chat.slice";
pub const USER_PREFIX: &str = "chat-";
/// Chat users' uids and gids come from a range of their own, far from the system range
/// (100–999 on Debian, shared with every package's service users) and from the ranges systemd
/// allocates (dynamic users, homed, nspawn containers): however many chats there are, they never
/// take an id the system needs. See systemd's UIDS-GIDS.md.
pub const CHAT_ID_MIN: u32 = 1_900_000_000;
pub const CHAT_ID_MAX: u32 = 1_900_999_999;
pub const TURN_UNIT_PREFIX: &str = "picortex-turn-";
/// The accounts a turn's user database holds besides its chat's own user and group: in a
/// turn, `/etc/passwd` and `/etc/group` are the helper's view with only these (its `view`
/// module writes it), and picortex-run refuses to run a turn in a view that is not that (its
/// `userdb`).
pub const VIEW_USERS: &[&str] = &["root", "nobody"];
pub const VIEW_GROUPS: &[&str] = &["root", "nogroup"];
/// In a turn, `/etc/picortex` is the helper's view of it (bound read-only over the operator's,
/// which names the owner): [`TURN_AGENT_CONFIG`], the `[agent]` table of `picortexd.toml`
/// alone, which picortex-run reads, and a placeholder of the agent's credential
/// ([`API_KEY_CREDENTIAL`] or [`OAUTH_CREDENTIAL`], see [`crate::egress`]), readable by the
/// chat's user alone. Files rather than systemd
/// credentials: each unit's credentials are a mount in the host's namespace for as long as it
/// runs (spares included), and every unit start pays for every mount there.
pub const TURN_CONFIG_DIR: &str = "/etc/picortex";
pub const TURN_AGENT_CONFIG: &str = "agent.toml";
/// The agent's credentials, by the names the operator gives them in
/// `/etc/picortex/credentials/` and a turn finds them under in its `TURN_CONFIG_DIR`: the
/// Anthropic API key, or a Claude subscription token (`claude setup-token`).
pub const API_KEY_CREDENTIAL: &str = "anthropic-api-key";
pub const OAUTH_CREDENTIAL: &str = "claude-oauth-token";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("chat id must be 1-64 characters of [A-Za-z0-9-], got {0:?}")]
    BadChatId(String),
    #[error("turn id must be 32 lowercase hex characters, got {0:?}")]
    BadTurnId(String),
    #[error("chat tag must be 8-16 lowercase hex characters, got {0:?}")]
    BadTag(String),
}

/// The one rule for every id Linq gives us (chats, messages, events, attachments): UUIDs today,
/// so 1-64 characters of `[A-Za-z0-9-]`. The gateway refuses a webhook with any other id before it
/// reaches the log, the Linq client refuses to put one in a URL, and the helper refuses it as a
/// chat id: all three ask this function.
pub fn is_linq_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A validated Linq chat id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChatId(String);

impl ChatId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if is_linq_id(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::BadChatId(s.chars().take(80).collect()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The full sha256 of the chat id, lowercase hex. The first 8 characters are the chat's tag;
    /// on a collision the helper takes more of them (`ChatTag::with_len`).
    pub fn digest_hex(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
    /// The default tag: 8 hex characters of sha256(chat id).
    pub fn tag(&self) -> ChatTag {
        self.tag_with_len(8)
    }
    pub fn tag_with_len(&self, len: usize) -> ChatTag {
        let len = len.clamp(8, 16);
        ChatTag(self.digest_hex()[..len].to_owned())
    }
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The short hex that names a chat's user, home and slice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChatTag(String);

impl ChatTag {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = (8..=16).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::BadTag(s.chars().take(40).collect()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn user_name(&self) -> String {
        format!("{USER_PREFIX}{}", self.0)
    }
    pub fn home(&self) -> String {
        format!("{CHATS_DIR}/{}", self.0)
    }
    pub fn slice(&self) -> String {
        format!("picortex-chat-{}.slice", self.0)
    }
    /// Recover the tag from a chat user name, for picortex-run's self-checks.
    pub fn from_user_name(name: &str) -> Result<Self, IdError> {
        name.strip_prefix(USER_PREFIX)
            .ok_or_else(|| IdError::BadTag(name.to_owned()))
            .and_then(Self::parse)
    }
}

impl fmt::Display for ChatTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A turn id: 32 lowercase hex characters (a UUID without dashes), unique for all time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TurnId(String);

impl TurnId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::BadTurnId(s.chars().take(40).collect()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn unit_name(&self) -> String {
        format!("{TURN_UNIT_PREFIX}{}.service", self.0)
    }
    /// The turn id of a unit name this program family created, if it is one.
    pub fn from_unit_name(unit: &str) -> Option<Self> {
        unit.strip_prefix(TURN_UNIT_PREFIX)?
            .strip_suffix(".service")
            .and_then(|s| Self::parse(s).ok())
    }
}

impl fmt::Display for TurnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent session id: a UUID in its hyphenated form (8-4-4-4-12 hex digits), as the CLI wants
/// it for `--session-id`/`--resume` and as the result document must carry it.
pub fn is_session_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// systemd's object path for a unit name (`sd_bus_path_encode`): every byte that is not
/// `[A-Za-z0-9]` becomes `_xx`, and a leading digit is escaped too.
pub fn unit_object_path(unit: &str) -> String {
    let mut out = String::from("/org/freedesktop/systemd1/unit/");
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_first_8_hex_of_sha256() {
        let id = ChatId::parse("4c6113a3-cb58-46e5-a29c-326444779872").unwrap();
        let full = id.digest_hex();
        assert_eq!(full.len(), 64);
        assert_eq!(id.tag().as_str(), &full[..8]);
        assert_eq!(id.tag().user_name(), format!("chat-{}", &full[..8]));
        assert_eq!(
            id.tag().home(),
            format!("/var/lib/picortex/chats/{}", &full[..8])
        );
        assert_eq!(
            id.tag().slice(),
            format!("picortex-chat-{}.slice", &full[..8])
        );
        // sha256("abc") is a published vector.
        assert_eq!(ChatId::parse("abc").unwrap().tag().as_str(), "ba7816bf");
    }

    #[test]
    fn chat_ids_that_could_escape_are_refused() {
        for bad in [
            "",
            "../etc",
            "a/b",
            "a b",
            "a.b",
            "x\n",
            &"a".repeat(65),
            "é",
        ] {
            assert!(ChatId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn turn_ids_and_unit_names_round_trip() {
        let t = TurnId::parse("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            t.unit_name(),
            "picortex-turn-0123456789abcdef0123456789abcdef.service"
        );
        assert_eq!(TurnId::from_unit_name(&t.unit_name()), Some(t));
        assert!(TurnId::parse("0123456789ABCDEF0123456789abcdef").is_err());
        assert!(TurnId::from_unit_name("picortexd.service").is_none());
    }

    #[test]
    fn tags_from_user_names() {
        assert_eq!(
            ChatTag::from_user_name("chat-deadbeef").unwrap().as_str(),
            "deadbeef"
        );
        assert!(ChatTag::from_user_name("root").is_err());
        assert!(ChatTag::from_user_name("chat-../../x").is_err());
    }

    #[test]
    fn session_ids_are_hyphenated_uuids() {
        assert!(is_session_id("c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10"));
        assert!(is_session_id("C91FB957-2F1E-4C4B-9A51-5B1D0C3E7A10"));
        for bad in [
            "",
            "c91fb9572f1e4c4b9a515b1d0c3e7a10",
            "c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a1",
            "c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a100",
            "c91fb957-2f1e-4c4b-9a51_5b1d0c3e7a10",
            "g91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10",
            "c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a1\n",
            "../../../../../../../../../etc/passwd",
        ] {
            assert!(!is_session_id(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn object_paths_match_systemd_escaping() {
        assert_eq!(
            unit_object_path("picortexd.service"),
            "/org/freedesktop/systemd1/unit/picortexd_2eservice"
        );
        assert_eq!(
            unit_object_path("picortex-turn-0a.service"),
            "/org/freedesktop/systemd1/unit/picortex_2dturn_2d0a_2eservice"
        );
    }
}
