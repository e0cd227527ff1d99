//! The owner's commands in a chat (SPEC A5, C1, W1): `/picortex status|attention|allow|block|new|
//! budget|help`, and in the owner's own DM the short answers to a quarantine notice, `allow <n>`
//! and `block <n>`. Only the owner's messages are commands (the caller checks the sender);
//! from anyone else the same text is an ordinary message. Commands are answered by the gateway
//! itself, without a turn. `parse` is pure; `execute` applies a command to the log. The
//! administrator's `org.picortex.Gateway1` methods (`gateway1`) are the same commands: they
//! build a `Command` with the same rules (`limits`, `attention::Mode::parse`) and `execute` it.

use rusqlite::Connection;

use crate::attention::Mode;
use crate::quarantine::Access;
use crate::store::authority::{self, Released};
use crate::store::queries::Chat;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Status,
    /// `None`: back to the default for the chat's kind.
    Attention(Option<Mode>),
    /// The chat's memory limit in bytes; `None`: the configured default.
    MemoryMax(Option<u64>),
    /// The agent's permission mode; `None`: the configured default.
    PermissionMode(Option<&'static str>),
    /// `allow <n>` / `block <n>`: the owner's word on pending chat `n`.
    Decide {
        number: i64,
        allow: bool,
    },
    New,
    /// A daily budget in USD; `None` removes the chat's own budget (the default applies).
    Budget(Option<f64>),
    Help,
    /// `yes <n>` / `no <n>` / `always <n>`: the owner's word on disclosure `n` (SPEC C2).
    Consent {
        number: i64,
        answer: crate::consent::Answer,
    },
    /// `/picortex revoke <n>`: end standing grant `n` of a chat's manifest.
    Revoke(i64),
}

/// What the owner's text is, when it is meant as a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Command(Command),
    /// Meant as a command but not one: the reply says why and what would work.
    Invalid(String),
}

pub const PREFIX: &str = "/picortex";

