//! The consent broker (SPEC C2, C3, W1): when a turn's agent asks for something outside its
//! chat (a file of the owner's workspace, or a copy from another chat), the request becomes a
//! pending disclosure with a TTL; the asking chat gets one short acknowledgement and the owner's
//! DM the context and the short answers `yes N` / `no N` / `always N`. Only the owner's own live
//! message in their DM counts (the same rule as every approval: `commands::parse` with the
//! sender checked by `ingest`). `yes` re-runs the original question as a new turn with a
//! single-use grant (the helper binds a copy of the file read-only into that one turn); `always`
//! also records a standing grant in the chat's manifest; `no` and the TTL answer the chat
//! politely without the data. An approved import is copied by the helper (`worker`).
//!
//! This file holds the decisions as plain functions: the state machine of a disclosure, its
//! numbers and texts. `store` applies them to the log; `worker` runs the timer and the imports.

pub mod store;
pub mod worker;

use std::fmt;

/// A disclosure's state. `pending` waits for the owner; every other state is final except
/// `approved`, which a turn consumes (read) or the helper's copy completes (import).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
    /// A read grant, used by its one turn.
    Consumed,
    /// An import, copied.
    Copied,
    /// Could not be carried out (no such workspace, the helper refused the file).
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Consumed => "consumed",
            Status::Copied => "copied",
            Status::Failed => "failed",
        }
    }
    /// Anything unreadable is failed: it never grants anything.
    pub fn from_stored(s: &str) -> Status {
        match s {
            "pending" => Status::Pending,
            "approved" => Status::Approved,
            "denied" => Status::Denied,
            "expired" => Status::Expired,
            "consumed" => Status::Consumed,
            "copied" => Status::Copied,
            _ => Status::Failed,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The audit steps of a disclosure (a `consent_events` row and a journal entry each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Requested,
    Acknowledged,
    Asked,
    Approved,
    Denied,
    Expired,
    Consumed,
    Copied,
    Failed,
    /// An answer that came too late or twice, and changed nothing.
    Ignored,
    Revoked,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Requested => "requested",
            Step::Acknowledged => "acknowledged",
            Step::Asked => "asked",
            Step::Approved => "approved",
            Step::Denied => "denied",
            Step::Expired => "expired",
            Step::Consumed => "consumed",
            Step::Copied => "copied",
            Step::Failed => "failed",
            Step::Ignored => "ignored",
            Step::Revoked => "revoked",
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Import,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Import => "import",
        }
    }
    pub fn from_stored(s: &str) -> Kind {
        if s == "import" {
            Kind::Import
        } else {
            Kind::Read
        }
    }
}

/// The owner's short answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Yes,
    No,
    /// Yes, and from now on (a standing grant in the chat's manifest).
    Always,
}

impl Answer {
    pub fn parse(verb: &str) -> Option<Answer> {
        match verb.to_ascii_lowercase().as_str() {
            "yes" => Some(Answer::Yes),
            "no" => Some(Answer::No),
            "always" => Some(Answer::Always),
            _ => None,
        }
    }
}

/// What an answer does to a disclosure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve {
        standing: bool,
    },
    Deny,
    /// Nothing: the disclosure is not pending any more (or its time ran out before the timer
    /// noticed, which counts as expired).
    TooLate(Status),
}

/// The state machine: only a pending disclosure within its TTL can be approved or denied.
pub fn decide(status: Status, answer: Answer, now_ms: i64, expires_at_ms: i64) -> Verdict {
    match status {
        Status::Pending if now_ms >= expires_at_ms => Verdict::TooLate(Status::Expired),
        Status::Pending => match answer {
            Answer::Yes => Verdict::Approve { standing: false },
            Answer::Always => Verdict::Approve { standing: true },
            Answer::No => Verdict::Deny,
        },
        other => Verdict::TooLate(other),
    }
}

/// Whether the timer should expire it now.
pub fn is_due(status: Status, now_ms: i64, expires_at_ms: i64) -> bool {
    status == Status::Pending && now_ms >= expires_at_ms
}

/// A standing grant applies only to a read of the owner's workspace: an import is a one-off copy.
pub fn can_stand(kind: Kind) -> bool {
    kind == Kind::Read
}

/// The asking chat's one acknowledgement.
pub const ACK_TEXT: &str = "Let me check with the owner — one sec.";

/// The polite answer when the owner said no or did not answer in time.
pub fn refusal_text(why: Status) -> &'static str {
    match why {
        Status::Expired => {
            "I couldn't get the owner's OK in time, so I can't share that here. Sorry!"
        }
        Status::Failed => "I couldn't get hold of that, sorry — I can't share it here.",
        _ => "The owner would rather not share that here, sorry.",
    }
}

/// What the owner's DM says about a new disclosure.
pub struct Challenge<'a> {
    pub number: i64,
    pub kind: Kind,
    pub chat_label: &'a str,
    pub sender: &'a str,
    pub question: &'a str,
    pub path: &'a str,
    /// `None`: the owner's own workspace.
    pub source_label: Option<&'a str>,
    pub why: &'a str,
    pub ttl_min: u64,
}

