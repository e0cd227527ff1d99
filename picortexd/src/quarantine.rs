//! Quarantine (SPEC C1, W1): nobody gets an agent unless the owner says so. A chat is
//! `allowed`, `pending` or `blocked`. A 1:1 chat with one of the owner's handles, and a group the
//! owner is in, are allowed on their own; anything else is pending — no Unix user, no turn, no
//! reply — until the owner answers `allow <n>` or `block <n>` from their own DM. This module holds
//! the state machine and the owner's notice; the store keeps the state (`chats.access`).

use std::fmt;

use crate::owner::Owner;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allowed,
    Pending,
    Blocked,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Allowed => "allowed",
            Access::Pending => "pending",
            Access::Blocked => "blocked",
        }
    }

    /// The stored value. Anything unreadable is pending: the gate fails closed.
    pub fn from_stored(s: Option<&str>) -> Access {
        match s {
            Some("allowed") => Access::Allowed,
            Some("blocked") => Access::Blocked,
            _ => Access::Pending,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known about a chat when its access is first decided or reconsidered.
#[derive(Debug, Clone)]
pub struct ChatFacts<'a> {
    pub is_group: bool,
    /// Everyone in the chat but the bot, as far as the log knows (senders included).
    pub members: &'a [String],
    /// Whether the group's participants were read from Linq (a group's webhooks name only the
    /// sender; until the list is read, the owner's absence proves nothing).
    pub members_known: bool,
}

/// A chat's access as decided without the owner's word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Automatic {
    Allowed(&'static str),
    /// Pending; `notify` says whether the owner can be told now (a group whose participants are
    /// not known yet waits for them: the owner may be in it).
    Pending {
        notify: bool,
    },
}

pub fn classify(owner: &Owner, c: &ChatFacts<'_>) -> Automatic {
    let owner_there = owner.any(c.members.iter().map(String::as_str));
    match (c.is_group, owner_there) {
        (false, true) => Automatic::Allowed("a 1:1 chat with the owner's handle"),
        (true, true) => Automatic::Allowed("the owner is a participant of this group"),
        (false, false) => Automatic::Pending { notify: true },
        (true, false) => Automatic::Pending {
            notify: c.members_known,
        },
    }
}

/// The owner's word on a chat. Always allowed: the owner can change their mind.
pub fn decide(current: Access, allow: bool) -> (Access, &'static str) {
    match (current, allow) {
        (_, true) => (Access::Allowed, "allowed by the owner"),
        (_, false) => (Access::Blocked, "blocked by the owner"),
    }
}

/// The smallest positive number no pending chat holds.
pub fn next_number(held_by_pending: &[i64]) -> i64 {
    (1..)
        .find(|n| !held_by_pending.contains(n))
        .unwrap_or(i64::MAX)
}

/// What the owner's DM says about a new pending chat.
pub struct Notice<'a> {
    pub number: i64,
    pub is_group: bool,
    pub group_name: Option<&'a str>,
    pub sender: &'a str,
    pub members: &'a [String],
    pub first_message: &'a str,
}

/// Longest quote of the first message in a notice, in characters.
pub const QUOTE_CHARS: usize = 200;

pub fn notice_text(n: &Notice<'_>) -> String {
    let quote = defang(&truncate(n.first_message.trim(), QUOTE_CHARS));
    let who = if n.is_group {
        let name = n
            .group_name
            .map(|g| format!(" \"{}\"", defang(&truncate(g, 60))))
            .unwrap_or_default();
        let members = if n.members.is_empty() {
            "participants not known yet".to_owned()
        } else {
            n.members.join(", ")
        };
        format!(
            "A group chat{name} ({members}) is waiting for you. {} wrote",
            n.sender
        )
    } else {
        format!("{} texted me in a 1:1 chat", n.sender)
    };
    format!(
        "{who}: \"{quote}\"\nNothing runs for it until you decide. Reply \"allow {0}\" to give it an agent, or \"block {0}\" to ignore it.",
        n.number
    )
}

