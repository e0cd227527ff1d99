//! The log's side of the owner's authority (SPEC C1, A1–A5): each chat's access and its
//! quarantine number, the notices to the owner, gate decisions, per-chat attention, session and
//! budget. Plain functions over a transaction, like the rest of `store`.

use rusqlite::{params, Connection, OptionalExtension};

use super::queries::{self, Chat};
use super::{now_ms, StoreError};
use crate::attention::Mode;
use crate::owner::Owner;
use crate::quarantine::{self, Access};

/// Everyone in the chat but the bot, still in it, as the log knows them.
pub fn members(t: &Connection, chat_id: &str) -> Result<Vec<String>, StoreError> {
    let mut st = t.prepare_cached(
        "SELECT handle FROM participants WHERE chat_id = ?1 AND is_me = 0 AND left_at IS NULL ORDER BY handle",
    )?;
    let v = st
        .query_map([chat_id], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(v)
}

/// What became of a chat's held turns when its access changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Held turns now queued (allowed).
    pub queued: usize,
    /// Held turns ended without running (blocked).
    pub dropped: usize,
}

/// Set a chat's access. Allowing queues its held turns in their order; blocking ends them
/// without running anything.
pub fn set_access(
    t: &Connection,
    chat_id: &str,
    access: Access,
    reason: &str,
) -> Result<Released, StoreError> {
    let now = now_ms();
    t.execute(
        "UPDATE chats SET access = ?2, access_reason = ?3, updated_at = ?4 WHERE id = ?1",
        params![chat_id, access.as_str(), reason, now],
    )?;
    let mut r = Released::default();
    match access {
        Access::Allowed => {
            r.queued = t.execute(
                "UPDATE turns SET status = 'queued' WHERE chat_id = ?1 AND status = 'held'",
                [chat_id],
            )?
        }
        Access::Blocked => {
            r.dropped = t.execute(
                "UPDATE turns SET status = 'done', outcome = ?4, error = ?2, finished_at = ?3 WHERE chat_id = ?1 AND status = 'held'",
                params![chat_id, reason, now, crate::outcome::TurnOutcome::Blocked.as_str()],
            )?
        }
        Access::Pending => {}
    }
    if access != Access::Pending {
        tracing::info!(
            target: crate::catalog::CHAT_DECIDED.0,
            chat = %chat_id, access = access.as_str(), reason, released = r.queued, dropped = r.dropped,
            "chat {chat_id} {}: {reason}", access.as_str()
        );
    }
    Ok(r)
}

/// Give a pending chat the smallest number no other pending chat holds (a decided chat keeps
/// its old number, so the owner can change their mind, until a new pending chat needs it).
pub fn assign_number(t: &Connection, chat_id: &str) -> Result<i64, StoreError> {
    if let Some(n) = t
        .query_row(
            "SELECT pending_no FROM chats WHERE id = ?1 AND pending_no IS NOT NULL",
            [chat_id],
            |r| r.get(0),
        )
        .optional()?
    {
        return Ok(n);
    }
    let held: Vec<i64> = {
        let mut st = t.prepare_cached(
            "SELECT pending_no FROM chats WHERE access = 'pending' AND pending_no IS NOT NULL",
        )?;
        let v = st
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<i64>, _>>()?;
        v
    };
    let n = quarantine::next_number(&held);
    t.execute(
        "UPDATE chats SET pending_no = NULL WHERE pending_no = ?1",
        [n],
    )?;
    t.execute(
        "UPDATE chats SET pending_no = ?2 WHERE id = ?1",
        params![chat_id, n],
    )?;
    Ok(n)
}

pub fn chat_by_number(t: &Connection, n: i64) -> Result<Option<Chat>, StoreError> {
    let id: Option<String> = t
        .query_row("SELECT id FROM chats WHERE pending_no = ?1", [n], |r| {
            r.get(0)
        })
        .optional()?;
    match id {
        Some(id) => queries::chat(t, &id),
        None => Ok(None),
    }
}

