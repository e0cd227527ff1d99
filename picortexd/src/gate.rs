//! The attention gate (SPEC A1, A2, L3): whether an inbound message gets an answer, and why.
//! Pure: it sees only the facts of the message, so every rule has a unit test.

/// What the gate knows about a message.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    pub is_group: bool,
    /// `direction: outbound` or `sender_handle.is_me`: the bot's own message echoed back.
    pub from_bot: bool,
    /// Linq recovered it late (`reconciled_at`): history, not a question.
    pub reconciled: bool,
    /// Linq's `mentions[].is_me`.
    pub mentions_bot: bool,
    pub text: &'a str,
    /// Names the bot answers to when the sender's client sends no mention entities (SMS/RCS).
    pub bot_names: &'a [String],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub answer: bool,
    /// In a group, a reply to one of the bot's own messages also counts; the log decides that.
    pub answer_if_reply_to_bot: bool,
    pub reason: &'static str,
}

pub fn decide(f: &Facts<'_>) -> Decision {
    let no = |reason| Decision {
        answer: false,
        answer_if_reply_to_bot: false,
        reason,
    };
    if f.from_bot {
        return no("the bot's own message");
    }
    if f.reconciled {
        return no("delivered late (reconciled); kept as history");
    }
    if f.text.trim().is_empty() {
        return no("no text");
    }
    if !f.is_group {
        return Decision {
            answer: true,
            answer_if_reply_to_bot: false,
            reason: "direct chat (attention: always)",
        };
    }
    if f.mentions_bot {
        return Decision {
            answer: true,
            answer_if_reply_to_bot: false,
            reason: "mentioned (attention: mentions-only)",
        };
    }
    let lower = f.text.to_lowercase();
    if f.bot_names
        .iter()
        .any(|n| !n.is_empty() && contains_word(&lower, &n.to_lowercase()))
    {
        return Decision {
            answer: true,
            answer_if_reply_to_bot: false,
            reason: "named (attention: mentions-only)",
        };
    }
    Decision {
        answer: false,
        answer_if_reply_to_bot: true,
        reason: "group message without a mention (attention: mentions-only)",
    }
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

    fn f(text: &str) -> Facts<'_> {
        Facts {
            text,
            ..Default::default()
        }
    }

    #[test]
    fn direct_chats_are_answered() {
        assert!(decide(&f("hello")).answer);
    }

    #[test]
    fn the_bot_never_answers_itself_nor_late_messages() {
        assert!(
            !decide(&Facts {
                from_bot: true,
                ..f("hi")
            })
            .answer
        );
        assert!(
            !decide(&Facts {
                reconciled: true,
                ..f("hi")
            })
            .answer
        );
        assert!(!decide(&f("   ")).answer);
    }

    #[test]
    fn groups_need_a_mention_a_name_or_a_reply() {
        let names = vec!["Cortex".to_owned()];
        let g = |text| Facts {
            is_group: true,
            bot_names: &names,
            ..f(text)
        };
        let plain = decide(&g("lunch anyone?"));
        assert!(!plain.answer);
        assert!(plain.answer_if_reply_to_bot);
        assert!(
            decide(&Facts {
                mentions_bot: true,
                ..g("@Bot hi")
            })
            .answer
        );
        assert!(decide(&g("cortex, what's the plan?")).answer);
        assert!(
            !decide(&g("cortexes are brainy")).answer,
            "a name inside a word is no mention"
        );
    }
}
