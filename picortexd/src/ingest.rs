//! From a verified Linq event to the log (SPEC L2, L3, C1, A1–A5): new messages go through
//! quarantine, the owner's commands and the attention gate, and may queue or hold a turn; every other event updates what the log knows (delivery, reads, edits, tapbacks,
//! participants, group names, chat details); unknown types are recorded and ignored. All of it
//! happens in one store call, so an event is either fully applied or not at all, and a replayed
//! event id changes nothing.

use rusqlite::Connection;

use crate::attention::{self, Mode, Verdict};
use crate::commands;
use crate::linq::events::{Envelope, Event, MessageEvent};
use crate::owner::Owner;
use crate::quarantine::Access;
use crate::store::authority;
use crate::store::channel::{self, Member, Reaction};
use crate::store::queries::{self, Inbound, Ingested, Stored, TurnKind};
use crate::store::StoreError;

use picortex_proto::ids::is_linq_id as id_ok;

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

/// What ingesting needs to know beyond the event: who the owner is, the bot's names.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    pub owner: Owner,
    pub bot_names: Vec<String>,
}

/// What the caller should do after the event is stored.
#[derive(Debug, Default)]
pub struct Applied {
    pub ingested: Option<Ingested>,
    /// A chat we know nothing about yet beyond its id: read its details from Linq.
    pub fetch_details: Option<String>,
    /// A message the bot will handle: send a read receipt for its chat.
    pub mark_read: Option<String>,
    /// Turns became runnable without a new one (a chat was allowed).
    pub wake_turns: bool,
    /// The gateway queued a message of its own (a command's answer, a notice to the owner).
    pub wake_outbox: bool,
    /// Chats newly waiting for the owner (number, chat): Gateway1's PendingAdded.
    pub pending_added: Vec<(i64, String)>,
    /// An approved import waits for the consent worker.
    pub wake_consent: bool,
}

impl Applied {
    fn settled(&mut self, s: authority::Settled) {
        self.wake_turns |= s.wake_turns;
        self.wake_outbox |= s.wake_outbox;
        self.pending_added.extend(s.pending_added);
    }
}

fn inbound(m: &MessageEvent, env: &Envelope<Event>, rid: &str, body: &str) -> Inbound {
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
        text: m.text(),
        reply_to: m.reply_to_id().map(str::to_owned),
        from_bot: m.is_from_bot(),
    }
}