/// Longest quote of the question or the reason, in characters.
pub const QUOTE_CHARS: usize = 200;

pub fn challenge_text(c: &Challenge<'_>) -> String {
    let q = |s: &str| crate::quarantine::defang(&quote(s.trim()));
    let what = match (c.kind, c.source_label) {
        (Kind::Read, _) => format!(
            "to read \"{}\" from your workspace, for this one answer",
            q(c.path)
        ),
        (Kind::Import, None) => format!(
            "a copy of \"{}\" from your workspace in its inbox",
            q(c.path)
        ),
        (Kind::Import, Some(src)) => format!("a copy of \"{}\" from {src} in its inbox", q(c.path)),
    };
    let always = if can_stand(c.kind) {
        format!(", \"always {}\" to allow it from now on", c.number)
    } else {
        String::new()
    };
    format!(
        "In {}, {} asked: \"{}\"\nThe agent wants {what}. Why: \"{}\"\nReply \"yes {n}\" to allow it once, \"no {n}\" to refuse{always}. Nothing is shared unless you say so; after {} min the answer is no.",
        c.chat_label,
        c.sender,
        q(c.question),
        q(c.why),
        c.ttl_min,
        n = c.number,
    )
}

fn quote(s: &str) -> String {
    let mut t: String = s.chars().take(QUOTE_CHARS).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

/// The prompt of a granted turn: a line per grant saying what the owner approved and where it
/// is, then the turn's usual prompt.
pub fn granted_prompt(notes: &[String], prompt: &str) -> String {
    if notes.is_empty() {
        return prompt.to_owned();
    }
    format!(
        "The owner approved access for this answer (read-only):\n{}\n\n{prompt}",
        notes.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pending_disclosure_in_time_can_be_answered() {
        let (now, later) = (1_000, 2_000);
        assert_eq!(
            decide(Status::Pending, Answer::Yes, now, later),
            Verdict::Approve { standing: false }
        );
        assert_eq!(
            decide(Status::Pending, Answer::Always, now, later),
            Verdict::Approve { standing: true }
        );
        assert_eq!(
            decide(Status::Pending, Answer::No, now, later),
            Verdict::Deny
        );
        assert_eq!(
            decide(Status::Pending, Answer::Yes, later, later),
            Verdict::TooLate(Status::Expired),
            "the TTL counts even before the timer ran"
        );
        for s in [
            Status::Approved,
            Status::Denied,
            Status::Expired,
            Status::Consumed,
            Status::Copied,
            Status::Failed,
        ] {
            for a in [Answer::Yes, Answer::No, Answer::Always] {
                assert_eq!(decide(s, a, now, later), Verdict::TooLate(s), "{s} {a:?}");
            }
        }
    }

    #[test]
    fn the_timer_takes_only_pending_ones_past_their_time() {
        assert!(is_due(Status::Pending, 5, 5));
        assert!(!is_due(Status::Pending, 4, 5));
        assert!(!is_due(Status::Approved, 9, 5));
    }

    #[test]
    fn stored_values_round_trip_and_garbage_grants_nothing() {
        for s in [
            Status::Pending,
            Status::Approved,
            Status::Denied,
            Status::Expired,
            Status::Consumed,
            Status::Copied,
            Status::Failed,
        ] {
            assert_eq!(Status::from_stored(s.as_str()), s);
        }
        assert_eq!(Status::from_stored("Approved"), Status::Failed);
        assert_eq!(Answer::parse("YES"), Some(Answer::Yes));
        assert_eq!(Answer::parse("yep"), None);
    }

    #[test]
    fn the_challenge_says_who_what_why_and_how_to_answer() {
        let t = challenge_text(&Challenge {
            number: 4,
            kind: Kind::Read,
            chat_label: "the group \"Poker\"",
            sender: "+15557770000",
            question: "when is the trip? see http://x.example",
            path: "notes/trip.md",
            source_label: None,
            why: "the dates are in the owner's notes",
            ttl_min: 10,
        });
        for want in [
            "Poker",
            "+15557770000",
            "when is the trip",
            "notes/trip.md",
            "the dates are",
            "yes 4",
            "no 4",
            "always 4",
            "10 min",
        ] {
            assert!(t.contains(want), "{want}: {t}");
        }
        assert!(!t.contains("http://"), "{t}");
        let i = challenge_text(&Challenge {
            number: 2,
            kind: Kind::Import,
            chat_label: "g",
            sender: "s",
            question: "q",
            path: "a.pdf",
            source_label: None,
            why: "w",
            ttl_min: 10,
        });
        assert!(!i.contains("always"), "an import cannot stand: {i}");
    }

    #[test]
    fn a_granted_prompt_leads_with_its_grants() {
        assert_eq!(granted_prompt(&[], "q"), "q");
        let p = granted_prompt(&["[picortex grant] a is readable at /x".into()], "q");
        assert!(p.starts_with("The owner approved"));
        assert!(p.ends_with("\n\nq"));
    }
}