fn truncate(s: &str, max: usize) -> String {
    let mut t: String = s.chars().take(max).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

/// Break anything that looks like a link: Linq refuses a new chat's first message with a URL
/// (code 1005), and the owner should not be one tap away from a stranger's link.
pub fn defang(s: &str) -> String {
    s.split_inclusive(char::is_whitespace)
        .map(|w| {
            let lw = w.to_ascii_lowercase();
            if lw.contains("://") || lw.starts_with("www.") {
                w.replace("://", "[:]//").replace('.', "[.]")
            } else {
                w.to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner::new(&["+15550002000".into()])
    }

    fn facts(is_group: bool, members: &[String], known: bool) -> ChatFacts<'_> {
        ChatFacts {
            is_group,
            members,
            members_known: known,
        }
    }

    #[test]
    fn the_owners_dm_and_groups_are_allowed_strangers_wait() {
        let me = vec!["+15550002000".to_owned()];
        let stranger = vec!["+15557770000".to_owned()];
        let mixed = vec!["+15557770000".to_owned(), "+1 555 000 2000".to_owned()];
        assert!(matches!(
            classify(&owner(), &facts(false, &me, false)),
            Automatic::Allowed(_)
        ));
        assert_eq!(
            classify(&owner(), &facts(false, &stranger, false)),
            Automatic::Pending { notify: true }
        );
        assert!(matches!(
            classify(&owner(), &facts(true, &mixed, false)),
            Automatic::Allowed(_)
        ));
        assert_eq!(
            classify(&owner(), &facts(true, &stranger, false)),
            Automatic::Pending { notify: false },
            "a group whose members are unknown may still hold the owner"
        );
        assert_eq!(
            classify(&owner(), &facts(true, &stranger, true)),
            Automatic::Pending { notify: true }
        );
        assert_eq!(
            classify(&Owner::new(&[]), &facts(false, &me, true)),
            Automatic::Pending { notify: true },
            "without configured handles nobody is the owner"
        );
    }

    #[test]
    fn the_owner_can_change_their_mind() {
        assert_eq!(decide(Access::Pending, true).0, Access::Allowed);
        assert_eq!(decide(Access::Allowed, false).0, Access::Blocked);
        assert_eq!(decide(Access::Blocked, true).0, Access::Allowed);
    }

    #[test]
    fn numbers_are_the_smallest_free() {
        assert_eq!(next_number(&[]), 1);
        assert_eq!(next_number(&[1, 2, 4]), 3);
        assert_eq!(next_number(&[2]), 1);
    }

    #[test]
    fn stored_values_round_trip_and_garbage_is_pending() {
        for a in [Access::Allowed, Access::Pending, Access::Blocked] {
            assert_eq!(Access::from_stored(Some(a.as_str())), a);
        }
        assert_eq!(Access::from_stored(None), Access::Pending);
        assert_eq!(Access::from_stored(Some("Allowed ")), Access::Pending);
    }

    #[test]
    fn the_notice_says_who_what_and_how_to_answer_without_links() {
        let long = format!("see https://evil.example/x {}", "a".repeat(300));
        let t = notice_text(&Notice {
            number: 3,
            is_group: false,
            group_name: None,
            sender: "+15557770000",
            members: &[],
            first_message: &long,
        });
        assert!(t.contains("+15557770000"), "{t}");
        assert!(t.contains("allow 3") && t.contains("block 3"), "{t}");
        assert!(
            !t.contains("https://") && !t.contains("evil.example"),
            "{t}"
        );
        assert!(t.contains('…'), "truncated: {t}");
        assert!(t.chars().count() < 450, "{}", t.chars().count());
        let members = vec!["+15557770000".to_owned(), "+15557770001".to_owned()];
        let g = notice_text(&Notice {
            number: 1,
            is_group: true,
            group_name: Some("Poker night"),
            sender: "+15557770001",
            members: &members,
            first_message: "hi all",
        });
        assert!(g.contains("group chat \"Poker night\""), "{g}");
        assert!(g.contains("+15557770000, +15557770001"), "{g}");
    }

    #[test]
    fn defang_breaks_links_only() {
        assert_eq!(defang("go to www.x.com now"), "go to www[.]x[.]com now");
        assert_eq!(defang("http://a.b"), "http[:]//a[.]b");
        assert_eq!(defang("end. of story"), "end. of story");
    }
}