/// A new message: store it, then in this order — quarantine (is the chat allowed?), the
/// owner's commands, the attention gate — and queue, hold or skip its turn. Every decision is
/// recorded with its reason.
fn message(
    t: &Connection,
    m: &MessageEvent,
    env: &Envelope<Event>,
    rid: &str,
    body: &str,
    ctx: &Ctx,
) -> Result<Applied, StoreError> {
    let mut out = Applied::default();
    let inb = inbound(m, env, rid, body);
    let message_id = match queries::store_message(t, &inb)? {
        Stored::DuplicateEvent => {
            out.ingested = Some(Ingested::Duplicate);
            return Ok(out);
        }
        Stored::DuplicateMessage => {
            out.ingested = Some(stored(None, "message already stored under another event"));
            return Ok(out);
        }
        Stored::New { message_id } => message_id,
    };
    if inb.from_bot {
        out.ingested = Some(stored(None, "the bot's own message"));
        return Ok(out);
    }
    // Media parts are fetched when the message's turn starts (picortexd/src/media).
    for (i, p) in m.parts.iter().enumerate() {
        if let crate::linq::events::Part::Media(mp) = p {
            crate::store::media::record(
                t,
                message_id,
                i as i64,
                mp.id.as_deref(),
                mp.url.as_deref(),
                mp.filename.as_deref(),
                mp.mime_type.as_deref(),
                mp.size_bytes.map(|s| s.min(i64::MAX as u64) as i64),
            )?;
        }
    }
    let chat_id = &inb.chat_id;
    if !inb.is_group {
        // An opt-out word sets the flag; anything else the person writes lifts it (as Linq does).
        channel::set_opted_out(t, chat_id, attention::is_opt_out(&inb.text))?;
    }
    if channel::needs_details(t, chat_id)? && inb.is_group {
        out.fetch_details = Some(chat_id.clone());
    }
    // Quarantine first: a chat nobody allowed yet may become allowed by who is in it.
    let members_known = !inb.is_group || out.fetch_details.is_none();
    out.settled(authority::settle(t, &ctx.owner, chat_id, members_known)?);
    let chat = queries::chat(t, chat_id)?.ok_or(StoreError::Gone)?;
    let mode = Mode::of_chat(chat.attention.as_deref(), chat.is_group);
    let record = |verdict: &str, rule: &str, reason: &str| {
        authority::record_decision(
            t,
            &authority::GateRecord {
                message_id,
                chat_id,
                mode,
                verdict,
                rule,
                score: None,
                reason,
            },
        )
    };

    // The owner's commands: answered by the gateway, never by a turn. Only the owner's own,
    // live messages count (an edit arrives as message.edited and is never a command).
    if ctx.owner.is_owner(&inb.sender) && !m.is_reconciled() {
        let in_owner_dm = !chat.is_group;
        if let Some(parsed) = commands::parse(&inb.text, in_owner_dm) {
            let reply = match parsed {
                commands::Parsed::Command(c) => {
                    let origin = commands::Origin {
                        sender: &inb.sender,
                        message: &inb.linq_id,
                    };
                    let fx = commands::execute(t, &chat, &c, origin)?;
                    out.wake_turns |= fx.wake_turns;
                    out.wake_consent |= fx.wake_consent;
                    tracing::info!(chat = %chat_id, command = ?c, "owner command");
                    fx.reply
                }
                commands::Parsed::Invalid(why) => why,
            };
            authority::queue_text(
                t,
                chat_id,
                &reply,
                Some(&inb.linq_id),
                &format!("picortex-cmd-{}", inb.linq_id),
            )?;
            out.wake_outbox = true;
            record(
                "command",
                "owner_command",
                "the owner's command; answered by picortex",
            )?;
            out.ingested = Some(stored(None, "the owner's command"));
            return Ok(out);
        }
    }

    let d = attention::decide(&attention::Facts {
        mode,
        from_bot: false,
        reconciled: m.is_reconciled(),
        mentions_bot: m.mentions_bot(),
        replies_to_bot: queries::replies_to_bot(t, inb.reply_to.as_deref())?,
        text: &inb.text,
        bot_names: &ctx.bot_names,
    });
    if !d.answers() {
        record(d.verdict.as_str(), d.rule, &d.reason)?;
        out.ingested = Some(stored(None, &d.reason));
        return Ok(out);
    }
    let kind = match d.verdict {
        Verdict::Discriminate => TurnKind::Discriminate,
        _ => TurnKind::Answer,
    };
    match chat.access {
        Access::Blocked => {
            let why = "the owner blocked this chat; nothing runs for it";
            record("skip", "blocked", why)?;
            out.ingested = Some(stored(None, why));
        }
        Access::Pending => {
            queries::queue_turn(t, chat_id, message_id, kind, true)?;
            let why = format!(
                "held until the owner allows this chat ({}); {}",
                chat.pending_no
                    .map(|n| format!("#{n}"))
                    .unwrap_or_else(|| "owner not told yet".into()),
                d.reason
            );
            record("held", "quarantine", &why)?;
            out.ingested = Some(stored(None, &why));
        }
        Access::Allowed => {
            let turn = queries::queue_turn(t, chat_id, message_id, kind, false)?;
            record(d.verdict.as_str(), d.rule, &d.reason)?;
            if d.verdict == Verdict::Answer || mode.shows_attention_early() {
                out.mark_read = Some(chat_id.clone());
            }
            out.ingested = Some(stored(Some(turn), &d.reason));
        }
    }
    Ok(out)
}

fn stored(turn_id: Option<String>, reason: &str) -> Ingested {
    Ingested::Stored {
        turn_id,
        reason: reason.to_owned(),
    }
}

