//! From a verified Linq event to the log (SPEC L2, L3): new messages go through the gate and may
//! queue a turn; every other event updates what the log knows (delivery, reads, edits, tapbacks,
//! participants, group names, chat details); unknown types are recorded and ignored. All of it
//! happens in one store call, so an event is either fully applied or not at all, and a replayed
//! event id changes nothing.

use rusqlite::Connection;

use crate::gate;
use crate::linq::events::{Envelope, Event, MessageEvent};
use crate::store::channel::{self, Member, Reaction};
use crate::store::queries::{self, Inbound, Ingested};
use crate::store::StoreError;

/// Ids we store and put in paths or URLs later: Linq's are UUIDs; anything else is refused.
fn id_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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

/// Reject what must not reach the log: malformed ids and absurd sizes. Returns the reason.
pub fn validate(env: &Envelope<Event>) -> Result<(), String> {
    if !id_ok(&env.event_id) {
        return Err("event_id is not a Linq id".into());
    }
    let check = |what: &str, id: Option<&str>| match id {
        Some(i) if !id_ok(i) => Err(format!("{what} is not a Linq id")),
        _ => Ok(()),
    };
    check("chat id", env.data.chat_id())?;
    match &env.data {
        Event::MessageReceived(m)
        | Event::MessageSent(m)
        | Event::MessageDelivered(m)
        | Event::MessageRead(m) => {
            check("message id", Some(&m.id))?;
            check("reply_to.message_id", m.reply_to_id())?;
            if m.sender_handle.handle.is_empty() || m.sender_handle.handle.len() > 320 {
                return Err("sender handle is empty or too long".into());
            }
        }
        Event::MessageEdited(e) => check("message id", Some(&e.id))?,
        Event::MessageFailed(f) => check("message id", f.message_id.as_deref())?,
        Event::ReactionAdded(r) | Event::ReactionRemoved(r) => {
            check("message id", r.message_id.as_deref())?
        }
        _ => {}
    }
    Ok(())
}

/// The participants of a chat as Linq describes it (`chat.created`, `GET /v3/chats/{id}`).
pub fn members_of(c: &crate::linq::events::Chat) -> Vec<Member> {
    c.handles
        .iter()
        .map(|h| Member {
            handle: h.handle.clone(),
            is_me: h.is_me(),
            left: h.left_at.is_some() || h.status.as_deref().is_some_and(|s| s != "active"),
        })
        .collect()
}

/// What the caller should do after the event is stored.
#[derive(Debug, Default)]
pub struct Applied {
    pub ingested: Option<Ingested>,
    /// A chat we know nothing about yet beyond its id: read its details from Linq.
    pub fetch_details: Option<String>,
    /// A message the bot will handle: send a read receipt for its chat.
    pub mark_read: Option<String>,
}

fn inbound(
    m: &MessageEvent,
    env: &Envelope<Event>,
    rid: &str,
    body: &str,
    bot_names: &[String],
) -> Inbound {
    let text = m.text();
    let opt_out = !m.is_from_bot() && is_opt_out(&text);
    let d = gate::decide(&gate::Facts {
        is_group: m.chat.is_group,
        from_bot: m.is_from_bot(),
        reconciled: m.is_reconciled(),
        mentions_bot: m.mentions_bot(),
        text: &text,
        bot_names,
    });
    let (answer, reason) = if opt_out {
        (false, "opt-out word; the sender asked for no more messages")
    } else {
        (d.answer, d.reason)
    };
    Inbound {
        event_id: env.event_id.clone(),
        event_type: env.event_type.clone(),
        request_id: rid.to_owned(),
        body: body.to_owned(),
        chat_id: m.chat.id.clone(),
        is_group: m.chat.is_group,
        bot_handle: m.chat.owner_handle.as_ref().map(|h| h.handle.clone()),
        sender: m.sender_handle.handle.clone(),
        linq_id: m.id.clone(),
        text,
        reply_to: m.reply_to_id().map(str::to_owned),
        answer,
        reason: reason.to_owned(),
        answer_if_reply_to_bot: d.answer_if_reply_to_bot && !opt_out,
        from_bot: m.is_from_bot(),
    }
}

