//! The attention gate (SPEC A1–A4, L3): whether an inbound message gets an answer, and why.
//! Every rule lives here — the bot's own echoes, late deliveries, opt-out words, mentions, names,
//! replies to the bot, and the chat's attention mode — as pure functions over the facts of one
//! message, so each has a unit test. The store gathers the facts (`replies_to_bot` needs the
//! log) and records the decision; `discriminator` turns a small model's answer into a verdict.

pub mod discriminator;

use std::fmt;

/// A chat's attention mode (A1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every message is answered.
    Always,
    /// Only a mention, the bot's name, or a reply to the bot is answered.
    MentionsOnly,
    /// Mentions are answered; any other message is put to the discriminator.
    Discriminate,
    /// As `Discriminate`, but nothing visible (no typing, no read receipt) unless it answers.
    DiscriminateQuiet,
    /// Nothing is answered (the owner's commands still are).
    Silent,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Always,
        Mode::MentionsOnly,
        Mode::Discriminate,
        Mode::DiscriminateQuiet,
        Mode::Silent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Always => "always",
            Mode::MentionsOnly => "mentions-only",
            Mode::Discriminate => "discriminate",
            Mode::DiscriminateQuiet => "discriminate-quiet",
            Mode::Silent => "silent",
        }
    }

    pub fn parse(s: &str) -> Result<Mode, String> {
        let s = s.trim().to_ascii_lowercase();
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not an attention mode; use one of {}",
                    Mode::names()
                )
            })
    }

    pub fn names() -> String {
        Mode::ALL.map(Mode::as_str).join(", ")
    }

    /// A1 defaults: 1:1 `always`, group `mentions-only`.
    pub fn default_for(is_group: bool) -> Mode {
        if is_group {
            Mode::MentionsOnly
        } else {
            Mode::Always
        }
    }

    /// The mode a chat runs in: its own setting, or its kind's default. An unreadable stored
    /// value falls back to the default and says so in the reason.
    pub fn of_chat(stored: Option<&str>, is_group: bool) -> Mode {
        stored
            .and_then(|s| Mode::parse(s).ok())
            .unwrap_or_else(|| Mode::default_for(is_group))
    }

    /// Whether the bot may show that it is looking (typing, read receipts) before it knows it
    /// will answer.
    pub fn shows_attention_early(self) -> bool {
        !matches!(self, Mode::DiscriminateQuiet | Mode::Silent)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the gate knows about a message.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub mode: Mode,
    /// `direction: outbound` or `sender_handle.is_me`: the bot's own message echoed back.
    pub from_bot: bool,
    /// Linq recovered it late (`reconciled_at`): history, not a question.
    pub reconciled: bool,
    /// Linq's `mentions[].is_me`.
    pub mentions_bot: bool,
    /// A thread reply to one of the bot's messages (from the log).
    pub replies_to_bot: bool,
    pub text: &'a str,
    /// Names the bot answers to when the sender's client sends no mention entities (SMS/RCS).
    pub bot_names: &'a [String],
}

/// What happens to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// Ask the discriminator first.
    Discriminate,
    Skip,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Answer => "answer",
            Verdict::Discriminate => "discriminate",
            Verdict::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule that decided, a stable word for the log (`mention`, `name`, `opt_out`, …).
    pub rule: &'static str,
    pub reason: String,
}

impl Decision {
    fn new(verdict: Verdict, rule: &'static str, reason: impl Into<String>) -> Self {
        Self {
            verdict,
            rule,
            reason: reason.into(),
        }
    }

    pub fn answers(&self) -> bool {
        self.verdict != Verdict::Skip
    }
}

/// Whole-message opt-out words Linq honours for SMS (linq.md §3).
pub fn is_opt_out(text: &str) -> bool {
    const WORDS: &[&str] = &[
        "stop",
        "unsubscribe",
        "optout",
        "opt out",
        "cancel",
        "end",
        "quit",
    ];
    let t = text.trim().trim_end_matches(['.', '!']).to_lowercase();
    WORDS.contains(&t.as_str())
}

pub fn decide(f: &Facts<'_>) -> Decision {
    use Verdict::*;
    if f.from_bot {
        return Decision::new(Skip, "own_message", "the bot's own message");
    }
    if f.reconciled {
        return Decision::new(
            Skip,
            "reconciled",
            "delivered late (reconciled); kept as history",
        );
    }
    if f.text.trim().is_empty() {
        return Decision::new(Skip, "no_text", "no text");
    }
    if is_opt_out(f.text) {
        return Decision::new(
            Skip,
            "opt_out",
            "opt-out word; the sender asked for no more messages",
        );
    }
    let mode = f.mode;
    let addressed = if f.mentions_bot {
        Some(("mention", "mentioned"))
    } else if named(f.text, f.bot_names) {
        Some(("name", "named"))
    } else if f.replies_to_bot {
        Some(("reply_to_bot", "a reply to the bot"))
    } else {
        None
    };
    match (mode, addressed) {
        (Mode::Silent, _) => Decision::new(Skip, "silent", "attention: silent"),
        (Mode::Always, _) => Decision::new(Answer, "always", "attention: always"),
        (_, Some((rule, what))) => {
            Decision::new(Answer, rule, format!("{what} (attention: {mode})"))
        }
        (Mode::MentionsOnly, None) => Decision::new(
            Skip,
            "not_addressed",
            "not addressed to the bot (attention: mentions-only); kept as context",
        ),
        (Mode::Discriminate | Mode::DiscriminateQuiet, None) => Decision::new(
            Discriminate,
            "not_addressed",
            format!("not addressed to the bot; asking the discriminator (attention: {mode})"),
        ),
    }
}

