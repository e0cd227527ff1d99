//! The log's operations, as plain functions over a transaction. Each is called through
//! `Store::call`, so it runs inside one savepoint of a group commit.

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension};

use super::{now_ms, StoreError};
use crate::outcome::TurnOutcome;
use crate::quarantine::Access;

/// A `message.received` (or the bot's `message.sent` echo) to store.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub event_id: String,
    pub event_type: String,
    pub request_id: String,
    pub body: String,
    pub chat_id: String,
    pub is_group: bool,
    pub bot_handle: Option<String>,
    pub sender: String,
    pub linq_id: String,
    pub text: String,
    pub reply_to: Option<String>,
    /// The bot's own message echoed back by Linq (`message.sent`, `is_me`).
    pub from_bot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// The event id was seen before: nothing was written.
    Duplicate,
    /// Stored; `turn_id` is the turn queued for it, if one was.
    Stored {
        turn_id: Option<String>,
        reason: String,
    },
}

/// What `store_message` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The event id was seen before: nothing was written.
    DuplicateEvent,
    /// The same Linq message under a new event id: recorded once, decided once.
    DuplicateMessage,
    New {
        message_id: i64,
    },
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Record an event we accept but do not act on beyond logging. Returns false for a replay.
pub fn record_event(
    t: &Connection,
    event_id: &str,
    event_type: &str,
    request_id: &str,
    body: &str,
) -> Result<bool, StoreError> {
    let n = t.execute(
        "INSERT OR IGNORE INTO events (event_id, event_type, received_at, request_id, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![event_id, event_type, now_ms(), request_id, body],
    )?;
    Ok(n == 1)
}