pub fn apply(
    t: &Connection,
    env: &Envelope<Event>,
    rid: &str,
    body: &str,
    bot_names: &[String],
) -> Result<Applied, StoreError> {
    let mut out = Applied::default();
    if let Event::MessageReceived(m) | Event::MessageSent(m) = &env.data {
        let inb = inbound(m, env, rid, body, bot_names);
        let ing = queries::ingest_message(t, &inb)?;
        if let Ingested::Stored { turn_id, .. } = &ing {
            if !m.is_from_bot() && !m.chat.is_group {
                // An opt-out word sets the flag; anything else the person writes lifts it (as Linq does).
                channel::set_opted_out(t, &m.chat.id, is_opt_out(&inb.text))?;
            }
            if turn_id.is_some() {
                out.mark_read = Some(m.chat.id.clone());
            }
            if channel::needs_details(t, &m.chat.id)? && m.chat.is_group {
                out.fetch_details = Some(m.chat.id.clone());
            }
        }
        out.ingested = Some(ing);
        return Ok(out);
    }
    if !queries::record_event(t, &env.event_id, &env.event_type, rid, body)? {
        out.ingested = Some(Ingested::Duplicate);
        return Ok(out);
    }
    let reason = match &env.data {
        Event::MessageDelivered(m) => status_or_record(t, m, "delivered")?,
        Event::MessageRead(m) => status_or_record(t, m, "read")?,
        Event::MessageFailed(f) => match &f.message_id {
            Some(id) => status(t, id, "failed", Some(f.code))?,
            None => "message.failed without a message id",
        },
        Event::MessageEdited(e) => {
            if channel::message_edited(t, &e.id, &e.part.text)? {
                "message text updated"
            } else {
                "edit of a message not in the log"
            }
        }
        Event::ReactionAdded(r) | Event::ReactionRemoved(r) => {
            match (&r.message_id, r.from_handle.as_ref()) {
                (Some(mid), Some(h)) => {
                    let rec = Reaction {
                        message_id: mid,
                        chat_id: r.chat_id.as_deref(),
                        handle: &h.handle,
                        kind: &r.reaction_type,
                        custom_emoji: r.custom_emoji.as_deref(),
                        part_index: i64::from(r.part_index.unwrap_or(0)),
                        is_from_bot: r.is_from_bot(),
                    };
                    channel::reaction(t, &rec, matches!(env.data, Event::ReactionAdded(_)))?;
                    "reaction recorded"
                }
                _ => "reaction without message or handle",
            }
        }
        Event::ParticipantAdded(p) | Event::ParticipantRemoved(p) => match (&p.chat_id, p.handle())
        {
            (Some(c), Some(h)) => {
                let is_me = p.participant.as_ref().is_some_and(|x| x.is_me());
                channel::participant(
                    t,
                    c,
                    h,
                    is_me,
                    matches!(env.data, Event::ParticipantAdded(_)),
                )?;
                "participants updated"
            }
            _ => "participant event without chat or handle",
        },
        Event::ChatGroupNameUpdated(g) => {
            channel::group_renamed(t, &g.chat_id, g.new_value.as_deref())?;
            "group renamed"
        }
        Event::ChatCreated(c) => {
            channel::chat_details(
                t,
                &c.id,
                c.is_group,
                c.display_name.as_deref(),
                &members_of(c),
            )?;
            "chat recorded"
        }
        Event::TypingStarted(_) | Event::TypingStopped(_) => "typing indicator",
        Event::Unknown { .. } => "unknown event type; acknowledged and ignored",
        Event::MessageReceived(_) | Event::MessageSent(_) => "message",
    };
    out.ingested = Some(Ingested::Stored {
        turn_id: None,
        reason: reason.into(),
    });
    Ok(out)
}

fn status_or_record(t: &Connection, m: &MessageEvent, s: &str) -> Result<&'static str, StoreError> {
    if channel::message_status(t, &m.id, s, None)? {
        return Ok("message status updated");
    }
    let text = m.text();
    let unseen = channel::UnseenMessage {
        linq_id: &m.id,
        chat_id: &m.chat.id,
        is_group: m.chat.is_group,
        from_bot: m.is_from_bot(),
        sender: &m.sender_handle.handle,
        text: &text,
        reply_to: m.reply_to_id(),
    };
    channel::status_of_unseen(t, &unseen, s)?;
    Ok("status of a message not yet in the log; recorded with it")
}

fn status(
    t: &Connection,
    id: &str,
    s: &str,
    code: Option<i64>,
) -> Result<&'static str, StoreError> {
    Ok(if channel::message_status(t, id, s, code)? {
        "message status updated"
    } else {
        "status of a message not in the log"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn ids_are_checked() {
        assert!(id_ok("2915e81c-5068-4796-ace2-21d2c94ad298"));
        for bad in ["", "../x", "a b", &"a".repeat(129), "x\u{0}"] {
            assert!(!id_ok(bad), "{bad:?}");
        }
    }
}
