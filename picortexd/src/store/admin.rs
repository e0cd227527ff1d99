//! What the administrator reads through `org.picortex.Gateway1` (and so `picortexctl`): chats
//! with their settings in effect, one chat's recent decisions and turns, the quarantine, counts,
//! costs, and why a message was or was not answered. Plain reads over a transaction; each record
//! is an `a{sv}` dictionary on the bus (a `None` field is left out), keys as named here.

use rusqlite::{params, Connection, OptionalExtension};
use zbus::{SerializeDict, Type};

use super::queries::{self, Chat};
use super::{now_ms, StoreError};
use crate::attention::Mode;

/// The configured defaults a chat without its own setting runs with.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub memory_max: u64,
    pub permission_mode: String,
    pub daily_budget_usd: Option<f64>,
}

#[derive(Debug, Default, Clone, SerializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct ChatRecord {
    pub id: String,
    /// direct or group.
    pub kind: String,
    pub name: Option<String>,
    /// allowed, pending or blocked.
    pub access: String,
    pub access_reason: Option<String>,
    /// The quarantine number, while pending (and after, until reused).
    pub pending_no: Option<i64>,
    /// The mode in effect; `attention_own`: set for this chat (else the kind's default).
    pub attention: String,
    pub attention_own: bool,
    /// Bytes, in effect; `memory_max_own`: set for this chat.
    pub memory_max: u64,
    pub memory_max_own: bool,
    pub permission_mode: String,
    pub permission_mode_own: bool,
    pub daily_budget_usd: Option<f64>,
    pub daily_budget_own: bool,
    /// Spent since 00:00 UTC, as the agent reported it.
    pub cost_today_usd: f64,
    /// The last message in either direction (unix ms).
    pub last_activity_ms: Option<i64>,
    pub unix_user: Option<String>,
    pub archived: bool,
    pub session_id: String,
    pub turns_queued: i64,
    pub turns_running: i64,
    pub turns_held: i64,
}

#[derive(Debug, Default, Clone, SerializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct DecisionRecord {
    /// Linq's id of the message decided on.
    pub message: Option<String>,
    pub verdict: String,
    pub rule: String,
    pub mode: String,
    pub score: Option<f64>,
    pub reason: String,
    pub at_ms: i64,
}

#[derive(Debug, Default, Clone, SerializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct TurnRecord {
    pub id: String,
    pub chat: String,
    /// Linq's id of the message the turn answers.
    pub message: Option<String>,
    /// answer or discriminate.
    pub kind: String,
    pub status: String,
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub unit: Option<String>,
    pub cost_usd: Option<f64>,
    pub duration_ms: Option<i64>,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
}

#[derive(Debug, Default, Clone, SerializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct PendingRecord {
    pub number: i64,
    pub chat: String,
    pub kind: String,
    pub name: Option<String>,
    pub members: Vec<String>,
    pub first_message: Option<String>,
    pub sender: Option<String>,
    pub waiting_since_ms: i64,
    /// The owner was told (a group waits for its participants first).
    pub notified: bool,
    pub turns_held: i64,
}

#[derive(Debug, Default, Clone, SerializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct StatsRecord {
    pub version: String,
    pub chats: i64,
    pub chats_allowed: i64,
    pub chats_pending: i64,
    pub chats_blocked: i64,
    pub chats_archived: i64,
    pub turns_queued: i64,
    pub turns_running: i64,
    pub turns_held: i64,
    pub turns_today: i64,
    pub turns_failed_today: i64,
    pub replies_pending: i64,
    pub cost_today_usd: f64,
}

#[derive(Debug, Default, Clone, SerializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct CostRecord {
    pub chat: String,
    pub name: Option<String>,
    pub cost_usd: f64,
    pub turns: i64,
    pub since_ms: i64,
}

#[derive(Debug, Default, Clone, SerializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct MessageRecord {
    pub id: String,
    pub chat: String,
    pub direction: String,
    pub sender: Option<String>,
    pub text: String,
    pub at_ms: i64,
}

pub fn utc_midnight_ms(now: i64) -> i64 {
    now - now.rem_euclid(86_400_000)
}