/// One of the bot's names occurs in `text` as a word of its own.
fn named(text: &str, names: &[String]) -> bool {
    let lower = text.to_lowercase();
    names
        .iter()
        .any(|n| !n.trim().is_empty() && contains_word(&lower, &n.trim().to_lowercase()))
}

/// `name` occurs in `text` with no letter or digit right before or after it.
fn contains_word(text: &str, name: &str) -> bool {
    let mut start = 0;
    while let Some(i) = text[start..].find(name) {
        let at = start + i;
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        let edge = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
        if edge(before) && edge(after) {
            return true;
        }
        start = at + name.len().max(1);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(mode: Mode, text: &str) -> Facts<'_> {
        Facts {
            mode,
            from_bot: false,
            reconciled: false,
            mentions_bot: false,
            replies_to_bot: false,
            text,
            bot_names: &[],
        }
    }

    #[test]
    fn modes_parse_and_default() {
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.as_str()), Ok(m));
        }
        assert_eq!(Mode::parse(" Always "), Ok(Mode::Always));
        let e = Mode::parse("loud").unwrap_err();
        assert!(e.contains("mentions-only"), "{e}");
        assert_eq!(Mode::of_chat(None, false), Mode::Always);
        assert_eq!(Mode::of_chat(None, true), Mode::MentionsOnly);
        assert_eq!(Mode::of_chat(Some("silent"), true), Mode::Silent);
        assert_eq!(Mode::of_chat(Some("garbage"), true), Mode::MentionsOnly);
    }

    #[test]
    fn the_bot_never_answers_itself_late_messages_or_opt_outs() {
        for mode in Mode::ALL {
            let own = Facts {
                from_bot: true,
                ..f(mode, "hi")
            };
            assert_eq!(decide(&own).verdict, Verdict::Skip);
            let late = Facts {
                reconciled: true,
                mentions_bot: true,
                ..f(mode, "hi")
            };
            assert_eq!(decide(&late).rule, "reconciled");
            assert_eq!(decide(&f(mode, "   ")).verdict, Verdict::Skip);
            assert_eq!(decide(&f(mode, "STOP")).rule, "opt_out");
        }
    }

    #[test]
    fn opt_out_words_are_whole_messages() {
        for w in ["STOP", "stop", " Stop. ", "UNSUBSCRIBE", "opt out", "Quit!"] {
            assert!(is_opt_out(w), "{w}");
        }
        for w in ["stop that", "don't stop", "unsubscribe me please", ""] {
            assert!(!is_opt_out(w), "{w}");
        }
    }

    #[test]
    fn each_mode_answers_what_it_should() {
        let names = vec!["Cortex".to_owned()];
        let plain = |mode| Facts {
            bot_names: &names,
            ..f(mode, "lunch anyone?")
        };
        let mentioned = |mode| Facts {
            mentions_bot: true,
            ..plain(mode)
        };
        let v = |x: Facts<'_>| decide(&x).verdict;
        assert_eq!(v(plain(Mode::Always)), Verdict::Answer);
        assert_eq!(v(plain(Mode::MentionsOnly)), Verdict::Skip);
        assert_eq!(v(mentioned(Mode::MentionsOnly)), Verdict::Answer);
        assert_eq!(v(plain(Mode::Discriminate)), Verdict::Discriminate);
        assert_eq!(v(plain(Mode::DiscriminateQuiet)), Verdict::Discriminate);
        assert_eq!(v(mentioned(Mode::Discriminate)), Verdict::Answer);
        assert_eq!(v(mentioned(Mode::Silent)), Verdict::Skip);
        assert_eq!(v(plain(Mode::Silent)), Verdict::Skip);
    }

    #[test]
    fn mentions_names_and_replies_address_the_bot() {
        let names = vec!["Cortex".to_owned()];
        let g = |text| Facts {
            bot_names: &names,
            ..f(Mode::MentionsOnly, text)
        };
        assert_eq!(decide(&g("cortex, what's the plan?")).rule, "name");
        assert_eq!(
            decide(&g("cortexes are brainy")).verdict,
            Verdict::Skip,
            "a name inside a word is no mention"
        );
        let reply = Facts {
            replies_to_bot: true,
            ..g("thanks!")
        };
        assert_eq!(decide(&reply).rule, "reply_to_bot");
        let m = Facts {
            mentions_bot: true,
            ..g("@Bot hi")
        };
        let d = decide(&m);
        assert_eq!((d.verdict, d.rule), (Verdict::Answer, "mention"));
        assert!(d.reason.contains("mentions-only"), "{}", d.reason);
    }

    #[test]
    fn only_the_quiet_and_silent_modes_hide_early_attention() {
        assert!(Mode::Always.shows_attention_early());
        assert!(Mode::Discriminate.shows_attention_early());
        assert!(!Mode::DiscriminateQuiet.shows_attention_early());
        assert!(!Mode::Silent.shows_attention_early());
    }
}