pub fn apply(
    t: &Connection,
    env: &Envelope<Event>,
    rid: &str,
    body: &str,
    ctx: &Ctx,
) -> Result<Applied, StoreError> {
    if let Event::MessageReceived(m) | Event::MessageSent(m) = &env.data {
        return message(t, m, env, rid, body, ctx);
    }
    let mut out = Applied::default();
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
            // Recorded as history only: an edit never becomes a command, an approval or a turn.
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
                // The owner joining a waiting group allows it.
                let known = !channel::needs_details(t, c)?;
                out.settled(authority::settle(t, &ctx.owner, c, known)?);
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
            out.settled(authority::settle(t, &ctx.owner, &c.id, true)?);
            "chat recorded"
        }
        Event::TypingStarted(_) | Event::TypingStopped(_) => "typing indicator",
        Event::Unknown { .. } => "unknown event type; acknowledged and ignored",
        Event::MessageReceived(_) | Event::MessageSent(_) => "message",
    };
    out.ingested = Some(stored(None, reason));
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
    fn ids_are_checked() {
        assert!(id_ok("2915e81c-5068-4796-ace2-21d2c94ad298"));
        for bad in ["", "../x", "a b", &"a".repeat(65), "x\u{0}", "a_b"] {
            assert!(!id_ok(bad), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod authority_tests {
    //! Quarantine, commands and the gate as `apply` runs them, on a real SQLite log.
    use super::*;
    use crate::linq::events::parse_event;
    use crate::store::Store;
    use serde_json::{json, Value};

    const OWNER: &str = "+15550002000";
    const STRANGER: &str = "+15557770000";
    const DM: &str = "4c6113a3-cb58-46e5-a29c-326444779872";
    const THEIRS: &str = "5d7224b4-dc69-47f6-b3ba-437555880983";
    const GROUP: &str = "6e8335c5-ed7a-4807-84cb-548666991094";

    fn ctx() -> Ctx {
        Ctx {
            owner: Owner::new(&[OWNER.into()]),
            bot_names: vec![],
        }
    }

    /// A `message.received` from `from` in `chat`, as Linq sends it.
    fn message(n: u32, chat: &str, group: bool, from: &str, text: &str, late: bool) -> Vec<u8> {
        let mut v: Value =
            serde_json::from_str(include_str!("linq/fixtures/message.received-1to1.json")).unwrap();
        v["event_id"] = json!(format!("00000000-0000-4000-8000-{n:012}"));
        v["data"]["id"] = json!(format!("10000000-0000-4000-8000-{n:012}"));
        v["data"]["chat"]["id"] = json!(chat);
        v["data"]["chat"]["is_group"] = json!(group);
        v["data"]["sender_handle"]["handle"] = json!(from);
        v["data"]["parts"][0]["value"] = json!(text);
        if late {
            v["data"]["reconciled_at"] = json!("2026-11-22T14:11:41Z");
        }
        serde_json::to_vec(&v).unwrap()
    }

    async fn send(s: &Store, body: Vec<u8>) -> Applied {
        let env = parse_event(&body).unwrap();
        let text = String::from_utf8(body).unwrap();
        s.call(move |t| apply(t, &env, "r", &text, &ctx()))
            .await
            .unwrap()
    }

    async fn q(s: &Store, sql: &'static str) -> String {
        s.call(move |t| {
            Ok(t.query_row(sql, [], |r| {
                r.get::<_, Option<String>>(0).map(|v| v.unwrap_or_default())
            })?)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_stranger_is_held_until_the_owner_allows_it_from_their_dm() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("t.db")).unwrap();
        let a = send(&s, message(1, THEIRS, false, STRANGER, "hello?", false)).await;
        assert!(a.wake_outbox, "the owner is told");
        assert!(matches!(
            a.ingested,
            Some(Ingested::Stored { turn_id: None, .. })
        ));
        assert_eq!(
            q(&s, "SELECT access || pending_no FROM chats").await,
            "pending1"
        );
        assert_eq!(q(&s, "SELECT status FROM turns").await, "held");
        assert_eq!(
            q(&s, "SELECT to_handle FROM outbox WHERE chat_id IS NULL").await,
            OWNER,
            "no DM with the owner yet: the outbox opens one"
        );

        // Not approvals: the owner in a group, the owner's late (reconciled) message, a stranger.
        send(&s, message(2, GROUP, true, OWNER, "allow 1", false)).await;
        send(&s, message(3, DM, false, OWNER, "allow 1", true)).await;
        send(
            &s,
            message(4, GROUP, true, STRANGER, "/picortex allow 1", false),
        )
        .await;
        assert_eq!(
            q(
                &s,
                "SELECT access FROM chats WHERE id = '5d7224b4-dc69-47f6-b3ba-437555880983'"
            )
            .await,
            "pending"
        );
        assert_eq!(q(&s, "SELECT status FROM turns").await, "held");

        let a = send(&s, message(5, DM, false, OWNER, "allow 1", false)).await;
        assert!(a.wake_turns && a.wake_outbox);
        assert_eq!(
            q(
                &s,
                "SELECT access FROM chats WHERE id = '5d7224b4-dc69-47f6-b3ba-437555880983'"
            )
            .await,
            "allowed"
        );
        assert_eq!(q(&s, "SELECT status FROM turns").await, "queued");
        assert!(q(
            &s,
            "SELECT text FROM outbox WHERE idempotency_key LIKE 'picortex-cmd-%'"
        )
        .await
        .starts_with("Allowed"));
    }

    #[tokio::test]
    async fn a_blocked_chat_runs_nothing_and_keeps_its_messages() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("t.db")).unwrap();
        send(&s, message(1, DM, false, OWNER, "hi", false)).await;
        send(&s, message(2, THEIRS, false, STRANGER, "hello?", false)).await;
        assert_eq!(
            q(&s, "SELECT CAST(COUNT(*) AS TEXT) FROM outbox WHERE chat_id = '4c6113a3-cb58-46e5-a29c-326444779872' AND to_handle IS NULL").await,
            "1",
            "the notice goes to the owner's existing DM"
        );
        send(&s, message(3, DM, false, OWNER, "block 1", false)).await;
        let a = send(&s, message(4, THEIRS, false, STRANGER, "hello??", false)).await;
        assert!(matches!(
            a.ingested,
            Some(Ingested::Stored { turn_id: None, .. })
        ));
        assert_eq!(
            q(&s, "SELECT group_concat(status || ':' || COALESCE(outcome, '')) FROM turns WHERE chat_id = '5d7224b4-dc69-47f6-b3ba-437555880983'").await,
            "done:blocked"
        );
        assert_eq!(
            q(&s, "SELECT group_concat(rule) FROM gate_decisions g JOIN messages m ON m.id = g.message_id WHERE m.chat_id = '5d7224b4-dc69-47f6-b3ba-437555880983'").await,
            "quarantine,blocked"
        );
    }
}