pub fn chat_record(t: &Connection, c: &Chat, d: &Defaults) -> Result<ChatRecord, StoreError> {
    let now = now_ms();
    let cost_today_usd = super::channel::spent_since(t, &c.id, utc_midnight_ms(now))?;
    let (queued, running, held): (i64, i64, i64) = t.query_row(
        "SELECT COUNT(*) FILTER (WHERE status = 'queued'), COUNT(*) FILTER (WHERE status IN ('starting', 'running')),
                COUNT(*) FILTER (WHERE status = 'held') FROM turns WHERE chat_id = ?1",
        [&c.id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let last: Option<i64> = t.query_row(
        "SELECT MAX(created_at) FROM messages WHERE chat_id = ?1",
        [&c.id],
        |r| r.get(0),
    )?;
    let reason: Option<String> = t.query_row(
        "SELECT access_reason FROM chats WHERE id = ?1",
        [&c.id],
        |r| r.get(0),
    )?;
    Ok(ChatRecord {
        id: c.id.clone(),
        kind: if c.is_group { "group" } else { "direct" }.into(),
        name: c.display_name.clone(),
        access: c.access.as_str().into(),
        access_reason: reason,
        pending_no: c.pending_no,
        attention: Mode::of_chat(c.attention.as_deref(), c.is_group)
            .as_str()
            .into(),
        attention_own: c
            .attention
            .as_deref()
            .is_some_and(|a| Mode::parse(a).is_ok()),
        memory_max: c.memory_max.unwrap_or(d.memory_max),
        memory_max_own: c.memory_max.is_some(),
        permission_mode: c
            .permission_mode
            .clone()
            .unwrap_or_else(|| d.permission_mode.clone()),
        permission_mode_own: c.permission_mode.is_some(),
        daily_budget_usd: c.daily_budget_usd.or(d.daily_budget_usd),
        daily_budget_own: c.daily_budget_usd.is_some(),
        cost_today_usd,
        last_activity_ms: last,
        unix_user: c.unix_user.clone(),
        archived: c.archived,
        session_id: c.session_id.clone(),
        turns_queued: queued,
        turns_running: running,
        turns_held: held,
    })
}

pub fn list_chats(t: &Connection, d: &Defaults) -> Result<Vec<ChatRecord>, StoreError> {
    let ids: Vec<String> = {
        let mut st = t.prepare("SELECT id FROM chats ORDER BY updated_at DESC, id")?;
        let v = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        v
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(c) = queries::chat(t, &id)? {
            out.push(chat_record(t, &c, d)?);
        }
    }
    Ok(out)
}

fn decision(r: &rusqlite::Row<'_>) -> rusqlite::Result<DecisionRecord> {
    Ok(DecisionRecord {
        message: r.get(0)?,
        verdict: r.get(1)?,
        rule: r.get(2)?,
        mode: r.get(3)?,
        score: r.get(4)?,
        reason: r.get(5)?,
        at_ms: r.get(6)?,
    })
}

const DECISION_COLS: &str =
    "m.linq_id, g.verdict, g.rule, g.mode, g.score, g.reason, g.created_at FROM gate_decisions g LEFT JOIN messages m ON m.id = g.message_id";

fn turn(r: &rusqlite::Row<'_>) -> rusqlite::Result<TurnRecord> {
    Ok(TurnRecord {
        id: r.get(0)?,
        chat: r.get(1)?,
        message: r.get(2)?,
        kind: r.get(3)?,
        status: r.get(4)?,
        outcome: r.get(5)?,
        error: r.get(6)?,
        unit: r.get(7)?,
        cost_usd: r.get(8)?,
        duration_ms: r.get(9)?,
        created_ms: r.get(10)?,
        finished_ms: r.get(11)?,
    })
}

const TURN_COLS: &str = "t.id, t.chat_id, m.linq_id, t.kind, t.status, t.outcome, t.error, t.unit, t.cost_usd, t.duration_ms, t.created_at, t.finished_at
     FROM turns t LEFT JOIN messages m ON m.id = t.message_id";

/// The chat's last `n` gate decisions and turns, newest first.
pub fn recent(
    t: &Connection,
    chat_id: &str,
    n: i64,
) -> Result<(Vec<DecisionRecord>, Vec<TurnRecord>), StoreError> {
    let mut st = t.prepare(&format!(
        "SELECT {DECISION_COLS} WHERE g.chat_id = ?1 ORDER BY g.id DESC LIMIT ?2"
    ))?;
    let ds = st
        .query_map(params![chat_id, n], decision)?
        .collect::<Result<_, _>>()?;
    let mut st = t.prepare(&format!(
        "SELECT {TURN_COLS} WHERE t.chat_id = ?1 ORDER BY t.created_at DESC, t.rowid DESC LIMIT ?2"
    ))?;
    let ts = st
        .query_map(params![chat_id, n], turn)?
        .collect::<Result<_, _>>()?;
    Ok((ds, ts))
}

pub fn pending(t: &Connection) -> Result<Vec<PendingRecord>, StoreError> {
    let rows: Vec<(i64, String, String, Option<String>, i64, bool)> = {
        let mut st = t.prepare(
            "SELECT pending_no, id, kind, display_name, created_at, notified_at IS NOT NULL FROM chats
             WHERE access = 'pending' ORDER BY pending_no IS NULL, pending_no, created_at",
        )?;
        let v = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, Option<i64>>(0)?.unwrap_or(0),
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        v
    };
    let mut out = Vec::new();
    for (number, chat, kind, name, since, notified) in rows {
        let first = super::authority::first_held_message(t, &chat)?;
        let held: i64 = t.query_row(
            "SELECT COUNT(*) FROM turns WHERE chat_id = ?1 AND status = 'held'",
            [&chat],
            |r| r.get(0),
        )?;
        out.push(PendingRecord {
            number,
            members: super::authority::members(t, &chat)?,
            chat,
            kind,
            name,
            sender: first.as_ref().map(|f| f.0.clone()),
            first_message: first.map(|f| f.1),
            waiting_since_ms: since,
            notified,
            turns_held: held,
        });
    }
    Ok(out)
}

/// A group's agent asking for something of the owner's (SPEC C2), waiting for an answer.
#[derive(Debug, Default, Clone, SerializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct RequestRecord {
    /// What the owner answers with: `yes 4` in their DM, `picortexctl approve 4`.
    pub number: i64,
    /// The asking chat.
    pub chat: String,
    pub chat_name: Option<String>,
    /// read (a file bound into one turn) or import (a copy into the chat's inbox).
    pub kind: String,
    /// Whose workspace the path is in.
    pub source_chat: Option<String>,
    pub path: String,
    pub why: String,
    /// The handle whose message the agent was answering.
    pub asked_by: String,
    pub asked_ms: i64,
    /// After this, the request counts as no.
    pub expires_ms: i64,
}

/// The requests waiting for the owner, oldest first.
pub fn requests(t: &Connection) -> Result<Vec<RequestRecord>, StoreError> {
    let mut st = t.prepare(
        "SELECT d.number, d.chat_id, c.display_name, d.kind, d.source_chat, d.path, d.why, d.sender,
                d.created_at, d.expires_at
         FROM disclosures d JOIN chats c ON c.id = d.chat_id
         WHERE d.status = 'pending' ORDER BY d.created_at, d.id",
    )?;
    let v = st
        .query_map([], |r| {
            Ok(RequestRecord {
                number: r.get(0)?,
                chat: r.get(1)?,
                chat_name: r.get(2)?,
                kind: r.get(3)?,
                source_chat: r.get(4)?,
                path: r.get(5)?,
                why: r.get(6)?,
                asked_by: r.get(7)?,
                asked_ms: r.get(8)?,
                expires_ms: r.get(9)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(v)
}

pub fn stats(t: &Connection) -> Result<StatsRecord, StoreError> {
    let midnight = utc_midnight_ms(now_ms());
    Ok(t.query_row(
        "SELECT (SELECT COUNT(*) FROM chats),
                (SELECT COUNT(*) FROM chats WHERE access = 'allowed'),
                (SELECT COUNT(*) FROM chats WHERE access = 'pending'),
                (SELECT COUNT(*) FROM chats WHERE access = 'blocked'),
                (SELECT COUNT(*) FROM chats WHERE archived_at IS NOT NULL),
                (SELECT COUNT(*) FROM turns WHERE status = 'queued'),
                (SELECT COUNT(*) FROM turns WHERE status IN ('starting', 'running')),
                (SELECT COUNT(*) FROM turns WHERE status = 'held'),
                (SELECT COUNT(*) FROM turns WHERE created_at >= ?1),
                (SELECT COUNT(*) FROM turns WHERE finished_at >= ?1 AND outcome NOT IN ('ok', 'not_answered', 'blocked')),
                (SELECT COUNT(*) FROM outbox WHERE status = 'pending'),
                (SELECT COALESCE(SUM(cost_usd), 0) FROM turns WHERE finished_at >= ?1)",
        [midnight],
        |r| {
            Ok(StatsRecord {
                version: env!("CARGO_PKG_VERSION").into(),
                chats: r.get(0)?,
                chats_allowed: r.get(1)?,
                chats_pending: r.get(2)?,
                chats_blocked: r.get(3)?,
                chats_archived: r.get(4)?,
                turns_queued: r.get(5)?,
                turns_running: r.get(6)?,
                turns_held: r.get(7)?,
                turns_today: r.get(8)?,
                turns_failed_today: r.get(9)?,
                replies_pending: r.get(10)?,
                cost_today_usd: r.get(11)?,
            })
        },
    )?)
}

/// Cost per chat of the turns finished since `since_ms`, most expensive first.
pub fn cost(t: &Connection, since_ms: i64) -> Result<Vec<CostRecord>, StoreError> {
    let mut st = t.prepare(
        "SELECT c.id, c.display_name, COALESCE(SUM(t.cost_usd), 0), COUNT(t.id) FROM chats c
         JOIN turns t ON t.chat_id = c.id AND t.finished_at >= ?1
         GROUP BY c.id ORDER BY 3 DESC, c.id",
    )?;
    let v = st
        .query_map([since_ms], |r| {
            Ok(CostRecord {
                chat: r.get(0)?,
                name: r.get(1)?,
                cost_usd: r.get(2)?,
                turns: r.get(3)?,
                since_ms,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(v)
}

/// Why a message (Linq's id) was or was not answered: the message, its gate decisions, its
/// turns, and the text of the reply parts those turns queued.
#[allow(clippy::type_complexity)]
pub fn why(
    t: &Connection,
    linq_id: &str,
) -> Result<
    Option<(
        MessageRecord,
        Vec<DecisionRecord>,
        Vec<TurnRecord>,
        Vec<String>,
    )>,
    StoreError,
> {
    let Some((rowid, msg)) = t
        .query_row(
            "SELECT id, linq_id, chat_id, direction, sender, text, created_at FROM messages WHERE linq_id = ?1",
            [linq_id],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    MessageRecord {
                        id: r.get(1)?,
                        chat: r.get(2)?,
                        direction: r.get(3)?,
                        sender: r.get(4)?,
                        text: r.get(5)?,
                        at_ms: r.get(6)?,
                    },
                ))
            },
        )
        .optional()?
    else {
        return Ok(None);
    };
    let mut st = t.prepare(&format!(
        "SELECT {DECISION_COLS} WHERE g.message_id = ?1 ORDER BY g.id"
    ))?;
    let ds = st.query_map([rowid], decision)?.collect::<Result<_, _>>()?;
    let mut st = t.prepare(&format!(
        "SELECT {TURN_COLS} WHERE t.message_id = ?1 ORDER BY t.created_at, t.rowid"
    ))?;
    let ts: Vec<TurnRecord> = st.query_map([rowid], turn)?.collect::<Result<_, _>>()?;
    let mut replies = Vec::new();
    let mut st = t.prepare("SELECT text FROM outbox WHERE turn_id = ?1 ORDER BY part, id")?;
    for tr in &ts {
        for r in st.query_map([&tr.id], |r| r.get::<_, String>(0))? {
            replies.push(r?);
        }
    }
    let mut st =
        t.prepare("SELECT text FROM outbox WHERE idempotency_key = ?1 ORDER BY part, id")?;
    for r in st.query_map([format!("picortex-cmd-{linq_id}")], |r| {
        r.get::<_, String>(0)
    })? {
        replies.push(r?);
    }
    Ok(Some((msg, ds, ts, replies)))
}

/// An administrator removed the chat's user (through the helper): the log forgets its user and
/// home and its agent session, and blocks it, so nothing provisions it again unless allowed.
pub fn removed(t: &Connection, chat_id: &str) -> Result<usize, StoreError> {
    let now = now_ms();
    t.execute(
        "UPDATE chats SET unix_user = NULL, uid = NULL, home = NULL, archived_at = NULL,
                session_id = ?2, session_started = 0, updated_at = ?3 WHERE id = ?1",
        params![chat_id, uuid::Uuid::new_v4().to_string(), now],
    )?;
    let r = super::authority::set_access(
        t,
        chat_id,
        crate::quarantine::Access::Blocked,
        "removed by an administrator",
    )?;
    Ok(r.dropped)
}

/// Turns of the chat that hold its unit now (starting or running).
pub fn busy(t: &Connection, chat_id: &str) -> Result<i64, StoreError> {
    Ok(t.query_row(
        "SELECT COUNT(*) FROM turns WHERE chat_id = ?1 AND status IN ('starting', 'running')",
        [chat_id],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.db");
        drop(super::super::Store::open(&p).unwrap());
        let c = Connection::open(&p).unwrap();
        let now = now_ms();
        c.execute_batch(&format!(
            "INSERT INTO chats (id, kind, session_id, created_at, updated_at, access, display_name, memory_max)
               VALUES ('g', 'group', 's1', 0, {now}, 'allowed', 'Ops', 536870912),
                      ('p', 'direct', 's2', 0, 0, 'pending', NULL, NULL);
             UPDATE chats SET pending_no = 2, notified_at = 1 WHERE id = 'p';
             INSERT INTO participants (chat_id, handle) VALUES ('p', '+1555');
             INSERT INTO messages (id, linq_id, chat_id, direction, sender, text, created_at)
               VALUES (1, 'm1', 'g', 'inbound', '+1', 'hello there', {now}),
                      (2, 'm2', 'p', 'inbound', '+1555', 'who is this', 5);
             INSERT INTO gate_decisions (message_id, chat_id, mode, verdict, rule, reason, created_at)
               VALUES (1, 'g', 'always', 'answer', 'always', 'attention: always', {now}),
                      (2, 'p', 'always', 'held', 'quarantine', 'waiting', 5);
             INSERT INTO turns (id, chat_id, message_id, status, outcome, cost_usd, created_at, finished_at)
               VALUES ('t1', 'g', 1, 'done', 'ok', 0.25, {now}, {now});
             INSERT INTO turns (id, chat_id, message_id, status, created_at) VALUES ('t2', 'p', 2, 'held', 5);
             INSERT INTO outbox (chat_id, turn_id, part, text, idempotency_key, status, next_attempt_at, created_at)
               VALUES ('g', 't1', 0, 'hi back', 'k1', 'sent', 0, 0);"
        ))
        .unwrap();
        (dir, c)
    }

    fn defaults() -> Defaults {
        Defaults {
            memory_max: 1 << 30,
            permission_mode: "default".into(),
            daily_budget_usd: Some(3.0),
        }
    }

    #[test]
    fn chats_show_the_settings_in_effect_and_whose_they_are() {
        let (_d, c) = db();
        let all = list_chats(&c, &defaults()).unwrap();
        assert_eq!(all.len(), 2);
        let g = all.iter().find(|r| r.id == "g").unwrap();
        assert_eq!(
            (g.attention.as_str(), g.attention_own),
            ("mentions-only", false)
        );
        assert_eq!((g.memory_max, g.memory_max_own), (512 << 20, true));
        assert_eq!((g.daily_budget_usd, g.daily_budget_own), (Some(3.0), false));
        assert_eq!(g.cost_today_usd, 0.25);
        assert!(g.last_activity_ms.is_some());
        let p = all.iter().find(|r| r.id == "p").unwrap();
        assert_eq!(
            (p.access.as_str(), p.pending_no, p.turns_held),
            ("pending", Some(2), 1)
        );
    }

    #[test]
    fn the_quarantine_stats_cost_and_why() {
        let (_d, c) = db();
        let q = pending(&c).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(
            (q[0].number, q[0].chat.as_str(), q[0].turns_held),
            (2, "p", 1)
        );
        assert_eq!(q[0].first_message.as_deref(), Some("who is this"));
        assert_eq!(q[0].members, vec!["+1555".to_owned()]);
        let s = stats(&c).unwrap();
        assert_eq!((s.chats, s.chats_pending, s.turns_held), (2, 1, 1));
        assert_eq!(s.cost_today_usd, 0.25);
        let k = cost(&c, 0).unwrap();
        assert_eq!(k.len(), 1);
        assert_eq!((k[0].chat.as_str(), k[0].turns), ("g", 1));
        let (m, ds, ts, replies) = why(&c, "m1").unwrap().unwrap();
        assert_eq!(m.text, "hello there");
        assert_eq!(ds[0].rule, "always");
        assert_eq!(ts[0].outcome.as_deref(), Some("ok"));
        assert_eq!(replies, vec!["hi back".to_owned()]);
        assert!(why(&c, "nope").unwrap().is_none());
        let (ds, ts) = recent(&c, "g", 10).unwrap();
        assert_eq!((ds.len(), ts.len()), (1, 1));
    }

    #[test]
    fn a_removed_chat_has_no_user_and_is_blocked() {
        let (_d, c) = db();
        c.execute(
            "UPDATE chats SET unix_user = 'chat-x', uid = 70000, home = '/h' WHERE id = 'p'",
            [],
        )
        .unwrap();
        assert_eq!(removed(&c, "p").unwrap(), 1, "its held turn set aside");
        let row: (Option<String>, String, String) = c
            .query_row(
                "SELECT unix_user, access, session_id FROM chats WHERE id = 'p'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(row.0, None);
        assert_eq!(row.1, "blocked");
        assert_ne!(row.2, "s2", "a new session");
    }
}