/// The owner's 1:1 chat with the bot: the most recently active direct chat with an owner handle.
pub fn owner_dm(t: &Connection, owner: &Owner) -> Result<Option<String>, StoreError> {
    let mut st = t.prepare_cached(
        "SELECT c.id, p.handle FROM chats c JOIN participants p ON p.chat_id = c.id AND p.is_me = 0
         WHERE c.kind = 'direct' ORDER BY c.updated_at DESC",
    )?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    for row in rows {
        let (id, handle) = row?;
        if owner.is_owner(&handle) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// The gateway's own messages are one part each, cleaned like every text that leaves (they quote
/// other people's words: a notice carries a stranger's first message).
fn own_text(text: &str) -> String {
    crate::linq::clean::for_phone(text, crate::linq::split::DEFAULT_MAX_CHARS - 200)
}

/// Queue a message from the gateway itself (a command's answer, a notice) in the outbox.
pub fn queue_text(
    t: &Connection,
    chat_id: &str,
    text: &str,
    reply_to: Option<&str>,
    key: &str,
) -> Result<(), StoreError> {
    let text = own_text(text);
    t.execute(
        "INSERT OR IGNORE INTO outbox (chat_id, part, text, reply_to, idempotency_key, status, next_attempt_at, created_at)
         VALUES (?1, 0, ?2, ?3, ?4, 'pending', ?5, ?5)",
        params![chat_id, text, reply_to, key, now_ms()],
    )?;
    Ok(())
}

/// Tell the owner in their DM; when they have none with the bot yet, the outbox opens one
/// (`POST /v3/chats` from `bot_line` to their first handle).
pub fn notify_owner(
    t: &Connection,
    owner: &Owner,
    bot_line: Option<&str>,
    text: &str,
    key: &str,
) -> Result<bool, StoreError> {
    if let Some(dm) = owner_dm(t, owner)? {
        queue_text(t, &dm, text, None, key)?;
        return Ok(true);
    }
    let text = own_text(text);
    let (Some(to), Some(from)) = (owner.primary(), bot_line) else {
        tracing::error!(
            "cannot tell the owner about a waiting chat: no [owner] handles configured, or the bot's line is unknown"
        );
        return Ok(false);
    };
    t.execute(
        "INSERT OR IGNORE INTO outbox (chat_id, to_handle, from_handle, part, text, idempotency_key, status, next_attempt_at, created_at)
         VALUES (NULL, ?1, ?2, 0, ?3, ?4, 'pending', ?5, ?5)",
        params![to, from, text, key, now_ms()],
    )?;
    Ok(true)
}

/// The outbox opened the owner's DM: record the chat, allowed, and point waiting notices at it.
pub fn owner_dm_opened(
    t: &Connection,
    chat_id: &str,
    owner_handle: &str,
    bot_line: &str,
) -> Result<(), StoreError> {
    let now = now_ms();
    t.execute(
        "INSERT INTO chats (id, kind, bot_handle, session_id, access, access_reason, created_at, updated_at)
         VALUES (?1, 'direct', ?2, ?3, 'allowed', 'the owner''s DM, opened by picortex', ?4, ?4)
         ON CONFLICT(id) DO NOTHING",
        params![chat_id, bot_line, uuid::Uuid::new_v4().to_string(), now],
    )?;
    t.execute(
        "INSERT OR IGNORE INTO participants (chat_id, handle, is_me, joined_at) VALUES (?1, ?2, 0, ?3)",
        params![chat_id, owner_handle, now],
    )?;
    t.execute(
        "UPDATE outbox SET chat_id = ?1 WHERE chat_id IS NULL AND to_handle = ?2 AND status = 'pending'",
        params![chat_id, owner_handle],
    )?;
    Ok(())
}

/// A pending chat whose owner has not been told yet: number it and tell them. Returns its number
/// and whether a notice was queued, or `None` if it was not newly waiting.
pub fn notify_pending(
    t: &Connection,
    owner: &Owner,
    chat_id: &str,
    first_message: &str,
    sender: &str,
) -> Result<Option<(i64, bool)>, StoreError> {
    let Some(chat) = queries::chat(t, chat_id)? else {
        return Ok(None);
    };
    if chat.access != Access::Pending || chat.notified {
        return Ok(None);
    }
    let n = assign_number(t, chat_id)?;
    let members = members(t, chat_id)?;
    let text = quarantine::notice_text(&quarantine::Notice {
        number: n,
        is_group: chat.is_group,
        group_name: chat.display_name.as_deref(),
        sender,
        members: &members,
        first_message,
    });
    let queued = notify_owner(
        t,
        owner,
        chat.bot_handle.as_deref(),
        &text,
        &format!("picortex-notice-{}", uuid::Uuid::new_v4().simple()),
    )?;
    t.execute(
        "UPDATE chats SET notified_at = ?2 WHERE id = ?1",
        params![chat_id, now_ms()],
    )?;
    tracing::warn!(target: crate::catalog::CHAT_QUARANTINED.0, chat = %chat_id, number = n, owner_told = queued, "chat {chat_id} quarantined until the owner decides (notice number {n})");
    Ok(Some((n, queued)))
}

/// The first inbound message of a pending group that still waits to be described to the owner.
pub fn first_held_message(
    t: &Connection,
    chat_id: &str,
) -> Result<Option<(String, String)>, StoreError> {
    Ok(t
        .query_row(
            "SELECT COALESCE(sender, ''), text FROM messages WHERE chat_id = ?1 AND direction = 'inbound' ORDER BY id LIMIT 1",
            [chat_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// What changed when a chat's participants became known or changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    pub wake_turns: bool,
    pub wake_outbox: bool,
    /// Chats newly waiting for the owner, with their numbers (Gateway1's PendingAdded).
    pub pending_added: Vec<(i64, String)>,
}

/// Reconsider a pending chat (not one the owner decided) once its participants are known: the
/// owner in it allows it; otherwise the owner is told, once.
pub fn settle(
    t: &Connection,
    owner: &Owner,
    chat_id: &str,
    members_known: bool,
) -> Result<Settled, StoreError> {
    let mut s = Settled::default();
    let Some(chat) = queries::chat(t, chat_id)? else {
        return Ok(s);
    };
    if chat.access != Access::Pending {
        return Ok(s);
    }
    let members = members(t, chat_id)?;
    let facts = quarantine::ChatFacts {
        is_group: chat.is_group,
        members: &members,
        members_known,
    };
    match quarantine::classify(owner, &facts) {
        quarantine::Automatic::Allowed(reason) => {
            let r = set_access(t, chat_id, Access::Allowed, reason)?;
            tracing::info!(chat = %chat_id, reason, released = r.queued, "chat allowed");
            s.wake_turns = r.queued > 0;
        }
        quarantine::Automatic::Pending { notify: true } => {
            if let Some((sender, text)) = first_held_message(t, chat_id)? {
                if let Some((n, queued)) = notify_pending(t, owner, chat_id, &text, &sender)? {
                    s.wake_outbox = queued;
                    s.pending_added.push((n, chat_id.to_owned()));
                }
            }
        }
        quarantine::Automatic::Pending { notify: false } => {}
    }
    Ok(s)
}

/// At start: decide every chat still waiting without the owner having been told — chats from
/// before quarantine existed, and groups whose participants never arrived (the gateway stopped
/// before Linq answered). The owner's are allowed; the owner is told about the rest, and any
/// turn they had queued is held.
pub fn settle_waiting(t: &Connection, owner: &Owner) -> Result<Settled, StoreError> {
    let ids: Vec<String> = {
        let mut st = t.prepare(
            "SELECT id FROM chats WHERE access = 'pending' AND notified_at IS NULL ORDER BY created_at",
        )?;
        let v = st
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        v
    };
    let mut all = Settled::default();
    for id in ids {
        let s = settle(t, owner, &id, true)?;
        all.wake_turns |= s.wake_turns;
        all.wake_outbox |= s.wake_outbox;
        all.pending_added.extend(s.pending_added);
        t.execute(
            "UPDATE turns SET status = 'held' WHERE chat_id = ?1 AND status = 'queued'
               AND EXISTS (SELECT 1 FROM chats c WHERE c.id = ?1 AND c.access != 'allowed')",
            [&id],
        )?;
    }
    Ok(all)
}

/// One gate decision (SPEC A4).
pub struct GateRecord<'a> {
    pub message_id: i64,
    pub chat_id: &'a str,
    pub mode: Mode,
    pub verdict: &'a str,
    pub rule: &'a str,
    pub score: Option<f64>,
    pub reason: &'a str,
}

pub fn record_decision(t: &Connection, g: &GateRecord<'_>) -> Result<(), StoreError> {
    t.execute(
        "INSERT INTO gate_decisions (message_id, chat_id, mode, verdict, rule, score, reason, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![g.message_id, g.chat_id, g.mode.as_str(), g.verdict, g.rule, g.score, g.reason, now_ms()],
    )?;
    Ok(())
}

/// Answers the discriminator allowed in this chat since `since_ms` (the hourly cap).
pub fn unsolicited_since(t: &Connection, chat_id: &str, since_ms: i64) -> Result<u32, StoreError> {
    Ok(t.query_row(
        "SELECT COUNT(*) FROM gate_decisions WHERE chat_id = ?1 AND rule = 'score' AND verdict = 'answer' AND created_at >= ?2",
        params![chat_id, since_ms],
        |r| r.get(0),
    )?)
}

pub fn set_attention(t: &Connection, chat_id: &str, mode: Option<Mode>) -> Result<(), StoreError> {
    t.execute(
        "UPDATE chats SET attention = ?2, updated_at = ?3 WHERE id = ?1",
        params![chat_id, mode.map(Mode::as_str), now_ms()],
    )?;
    Ok(())
}

/// The chat's memory limit in bytes (already checked by `limits::memory_max`); `None`: the
/// configured default.
pub fn set_memory_max(t: &Connection, chat_id: &str, bytes: Option<u64>) -> Result<(), StoreError> {
    t.execute(
        "UPDATE chats SET memory_max = ?2, updated_at = ?3 WHERE id = ?1",
        params![chat_id, bytes.map(|b| b as i64), now_ms()],
    )?;
    Ok(())
}

/// The agent's permission mode (already checked by `limits::permission_mode`); `None`: the
/// configured default.
pub fn set_permission_mode(
    t: &Connection,
    chat_id: &str,
    mode: Option<&str>,
) -> Result<(), StoreError> {
    t.execute(
        "UPDATE chats SET permission_mode = ?2, updated_at = ?3 WHERE id = ?1",
        params![chat_id, mode, now_ms()],
    )?;
    Ok(())
}

/// Start a fresh agent session for the chat: its next turn begins it (`--session-id`).
pub fn new_session(t: &Connection, chat_id: &str) -> Result<String, StoreError> {
    let sid = uuid::Uuid::new_v4().to_string();
    t.execute(
        "UPDATE chats SET session_id = ?2, session_started = 0, updated_at = ?3 WHERE id = ?1",
        params![chat_id, sid, now_ms()],
    )?;
    Ok(sid)
}

pub fn set_budget(t: &Connection, chat_id: &str, usd: Option<f64>) -> Result<(), StoreError> {
    t.execute(
        "UPDATE chats SET daily_budget_usd = ?2, updated_at = ?3 WHERE id = ?1",
        params![chat_id, usd, now_ms()],
    )?;
    Ok(())
}

/// `/picortex status`: the chat's mode, session, queue, today's cost and last decisions; in the
/// owner's DM also the chats waiting for a decision.
pub fn status_text(t: &Connection, chat: &Chat) -> Result<String, StoreError> {
    let mode = Mode::of_chat(chat.attention.as_deref(), chat.is_group);
    let (queued, running, held): (i64, i64, i64) = t.query_row(
        "SELECT COUNT(*) FILTER (WHERE status = 'queued'), COUNT(*) FILTER (WHERE status IN ('starting', 'running')),
                COUNT(*) FILTER (WHERE status = 'held') FROM turns WHERE chat_id = ?1",
        [&chat.id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let now = now_ms();
    let spent = super::channel::spent_since(t, &chat.id, now - now.rem_euclid(86_400_000))?;
    let budget = chat
        .daily_budget_usd
        .map(|b| format!(" of ${b:.2}"))
        .unwrap_or_default();
    let mut s = format!(
        "attention: {mode}\nsession: {} ({})\nqueue: {queued} waiting, {running} running{}\ntoday: ${spent:.4}{budget}",
        chat.session_id,
        if chat.session_started { "in use" } else { "starts with the next message" },
        if held > 0 { format!(", {held} held for approval") } else { String::new() },
    );
    let mut st = t.prepare_cached(
        "SELECT verdict, rule, reason FROM gate_decisions WHERE chat_id = ?1 ORDER BY id DESC LIMIT 3",
    )?;
    let recent = st
        .query_map([&chat.id], |r| {
            Ok(format!(
                "- {}: {}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(2)?
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    if !recent.is_empty() {
        s.push_str("\nrecent decisions:\n");
        s.push_str(&recent.join("\n"));
    }
    let mut st = t.prepare_cached(
        "SELECT pending_no, kind, id FROM chats WHERE access = 'pending' AND pending_no IS NOT NULL ORDER BY pending_no",
    )?;
    let waiting = st
        .query_map([], |r| {
            Ok(format!(
                "#{} ({}) {}",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    if !waiting.is_empty() && !chat.is_group {
        s.push_str("\nwaiting for you: ");
        s.push_str(&waiting.join(", "));
    }
    Ok(s)
}