pub fn event_seen(t: &Connection, event_id: &str) -> Result<bool, StoreError> {
    Ok(t.query_row(
        "SELECT 1 FROM events WHERE event_id = ?1",
        [event_id],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

fn ensure_chat(
    t: &Connection,
    chat_id: &str,
    is_group: bool,
    bot_handle: Option<&str>,
) -> Result<(), StoreError> {
    let now = now_ms();
    t.execute(
        "INSERT INTO chats (id, kind, bot_handle, session_id, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT(id) DO UPDATE SET bot_handle = COALESCE(excluded.bot_handle, bot_handle), updated_at = excluded.updated_at",
        params![chat_id, if is_group { "group" } else { "direct" }, bot_handle, uuid::Uuid::new_v4().to_string(), now],
    )?;
    Ok(())
}

/// Store a message, its chat and its sender. Idempotent on the event id and on Linq's message
/// id. Deciding what to do with it is the caller's (`ingest`).
pub fn store_message(t: &Connection, m: &Inbound) -> Result<Stored, StoreError> {
    if !record_event(t, &m.event_id, &m.event_type, &m.request_id, &m.body)? {
        return Ok(Stored::DuplicateEvent);
    }
    ensure_chat(t, &m.chat_id, m.is_group, m.bot_handle.as_deref())?;
    t.execute(
        "INSERT OR IGNORE INTO participants (chat_id, handle, is_me) VALUES (?1, ?2, ?3)",
        params![m.chat_id, m.sender, m.from_bot],
    )?;
    let n = t.execute(
        "INSERT OR IGNORE INTO messages (linq_id, chat_id, direction, sender, text, reply_to, event_id, created_at)
         VALUES (?1, ?2, CASE WHEN ?8 THEN 'outbound' ELSE 'inbound' END, ?3, ?4, ?5, ?6, ?7)",
        params![m.linq_id, m.chat_id, m.sender, m.text, m.reply_to, m.event_id, now_ms(), m.from_bot],
    )?;
    if n == 0 {
        return Ok(Stored::DuplicateMessage);
    }
    Ok(Stored::New {
        message_id: t.last_insert_rowid(),
    })
}

/// Whether `reply_to` names one of the bot's own messages (a thread reply to the bot).
pub fn replies_to_bot(t: &Connection, reply_to: Option<&str>) -> Result<bool, StoreError> {
    let Some(r) = reply_to else {
        return Ok(false);
    };
    Ok(t.query_row(
        "SELECT 1 FROM messages WHERE linq_id = ?1 AND direction = 'outbound'",
        [r],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// What a turn does: answer the message, or ask the discriminator whether to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnKind {
    Answer,
    Discriminate,
}

impl TurnKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnKind::Answer => "answer",
            TurnKind::Discriminate => "discriminate",
        }
    }
}

/// Queue a turn for a stored message; `held` keeps it until the owner allows the chat.
pub fn queue_turn(
    t: &Connection,
    chat_id: &str,
    message_id: i64,
    kind: TurnKind,
    held: bool,
) -> Result<String, StoreError> {
    let id = new_id();
    t.execute(
        "INSERT INTO turns (id, chat_id, message_id, kind, status, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, chat_id, message_id, kind.as_str(), if held { "held" } else { "queued" }, now_ms()],
    )?;
    Ok(id)
}

#[derive(Debug, Clone)]
pub struct Chat {
    pub id: String,
    pub is_group: bool,
    pub display_name: Option<String>,
    /// The bot's line in this chat (Linq's `chat.owner_handle`).
    pub bot_handle: Option<String>,
    pub unix_user: Option<String>,
    pub home: Option<String>,
    pub session_id: String,
    pub session_started: bool,
    pub memory_max: Option<u64>,
    pub permission_mode: Option<String>,
    pub daily_budget_usd: Option<f64>,
    pub archived: bool,
    /// The stored attention mode; `None` = the default for the chat's kind.
    pub attention: Option<String>,
    pub access: Access,
    pub pending_no: Option<i64>,
    /// The owner was told about this pending chat.
    pub notified: bool,
}

impl Chat {
    /// How the owner is told which chat is meant.
    pub fn label(&self) -> String {
        match (&self.display_name, self.is_group) {
            (Some(n), true) => format!("the group \"{n}\""),
            (None, true) => format!("group {}", self.id),
            (_, false) => format!("chat {}", self.id),
        }
    }
}

pub fn chat(t: &Connection, id: &str) -> Result<Option<Chat>, StoreError> {
    Ok(t.query_row(
        "SELECT id, kind, unix_user, home, session_id, session_started, memory_max, permission_mode, daily_budget_usd,
                archived_at IS NOT NULL, display_name, bot_handle, attention, access, pending_no, notified_at IS NOT NULL
         FROM chats WHERE id = ?1",
        [id],
        |r| {
            let id: String = r.get(0)?;
            Ok(Chat {
                id: id.clone(),
                is_group: r.get::<_, String>(1)? == "group",
                unix_user: r.get(2)?,
                home: r.get(3)?,
                session_id: r.get(4)?,
                session_started: r.get::<_, i64>(5)? != 0,
                memory_max: setting(&id, "memory_max", r.get_ref(6)?, |v| match v {
                    ValueRef::Integer(n) => crate::limits::memory_max_bytes(n),
                    ValueRef::Text(t) => crate::limits::memory_max(&String::from_utf8_lossy(t)),
                    _ => Err("not a size".into()),
                }),
                permission_mode: setting(&id, "permission_mode", r.get_ref(7)?, |v| match v {
                    ValueRef::Text(t) => {
                        crate::limits::permission_mode(&String::from_utf8_lossy(t)).map(str::to_owned)
                    }
                    _ => Err("not a permission mode".into()),
                }),
                daily_budget_usd: setting(&id, "daily_budget_usd", r.get_ref(8)?, |v| match v {
                    ValueRef::Integer(n) => crate::limits::budget_usd(n as f64),
                    ValueRef::Real(n) => crate::limits::budget_usd(n),
                    ValueRef::Text(t) => crate::limits::daily_budget(&String::from_utf8_lossy(t))
                        .and_then(|b| b.ok_or_else(|| "not an amount".into())),
                    _ => Err("not an amount".into()),
                }),
                archived: r.get(9)?,
                display_name: r.get(10)?,
                bot_handle: r.get(11)?,
                attention: r.get(12)?,
                access: Access::from_stored(r.get::<_, Option<String>>(13)?.as_deref()),
                pending_no: r.get(14)?,
                notified: r.get(15)?,
            })
        },
    )
    .optional()?)
}

/// A per-chat setting as stored, read through its rule: NULL is the configured default, and so
/// is a value the rule refuses (written by hand, or before migration 4 typed the columns), with a
/// warning that names the chat, the column and what is wrong, instead of failing every turn.
fn setting<T>(
    chat: &str,
    column: &str,
    v: ValueRef<'_>,
    rule: impl FnOnce(ValueRef<'_>) -> Result<T, String>,
) -> Option<T> {
    if v == ValueRef::Null {
        return None;
    }
    match rule(v) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(chat = %chat, column, "chats.{column} of chat {chat} is unusable ({e}); using the configured default. Set it with picortexctl set");
            None
        }
    }
}

pub fn set_provisioned(
    t: &Connection,
    id: &str,
    user: &str,
    uid: u32,
    home: &str,
) -> Result<(), StoreError> {
    t.execute(
        "UPDATE chats SET unix_user = ?2, uid = ?3, home = ?4, updated_at = ?5 WHERE id = ?1",
        params![id, user, uid, home, now_ms()],
    )?;
    Ok(())
}

/// Whether a turn is still starting or running.
pub fn turn_in_flight(t: &Connection, turn_id: &str) -> Result<bool, StoreError> {
    Ok(t.query_row(
        "SELECT status IN ('starting', 'running') FROM turns WHERE id = ?1",
        [turn_id],
        |r| r.get::<_, bool>(0),
    )
    .optional()?
    .unwrap_or(false))
}

#[derive(Debug, Clone)]
pub struct TurnJob {
    pub turn_id: String,
    pub chat_id: String,
    pub status: String,
    pub prompt: String,
    /// Linq id of the inbound message, which the reply answers in-thread.
    pub reply_to: Option<String>,
    pub started_at: Option<i64>,
    /// The unit the turn runs in, once known (a spare's unit has its own id).
    pub unit: Option<String>,
    pub kind: TurnKind,
    /// The message's row and its sender, for the group context and the owner marks.
    pub message_id: i64,
    pub sender: String,
}

impl TurnJob {
    /// The id of the turn's unit and result file: the turn's own, or its spare's.
    pub fn unit_id(&self) -> String {
        self.unit
            .as_deref()
            .and_then(picortex_proto::ids::TurnId::from_unit_name)
            .map(|t| t.as_str().to_owned())
            .unwrap_or_else(|| self.turn_id.clone())
    }
}

const TURN_COLS: &str =
    "t.id, t.chat_id, t.status, m.text, m.linq_id, t.started_at, t.unit, t.kind, m.id, COALESCE(m.sender, '')";

fn turn_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<TurnJob> {
    Ok(TurnJob {
        turn_id: r.get(0)?,
        chat_id: r.get(1)?,
        status: r.get(2)?,
        prompt: r.get(3)?,
        reply_to: r.get(4)?,
        started_at: r.get(5)?,
        unit: r.get(6)?,
        kind: if r.get::<_, String>(7)? == "discriminate" {
            TurnKind::Discriminate
        } else {
            TurnKind::Answer
        },
        message_id: r.get(8)?,
        sender: r.get(9)?,
    })
}

/// The discriminator said to answer: queue the answer as a turn of its own (its own unit: the
/// discriminator's may still be loaded) that keeps the discriminator turn's place in the chat's
/// queue (its `created_at`), so it runs next.
pub fn queue_answer_after(t: &Connection, discriminator: &TurnJob) -> Result<String, StoreError> {
    let id = new_id();
    t.execute(
        "INSERT INTO turns (id, chat_id, message_id, kind, status, created_at)
         SELECT ?1, chat_id, message_id, 'answer', 'queued', created_at FROM turns WHERE id = ?2",
        params![id, discriminator.turn_id],
    )?;
    Ok(id)
}

/// A chat's messages after the bot's last message and before `before_id`, oldest first, at most
/// `limit` (the newest of them): the group context of a turn.
pub fn context_lines(
    t: &Connection,
    chat_id: &str,
    before_id: i64,
    limit: usize,
) -> Result<Vec<crate::context::Line>, StoreError> {
    let mut st = t.prepare_cached(
        "SELECT COALESCE(m.sender, ''), m.text FROM messages m
         WHERE m.chat_id = ?1 AND m.id < ?2 AND m.direction = 'inbound'
           AND m.id > COALESCE((SELECT MAX(id) FROM messages o WHERE o.chat_id = ?1 AND o.direction = 'outbound' AND o.id < ?2), 0)
         ORDER BY m.id DESC LIMIT ?3",
    )?;
    let mut v = st
        .query_map(params![chat_id, before_id, limit as i64], |r| {
            Ok(crate::context::Line {
                sender: r.get(0)?,
                name: None,
                text: r.get(1)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    v.reverse();
    Ok(v)
}

/// The oldest queued turn of each chat that has no turn in flight, oldest chats first, at most
/// `limit`, skipping chats in `busy` (in flight in this process but perhaps not yet recorded).
pub fn runnable_turns(
    t: &Connection,
    limit: usize,
    busy: &[String],
) -> Result<Vec<TurnJob>, StoreError> {
    let mut st = t.prepare_cached(&format!(
        "SELECT {TURN_COLS} FROM turns t JOIN messages m ON m.id = t.message_id
         WHERE t.status = 'queued'
           AND EXISTS (SELECT 1 FROM chats c WHERE c.id = t.chat_id AND c.access = 'allowed')
           AND t.created_at = (SELECT MIN(created_at) FROM turns q WHERE q.chat_id = t.chat_id AND q.status = 'queued')
           AND NOT EXISTS (SELECT 1 FROM turns a WHERE a.chat_id = t.chat_id AND a.status IN ('starting', 'running'))
         ORDER BY t.created_at LIMIT ?1"
    ))?;
    let rows = st.query_map([(limit + busy.len()) as i64], turn_job)?;
    let mut out = Vec::new();
    for r in rows {
        let j = r?;
        if !busy.contains(&j.chat_id) && out.len() < limit {
            out.push(j);
        }
    }
    Ok(out)
}

/// Turns that were starting or running when the gateway last stopped.
pub fn inflight_turns(t: &Connection) -> Result<Vec<TurnJob>, StoreError> {
    let mut st = t.prepare(&format!(
        "SELECT {TURN_COLS} FROM turns t JOIN messages m ON m.id = t.message_id WHERE t.status IN ('starting', 'running') ORDER BY t.created_at"
    ))?;
    let v = st.query_map([], turn_job)?.collect::<Result<Vec<_>, _>>()?;
    Ok(v)
}

/// Put a turn back in the queue: its unit never got its request (a spare lost to a crash).
pub fn requeue_turn(t: &Connection, id: &str) -> Result<(), StoreError> {
    t.execute(
        "UPDATE turns SET status = 'queued', unit = NULL, started_at = NULL WHERE id = ?1 AND status != 'done'",
        [id],
    )?;
    Ok(())
}

/// One more crash for each event that was in flight when the gateway died; the events that
/// have reached `strikes` crashes.
pub fn poison_strike(
    t: &Connection,
    in_flight: &[String],
    strikes: u32,
) -> Result<Vec<String>, StoreError> {
    for id in in_flight {
        t.execute(
            "INSERT INTO poison (event_id, strikes, last_at) VALUES (?1, 1, ?2)
             ON CONFLICT(event_id) DO UPDATE SET strikes = strikes + 1, last_at = excluded.last_at",
            params![id, now_ms()],
        )?;
    }
    let mut st = t.prepare("SELECT event_id FROM poison WHERE strikes >= ?1")?;
    let v = st
        .query_map([strikes], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(v)
}

/// Whether the chat has turns waiting.
pub fn has_queued(t: &Connection, chat_id: &str) -> Result<bool, StoreError> {
    Ok(t.query_row(
        "SELECT EXISTS (SELECT 1 FROM turns WHERE chat_id = ?1 AND status = 'queued')",
        [chat_id],
        |r| r.get(0),
    )?)
}

pub fn set_turn_status(
    t: &Connection,
    id: &str,
    status: &str,
    unit: Option<&str>,
) -> Result<(), StoreError> {
    t.execute(
        "UPDATE turns SET status = ?2, unit = COALESCE(?3, unit), started_at = CASE WHEN ?2 = 'starting' THEN ?4 ELSE started_at END WHERE id = ?1",
        params![id, status, unit, now_ms()],
    )?;
    Ok(())
}

/// How a turn ended, ready to be recorded.
#[derive(Debug, Clone)]
pub struct Finished {
    pub outcome: TurnOutcome,
    pub unit_result: Option<String>,
    pub error: Option<String>,
    pub session_id: Option<String>,
    pub new_session: bool,
    /// Whether the agent session now exists (it ran at least once under this id).
    pub session_exists: bool,
    pub cost_usd: Option<f64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub duration_ms: Option<u64>,
}

impl Finished {
    /// An end with `outcome` and nothing else known yet.
    pub fn new(outcome: TurnOutcome) -> Self {
        Self {
            outcome,
            unit_result: None,
            error: None,
            session_id: None,
            new_session: false,
            session_exists: false,
            cost_usd: None,
            input_tokens: None,
            output_tokens: None,
            duration_ms: None,
        }
    }
}

/// Record a turn's end and queue its reply parts in the outbox, atomically.
pub fn finish_turn(
    t: &Connection,
    job: &TurnJob,
    f: &Finished,
    parts: &[String],
) -> Result<(), StoreError> {
    let now = now_ms();
    let changed = t.execute(
        "UPDATE turns SET status = 'done', outcome = ?2, unit_result = ?3, error = ?4, session_id = ?5, new_session = ?6,
            cost_usd = ?7, input_tokens = ?8, output_tokens = ?9, duration_ms = ?10, finished_at = ?11
         WHERE id = ?1 AND status != 'done'",
        params![
            job.turn_id, f.outcome.as_str(), f.unit_result, f.error, f.session_id, f.new_session as i64, f.cost_usd,
            f.input_tokens.map(|v| v as i64), f.output_tokens.map(|v| v as i64), f.duration_ms.map(|v| v as i64), now
        ],
    )?;
    if changed == 0 {
        return Ok(()); // already finished (a second collector after a restart): nothing to add
    }
    if f.session_exists {
        t.execute(
            "UPDATE chats SET session_started = 1, session_id = COALESCE(?2, session_id), updated_at = ?3 WHERE id = ?1",
            params![job.chat_id, f.session_id, now],
        )?;
    }
    for (i, p) in parts.iter().enumerate() {
        t.execute(
            "INSERT INTO outbox (chat_id, turn_id, part, text, reply_to, idempotency_key, status, next_attempt_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7)",
            params![job.chat_id, job.turn_id, i as i64, p, if i == 0 { job.reply_to.clone() } else { None }, format!("picortex-{}-{i}", job.turn_id), now],
        )?;
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: i64,
    /// The chat to send in; empty while `open_dm` is set.
    pub chat_id: String,
    /// `(to, from)`: no chat with `to` exists yet; the send opens one from the bot's line `from`.
    pub open_dm: Option<(String, String)>,
    pub text: String,
    pub reply_to: Option<String>,
    pub idempotency_key: String,
    pub attempts: u32,
    /// The turn this part answers, for the journal (PICORTEX_TURN).
    pub turn_id: Option<String>,
    /// A file to send as a media part instead of `text` (media out).
    pub file: Option<OutFile>,
}

/// A spooled file an outbox row sends (picortexd/src/media/out.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFile {
    pub path: String,
    pub name: String,
    pub mime: String,
}

/// The oldest pending part of each chat (or each handle without a chat yet), if it is due: parts
/// of one chat go out in order. A part due further ahead than any retry is ever put off was
/// scheduled before the wall clock jumped back: it is due now, not hours later.
pub fn due_outbox(t: &Connection, now: i64, limit: usize) -> Result<Vec<Outgoing>, StoreError> {
    let jumped =
        now.saturating_add(crate::linq::client::MAX_RETRY_DELAY.as_millis() as i64 + 60_000);
    let mut st = t.prepare_cached(
        "SELECT o.id, COALESCE(o.chat_id, ''), o.to_handle, o.from_handle, o.text, o.reply_to, o.idempotency_key, o.attempts, o.turn_id,
                o.file_path, o.file_name, o.file_mime
         FROM outbox o
         WHERE o.status = 'pending' AND (o.next_attempt_at <= ?1 OR o.next_attempt_at > ?3)
           AND o.id = (SELECT MIN(id) FROM outbox p WHERE p.status = 'pending'
                        AND COALESCE(p.chat_id, 'to:' || p.to_handle) = COALESCE(o.chat_id, 'to:' || o.to_handle))
         ORDER BY o.id LIMIT ?2",
    )?;
    let v = st
        .query_map(params![now, limit as i64, jumped], |r| {
            let chat_id: String = r.get(1)?;
            let to: Option<String> = r.get(2)?;
            let from: Option<String> = r.get(3)?;
            Ok(Outgoing {
                id: r.get(0)?,
                open_dm: match (chat_id.is_empty(), to, from) {
                    (true, Some(to), Some(from)) => Some((to, from)),
                    _ => None,
                },
                chat_id,
                text: r.get(4)?,
                reply_to: r.get(5)?,
                idempotency_key: r.get(6)?,
                attempts: r.get::<_, i64>(7)? as u32,
                turn_id: r.get(8)?,
                file: match (r.get(9)?, r.get(10)?, r.get(11)?) {
                    (Some(path), Some(name), Some(mime)) => Some(OutFile { path, name, mime }),
                    _ => None,
                },
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(v)
}

/// The 1:1 chat the bot already has with `handle`, if the log knows one.
pub fn direct_chat_with(t: &Connection, handle: &str) -> Result<Option<String>, StoreError> {
    Ok(t.query_row(
        "SELECT c.id FROM chats c JOIN participants p ON p.chat_id = c.id AND p.is_me = 0
             WHERE c.kind = 'direct' AND p.handle = ?1 ORDER BY c.updated_at DESC LIMIT 1",
        [handle],
        |r| r.get(0),
    )
    .optional()?)
}

/// When the next pending part becomes due, if any (the caller sleeps at most 30 s regardless, so
/// a part made due by a clock jump is found on the next round).
pub fn next_outbox_due(t: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(t.query_row(
        "SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending'",
        [],
        |r| r.get(0),
    )?)
}

pub fn outbox_sent(t: &Connection, o: &Outgoing, linq_id: &str) -> Result<(), StoreError> {
    let now = now_ms();
    t.execute(
        "UPDATE outbox SET status = 'sent', attempts = attempts + 1, linq_message_id = ?2, sent_at = ?3 WHERE id = ?1",
        params![o.id, linq_id, now],
    )?;
    // Linq's echo of this message (message.sent) may have been stored first, as an inbound row
    // — after a crash between Linq's accept and this record it usually is. Linq's answer to our
    // send is proof the message is the bot's: make the row say so.
    t.execute(
        "INSERT INTO messages (linq_id, chat_id, direction, sender, text, reply_to, status, sent_at, created_at)
         VALUES (?1, ?2, 'outbound', NULL, ?3, ?4, 'sent', ?5, ?5)
         ON CONFLICT(linq_id) DO UPDATE SET direction = 'outbound', reply_to = COALESCE(messages.reply_to, excluded.reply_to),
            status = COALESCE(messages.status, excluded.status), sent_at = COALESCE(messages.sent_at, excluded.sent_at)",
        params![linq_id, o.chat_id, o.text, o.reply_to, now],
    )?;
    Ok(())
}

pub fn outbox_retry(t: &Connection, id: i64, next_at: i64, error: &str) -> Result<(), StoreError> {
    t.execute(
        "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3 WHERE id = ?1",
        params![id, next_at, error],
    )?;
    Ok(())
}

pub fn outbox_failed(t: &Connection, id: i64, error: &str) -> Result<(), StoreError> {
    t.execute(
        "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
        params![id, error],
    )?;
    Ok(())
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counts {
    pub chats: i64,
    pub queued: i64,
    pub running: i64,
    pub outbox_pending: i64,
}

pub fn counts(t: &Connection) -> Result<Counts, StoreError> {
    Ok(t.query_row(
        "SELECT (SELECT COUNT(*) FROM chats),
                (SELECT COUNT(*) FROM turns WHERE status = 'queued'),
                (SELECT COUNT(*) FROM turns WHERE status IN ('starting', 'running')),
                (SELECT COUNT(*) FROM outbox WHERE status = 'pending')",
        [],
        |r| {
            Ok(Counts {
                chats: r.get(0)?,
                queued: r.get(1)?,
                running: r.get(2)?,
                outbox_pending: r.get(3)?,
            })
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;

    /// A stored message, with a queued turn when `answer` (what `ingest` does once the gate
    /// and quarantine said yes).
    fn ingest_message(t: &Connection, m: &(Inbound, bool)) -> Result<Ingested, StoreError> {
        let stored = store_message(t, &m.0)?;
        t.execute(
            "UPDATE chats SET access = 'allowed' WHERE id = ?1",
            [&m.0.chat_id],
        )?;
        Ok(match stored {
            Stored::DuplicateEvent => Ingested::Duplicate,
            Stored::New { message_id } if m.1 => Ingested::Stored {
                turn_id: Some(queue_turn(
                    t,
                    &m.0.chat_id,
                    message_id,
                    TurnKind::Answer,
                    false,
                )?),
                reason: "test".into(),
            },
            _ => Ingested::Stored {
                turn_id: None,
                reason: "test".into(),
            },
        })
    }

    fn inbound(event: &str, chat: &str, msg: &str, answer: bool) -> (Inbound, bool) {
        let m = Inbound {
            event_id: event.into(),
            event_type: "message.received".into(),
            request_id: "r".into(),
            body: "{}".into(),
            chat_id: chat.into(),
            is_group: false,
            bot_handle: Some("+15550001000".into()),
            sender: "+15550002000".into(),
            linq_id: msg.into(),
            text: format!("text of {msg}"),
            reply_to: None,
            from_bot: false,
        };
        (m, answer)
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("t.db")).unwrap();
        (d, s)
    }

    #[tokio::test]
    async fn a_replayed_event_is_stored_once_and_queues_one_turn() {
        let (_d, s) = store().await;
        let m = inbound("e1", "c1", "m1", true);
        let m2 = m.clone();
        let a = s.call(move |t| ingest_message(t, &m)).await.unwrap();
        let b = s.call(move |t| ingest_message(t, &m2)).await.unwrap();
        assert!(matches!(
            a,
            Ingested::Stored {
                turn_id: Some(_),
                ..
            }
        ));
        assert_eq!(b, Ingested::Duplicate);
        let c = s.call(counts).await.unwrap();
        assert_eq!((c.chats, c.queued), (1, 1));
    }

    #[tokio::test]
    async fn turns_of_one_chat_run_one_at_a_time_in_order() {
        let (_d, s) = store().await;
        for (e, c, m) in [("e1", "c1", "m1"), ("e2", "c1", "m2"), ("e3", "c2", "m3")] {
            let x = inbound(e, c, m, true);
            s.call(move |t| ingest_message(t, &x)).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let r = s.call(|t| runnable_turns(t, 10, &[])).await.unwrap();
        let got: Vec<_> = r
            .iter()
            .map(|j| (j.chat_id.as_str(), j.reply_to.clone().unwrap()))
            .collect();
        assert_eq!(got, vec![("c1", "m1".to_owned()), ("c2", "m3".to_owned())]);
        let first = r[0].turn_id.clone();
        s.call(move |t| set_turn_status(t, &first, "running", Some("u")))
            .await
            .unwrap();
        let r = s.call(|t| runnable_turns(t, 10, &[])).await.unwrap();
        assert_eq!(
            r.iter().map(|j| j.chat_id.as_str()).collect::<Vec<_>>(),
            vec!["c2"],
            "c1 is busy"
        );
        let busy = vec!["c2".to_owned()];
        let r = s.call(move |t| runnable_turns(t, 10, &busy)).await.unwrap();
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn a_part_put_off_past_any_retry_delay_is_due_after_a_clock_jump() {
        let (_d, s) = store().await;
        let m = inbound("e1", "c1", "m1", true);
        s.call(move |t| ingest_message(t, &m)).await.unwrap();
        let job = s
            .call(|t| runnable_turns(t, 1, &[]))
            .await
            .unwrap()
            .remove(0);
        let f = Finished::new(TurnOutcome::Ok);
        s.call(move |t| finish_turn(t, &job, &f, &["answer".to_owned()]))
            .await
            .unwrap();
        let now = now_ms();
        // Retried in 10 s: not due now.
        s.call(move |t| outbox_retry(t, 1, now + 10_000, "503"))
            .await
            .unwrap();
        assert!(s
            .call(move |t| due_outbox(t, now, 10))
            .await
            .unwrap()
            .is_empty());
        // The clock jumps back two hours: the part now looks due in two hours; it is due now.
        let back = now - 2 * 3_600_000;
        assert_eq!(
            s.call(move |t| due_outbox(t, back, 10))
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn turns_of_chats_not_allowed_never_run() {
        let (_d, s) = store().await;
        let x = inbound("e1", "c1", "m1", true);
        s.call(move |t| ingest_message(t, &x)).await.unwrap();
        s.call(|t| {
            t.execute("UPDATE chats SET access = 'pending'", [])?;
            Ok(())
        })
        .await
        .unwrap();
        assert!(s
            .call(|t| runnable_turns(t, 10, &[]))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn finishing_a_turn_queues_its_reply_once() {
        let (_d, s) = store().await;
        let m = inbound("e1", "c1", "m1", true);
        s.call(move |t| ingest_message(t, &m)).await.unwrap();
        let job = s
            .call(|t| runnable_turns(t, 1, &[]))
            .await
            .unwrap()
            .remove(0);
        let f = Finished {
            session_exists: true,
            ..Finished::new(TurnOutcome::Ok)
        };
        let parts = vec!["one".to_owned(), "two".to_owned()];
        for _ in 0..2 {
            let (j, f, p) = (job.clone(), f.clone(), parts.clone());
            s.call(move |t| finish_turn(t, &j, &f, &p)).await.unwrap();
        }
        let due = s.call(|t| due_outbox(t, i64::MAX, 10)).await.unwrap();
        assert_eq!(due.len(), 1, "one part per chat at a time");
        assert_eq!(due[0].text, "one");
        assert_eq!(due[0].reply_to.as_deref(), Some("m1"));
        let o = due[0].clone();
        s.call(move |t| outbox_sent(t, &o, "out1")).await.unwrap();
        let due = s.call(|t| due_outbox(t, i64::MAX, 10)).await.unwrap();
        assert_eq!(
            due.iter().map(|o| o.text.as_str()).collect::<Vec<_>>(),
            vec!["two"]
        );
        assert_eq!(due[0].reply_to, None);
        let c = s.call(|t| chat(t, "c1")).await.unwrap().unwrap();
        assert!(c.session_started);
    }

    #[tokio::test]
    async fn a_reply_whose_echo_came_first_is_still_the_bots() {
        let (_d, s) = store().await;
        let m = inbound("e1", "c1", "m1", true);
        s.call(move |t| ingest_message(t, &m)).await.unwrap();
        let job = s
            .call(|t| runnable_turns(t, 1, &[]))
            .await
            .unwrap()
            .remove(0);
        let f = Finished::new(TurnOutcome::Ok);
        s.call(move |t| finish_turn(t, &job, &f, &["answer".to_owned()]))
            .await
            .unwrap();
        let o = s
            .call(|t| due_outbox(t, i64::MAX, 10))
            .await
            .unwrap()
            .remove(0);
        // Linq accepted the send as "out1"; its message.sent echo is stored before we record it.
        let mut echo = inbound("e2", "c1", "out1", false);
        echo.0.event_type = "message.sent".into();
        s.call(move |t| ingest_message(t, &echo)).await.unwrap();
        s.call(move |t| outbox_sent(t, &o, "out1")).await.unwrap();
        let (dir, reply_to): (String, Option<String>) = s
            .call(|t| {
                Ok(t.query_row(
                    "SELECT direction, reply_to FROM messages WHERE linq_id = 'out1'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(
            (dir.as_str(), reply_to.as_deref()),
            ("outbound", Some("m1"))
        );
    }
}