pub const HELP: &str = "picortex commands (only yours count):
/picortex status — mode, session, queue, today's cost, recent decisions
/picortex attention <mode> — always, mentions-only, discriminate, discriminate-quiet, silent, default
/picortex new — start a fresh agent session for this chat
/picortex budget <usd>|off — this chat's daily budget
/picortex memory <size>|default — this chat's memory limit, 32M to 64G
/picortex permission <mode>|default — the agent's permission mode here
/picortex allow <n> / block <n> — answer a waiting chat (in our DM only; \"allow 3\" works too)
yes <n> / no <n> / always <n> — answer an agent's request for your files (in our DM only)
/picortex revoke <n> — end a standing grant (\"always\") listed by status
/picortex help — this list";

/// Parse the owner's message. `in_owner_dm`: it was sent in the owner's 1:1 chat with the bot,
/// the only place approvals count.
pub fn parse(text: &str, in_owner_dm: bool) -> Option<Parsed> {
    let t = text.trim();
    let words: Vec<&str> = t.split_whitespace().collect();
    let (first, rest) = words.split_first()?;
    if !first.eq_ignore_ascii_case(PREFIX) {
        // The short answers to a notice, in the owner's DM only.
        return match (in_owner_dm, words.as_slice()) {
            (true, [verb, n]) if is_decision(verb) => Some(decision(verb, n, true)),
            // "no thanks" to the bot is conversation, not an answer: only with a number.
            (true, [verb, n])
                if crate::consent::Answer::parse(verb).is_some()
                    && n.trim_start_matches('#').parse::<i64>().is_ok() =>
            {
                Some(decision(verb, n, true))
            }
            _ => None,
        };
    }
    let Some((verb, args)) = rest.split_first() else {
        return Some(Parsed::Command(Command::Help));
    };
    let verb = verb.to_ascii_lowercase();
    let bad = |why: String| Some(Parsed::Invalid(format!("{why}\n\n{HELP}")));
    match (verb.as_str(), args) {
        ("status", []) => Some(Parsed::Command(Command::Status)),
        ("help", []) => Some(Parsed::Command(Command::Help)),
        ("new", []) => Some(Parsed::Command(Command::New)),
        ("attention", [m]) => match attention(m) {
            Ok(c) => Some(Parsed::Command(c)),
            Err(e) => bad(e),
        },
        ("budget", [v]) => match budget(v) {
            Ok(c) => Some(Parsed::Command(c)),
            Err(e) => bad(e),
        },
        ("memory", [v]) => match memory_max(v) {
            Ok(c) => Some(Parsed::Command(c)),
            Err(e) => bad(e),
        },
        ("permission", [v]) => match permission_mode(v) {
            Ok(c) => Some(Parsed::Command(c)),
            Err(e) => bad(e),
        },
        (v, [n]) if is_decision(v) || crate::consent::Answer::parse(v).is_some() => {
            Some(decision(v, n, in_owner_dm))
        }
        ("revoke", [n]) => match n.trim_start_matches('#').parse::<i64>() {
            Ok(n) if n > 0 => Some(Parsed::Command(Command::Revoke(n))),
            _ => bad(format!("\"{n}\" is not a grant's number.")),
        },
        (v, _) => bad(format!(
            "\"{PREFIX} {v}\" with these arguments is not a command."
        )),
    }
}

fn is_decision(verb: &str) -> bool {
    verb.eq_ignore_ascii_case("allow") || verb.eq_ignore_ascii_case("block")
}

fn decision(verb: &str, n: &str, in_owner_dm: bool) -> Parsed {
    if !in_owner_dm {
        return Parsed::Invalid(
            "Approvals count only in your 1:1 chat with me; send it there.".into(),
        );
    }
    match n.trim_start_matches('#').parse::<i64>() {
        Ok(number) if number > 0 => match crate::consent::Answer::parse(verb) {
            Some(answer) => Parsed::Command(Command::Consent { number, answer }),
            None => Parsed::Command(Command::Decide {
                number,
                allow: verb.eq_ignore_ascii_case("allow"),
            }),
        },
        _ => Parsed::Invalid(format!(
            "\"{n}\" is not a number from my notices; use it as in \"allow 3\" or \"yes 3\"."
        )),
    }
}

// Each setting's command, built by the one rule for its value; "default" (or "off") removes the
// chat's own setting. The chat command and Gateway1's Set* methods both come through here.

pub fn attention(v: &str) -> Result<Command, String> {
    if crate::limits::is_reset(v) {
        return Ok(Command::Attention(None));
    }
    Mode::parse(v)
        .map(|m| Command::Attention(Some(m)))
        .map_err(|e| format!("attention: {e}, or default"))
}

pub fn budget(v: &str) -> Result<Command, String> {
    crate::limits::daily_budget(v)
        .map(Command::Budget)
        .map_err(|e| format!("budget: {e}"))
}

pub fn memory_max(v: &str) -> Result<Command, String> {
    if crate::limits::is_reset(v) {
        return Ok(Command::MemoryMax(None));
    }
    crate::limits::memory_max(v)
        .map(|b| Command::MemoryMax(Some(b)))
        .map_err(|e| format!("memory: {e}, or default"))
}

pub fn permission_mode(v: &str) -> Result<Command, String> {
    if crate::limits::is_reset(v) {
        return Ok(Command::PermissionMode(None));
    }
    crate::limits::permission_mode(v)
        .map(|m| Command::PermissionMode(Some(m)))
        .map_err(|e| format!("permission: {e}, or default"))
}

/// What executing a command changed, beyond its reply.
#[derive(Debug, Default)]
pub struct Effects {
    pub reply: String,
    /// Held turns became queued: the dispatcher should look.
    pub wake_turns: bool,
    /// An approved import waits for the consent worker.
    pub wake_consent: bool,
    /// The command queued messages of its own (a refusal to a group).
    pub wake_outbox: bool,
}

/// Who sent the command, and its Linq message id (an approval records both).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub sender: &'a str,
    pub message: &'a str,
}

/// Apply `cmd`, issued by the owner in `chat`, to the log.
pub fn execute(
    t: &Connection,
    chat: &Chat,
    cmd: &Command,
    origin: Origin<'_>,
) -> Result<Effects, StoreError> {
    let mut fx = Effects::default();
    fx.reply = match cmd {
        Command::Help => HELP.to_owned(),
        Command::Status => {
            let mut s = authority::status_text(t, chat)?;
            let manifest = crate::consent::store::manifest_lines(t, &chat.id)?;
            if !manifest.is_empty() {
                s.push_str("\nstanding grants:\n");
                s.push_str(&manifest.join("\n"));
            }
            let asks = crate::consent::store::pending_lines(t)?;
            if !chat.is_group && !asks.is_empty() {
                s.push_str("\nrequests waiting for you:\n");
                s.push_str(&asks.join("\n"));
            }
            s
        }
        Command::Consent { number, answer } => {
            let a = crate::consent::store::answer(t, *number, *answer, origin.sender, origin.message)?;
            fx.wake_turns |= a.wake_turns;
            fx.wake_consent |= a.wake_imports;
            fx.wake_outbox = true;
            a.reply
        }
        Command::Revoke(n) => crate::consent::store::revoke(t, *n)?,
        Command::Attention(m) => {
            authority::set_attention(t, &chat.id, *m)?;
            match m {
                Some(m) => format!("Attention for this chat is now {m}."),
                None => format!(
                    "Attention for this chat is back to the default, {}.",
                    Mode::default_for(chat.is_group)
                ),
            }
        }
        Command::MemoryMax(b) => {
            authority::set_memory_max(t, &chat.id, *b)?;
            match b {
                Some(b) => format!(
                    "This chat's memory limit is now {} (from its next turn).",
                    crate::limits::human_size(*b)
                ),
                None => "This chat's own memory limit is off; the default applies.".into(),
            }
        }
        Command::PermissionMode(m) => {
            authority::set_permission_mode(t, &chat.id, *m)?;
            match m {
                Some(m) => format!("The agent's permission mode here is now {m}."),
                None => "This chat's own permission mode is off; the default applies.".into(),
            }
        }
        Command::New => {
            let sid = authority::new_session(t, &chat.id)?;
            format!("Fresh start: the next message here begins a new agent session ({sid}).")
        }
        Command::Budget(b) => {
            authority::set_budget(t, &chat.id, *b)?;
            match b {
                Some(v) => format!("This chat's daily budget is now ${v:.2} (UTC days)."),
                None => "This chat's own budget is off; the default applies.".into(),
            }
        }
        Command::Decide { number, allow } => match authority::chat_by_number(t, *number)? {
            None => format!("No chat has number {number}. \"/picortex status\" in our DM lists the waiting ones."),
            Some(target) => {
                let (reply, wake) = decide(t, &target, *allow)?;
                fx.wake_turns = wake;
                reply
            }
        },
    };
    Ok(fx)
}

/// The owner's (or an administrator's) word on a chat: allow or block it, releasing or setting
/// aside its held turns. Returns the answer and whether turns became runnable.
pub fn decide(t: &Connection, target: &Chat, allow: bool) -> Result<(String, bool), StoreError> {
    let (access, reason) = crate::quarantine::decide(target.access, allow);
    let Released { queued, dropped } = authority::set_access(t, &target.id, access, reason)?;
    let who = target.label();
    let number = target
        .pending_no
        .map(|n| format!(" (#{n})"))
        .unwrap_or_default();
    tracing::info!(chat = %target.id, access = %access, released = queued, dropped, "{who} {access} ({reason})");
    let reply = match access {
        Access::Allowed if queued > 0 => format!(
            "Allowed {who}{number}. Answering its {queued} waiting message{} now.",
            if queued == 1 { "" } else { "s" }
        ),
        Access::Allowed => {
            format!("Allowed {who}{number}. It gets an agent from its next message.")
        }
        _ => format!(
            "Blocked {who}{number}. Nothing will run for it{}; its messages stay in the log.",
            if dropped > 0 {
                format!(
                    " ({dropped} waiting message{} set aside)",
                    if dropped == 1 { "" } else { "s" }
                )
            } else {
                String::new()
            }
        ),
    };
    Ok((reply, queued > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(t: &str, dm: bool) -> Option<Parsed> {
        parse(t, dm)
    }

    #[test]
    fn slash_commands_parse() {
        use Command::*;
        let c = |t| match cmd(t, false) {
            Some(Parsed::Command(c)) => c,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(c("/picortex status"), Status);
        assert_eq!(c("/PICORTEX   help "), Help);
        assert_eq!(c("/picortex"), Help);
        assert_eq!(c("/picortex new"), New);
        assert_eq!(
            c("/picortex attention always"),
            Attention(Some(Mode::Always))
        );
        assert_eq!(
            c("/picortex attention Discriminate-Quiet"),
            Attention(Some(Mode::DiscriminateQuiet))
        );
        assert_eq!(c("/picortex attention default"), Attention(None));
        assert_eq!(c("/picortex memory 512M"), MemoryMax(Some(512 << 20)));
        assert_eq!(c("/picortex memory default"), MemoryMax(None));
        assert_eq!(c("/picortex permission plan"), PermissionMode(Some("plan")));
        assert_eq!(c("/picortex budget 2.5"), Budget(Some(2.5)));
        assert_eq!(c("/picortex budget $3"), Budget(Some(3.0)));
        assert_eq!(c("/picortex budget off"), Budget(None));
    }

    #[test]
    fn bad_commands_say_why() {
        for t in [
            "/picortex attention loud",
            "/picortex budget lots",
            "/picortex budget -1",
            "/picortex budget 1e9",
            "/picortex memory lots",
            "/picortex memory 1M",
            "/picortex permission yolo",
            "/picortex frobnicate",
            "/picortex status now",
        ] {
            match cmd(t, true) {
                Some(Parsed::Invalid(why)) => assert!(why.contains("/picortex help"), "{t}: {why}"),
                other => panic!("{t}: {other:?}"),
            }
        }
    }

    #[test]
    fn approvals_count_only_in_the_owners_dm() {
        assert_eq!(
            cmd("allow 3", true),
            Some(Parsed::Command(Command::Decide {
                number: 3,
                allow: true
            }))
        );
        assert_eq!(
            cmd("Block #12", true),
            Some(Parsed::Command(Command::Decide {
                number: 12,
                allow: false
            }))
        );
        assert_eq!(
            cmd("/picortex allow 3", true),
            Some(Parsed::Command(Command::Decide {
                number: 3,
                allow: true
            }))
        );
        assert_eq!(
            cmd("allow 3", false),
            None,
            "bare words in a group are just text"
        );
        assert!(matches!(
            cmd("/picortex allow 3", false),
            Some(Parsed::Invalid(_))
        ));
        assert!(matches!(cmd("allow x", true), Some(Parsed::Invalid(_))));
        assert!(matches!(cmd("allow 0", true), Some(Parsed::Invalid(_))));
    }

    #[test]
    fn consent_answers_count_only_in_the_owners_dm() {
        use crate::consent::Answer;
        assert_eq!(
            cmd("yes 4", true),
            Some(Parsed::Command(Command::Consent {
                number: 4,
                answer: Answer::Yes
            }))
        );
        assert_eq!(
            cmd("Always #2", true),
            Some(Parsed::Command(Command::Consent {
                number: 2,
                answer: Answer::Always
            }))
        );
        assert_eq!(
            cmd("no 1", true),
            Some(Parsed::Command(Command::Consent {
                number: 1,
                answer: Answer::No
            }))
        );
        assert_eq!(cmd("yes 4", false), None, "in a group it is just text");
        assert!(matches!(
            cmd("/picortex yes 4", false),
            Some(Parsed::Invalid(_))
        ));
        assert_eq!(cmd("yes please", true), None, "conversation");
        assert_eq!(cmd("no thanks", true), None, "conversation");
        assert_eq!(cmd("yes", true), None);
        assert_eq!(
            cmd("/picortex revoke 3", false),
            Some(Parsed::Command(Command::Revoke(3)))
        );
    }

    #[test]
    fn ordinary_text_is_not_a_command() {
        for t in [
            "hello",
            "allow me to explain",
            "please block 3 hours",
            "",
            "/pico status",
        ] {
            assert_eq!(cmd(t, true), None, "{t}");
        }
    }
}
