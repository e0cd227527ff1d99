//! What the log does with every Linq event other than a new message (SPEC L2): delivery and read
//! status of the bot's messages, edits, tapbacks, participants coming and going, group names and
//! chat details. Each function is idempotent: Linq delivers at least once.

use rusqlite::{params, Connection};

use super::{now_ms, StoreError};

/// Delivery progress of a message the bot sent: `sent`, `delivered`, `read` or `failed`.
pub fn message_status(
    t: &Connection,
    linq_id: &str,
    status: &str,
    failed_code: Option<i64>,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let n = match status {
        "delivered" => t.execute(
            "UPDATE messages SET status = CASE WHEN status IN ('read') THEN status ELSE 'delivered' END,
                delivered_at = COALESCE(delivered_at, ?2) WHERE linq_id = ?1",
            params![linq_id, now],
        )?,
        "read" => t.execute(
            "UPDATE messages SET status = 'read', read_at = COALESCE(read_at, ?2), delivered_at = COALESCE(delivered_at, ?2) WHERE linq_id = ?1",
            params![linq_id, now],
        )?,
        "failed" => t.execute(
            "UPDATE messages SET status = 'failed', failed_code = ?2 WHERE linq_id = ?1",
            params![linq_id, failed_code],
        )?,
        _ => t.execute(
            "UPDATE messages SET status = COALESCE(status, ?2) WHERE linq_id = ?1",
            params![linq_id, status],
        )?,
    };
    Ok(n > 0)
}

/// A status report for a message the log does not have yet (Linq's `message.delivered` can
/// overtake our own record of the send): keep it as the message, with its status, so the later
/// record of the send finds it.
pub fn status_of_unseen(
    t: &Connection,
    m: &UnseenMessage<'_>,
    status: &str,
) -> Result<(), StoreError> {
    ensure_chat_row(t, m.chat_id, Some(m.is_group))?;
    t.execute(
        "INSERT OR IGNORE INTO messages (linq_id, chat_id, direction, sender, text, reply_to, status, created_at)
         VALUES (?1, ?2, CASE WHEN ?3 THEN 'outbound' ELSE 'inbound' END, ?4, ?5, ?6, ?7, ?8)",
        params![m.linq_id, m.chat_id, m.from_bot, m.sender, m.text, m.reply_to, status, now_ms()],
    )?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct UnseenMessage<'a> {
    pub linq_id: &'a str,
    pub chat_id: &'a str,
    pub is_group: bool,
    pub from_bot: bool,
    pub sender: &'a str,
    pub text: &'a str,
    pub reply_to: Option<&'a str>,
}

/// A message's text changed; the first version is kept in `original_text`.
pub fn message_edited(t: &Connection, linq_id: &str, part_text: &str) -> Result<bool, StoreError> {
    let n = t.execute(
        "UPDATE messages SET original_text = COALESCE(original_text, text), text = ?2, edited_at = ?3 WHERE linq_id = ?1",
        params![linq_id, part_text, now_ms()],
    )?;
    Ok(n > 0)
}

#[derive(Debug, Clone)]
pub struct Reaction<'a> {
    pub message_id: &'a str,
    pub chat_id: Option<&'a str>,
    pub handle: &'a str,
    pub kind: &'a str,
    pub custom_emoji: Option<&'a str>,
    pub part_index: i64,
    pub is_from_bot: bool,
}

pub fn reaction(t: &Connection, r: &Reaction<'_>, added: bool) -> Result<(), StoreError> {
    let now = now_ms();
    if added {
        t.execute(
            "INSERT INTO reactions (message_linq_id, chat_id, handle, kind, custom_emoji, part_index, is_from_bot, added_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(message_linq_id, handle, kind, part_index) DO UPDATE SET removed_at = NULL, added_at = excluded.added_at",
            params![r.message_id, r.chat_id, r.handle, r.kind, r.custom_emoji, r.part_index, r.is_from_bot as i64, now],
        )?;
    } else {
        t.execute(
            "UPDATE reactions SET removed_at = ?5 WHERE message_linq_id = ?1 AND handle = ?2 AND kind = ?3 AND part_index = ?4",
            params![r.message_id, r.handle, r.kind, r.part_index, now],
        )?;
    }
    Ok(())
}

fn ensure_chat_row(
    t: &Connection,
    chat_id: &str,
    is_group: Option<bool>,
) -> Result<(), StoreError> {
    let now = now_ms();
    t.execute(
        "INSERT INTO chats (id, kind, session_id, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT(id) DO NOTHING",
        params![chat_id, if is_group.unwrap_or(false) { "group" } else { "direct" }, uuid::Uuid::new_v4().to_string(), now],
    )?;
    if let Some(g) = is_group {
        t.execute(
            "UPDATE chats SET kind = ?2 WHERE id = ?1",
            params![chat_id, if g { "group" } else { "direct" }],
        )?;
    }
    Ok(())
}

/// Someone joined (`added`) or left a group.
pub fn participant(
    t: &Connection,
    chat_id: &str,
    handle: &str,
    is_me: bool,
    added: bool,
) -> Result<(), StoreError> {
    ensure_chat_row(t, chat_id, Some(true))?;
    let now = now_ms();
    if added {
        t.execute(
            "INSERT INTO participants (chat_id, handle, is_me, joined_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(chat_id, handle) DO UPDATE SET left_at = NULL, joined_at = COALESCE(joined_at, excluded.joined_at)",
            params![chat_id, handle, is_me as i64, now],
        )?;
    } else {
        t.execute(
            "INSERT INTO participants (chat_id, handle, is_me, left_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(chat_id, handle) DO UPDATE SET left_at = excluded.left_at",
            params![chat_id, handle, is_me as i64, now],
        )?;
    }
    Ok(())
}

pub fn group_renamed(t: &Connection, chat_id: &str, name: Option<&str>) -> Result<(), StoreError> {
    ensure_chat_row(t, chat_id, Some(true))?;
    t.execute(
        "UPDATE chats SET display_name = ?2, updated_at = ?3 WHERE id = ?1",
        params![chat_id, name, now_ms()],
    )?;
    Ok(())
}

/// One participant as Linq lists it.
#[derive(Debug, Clone)]
pub struct Member {
    pub handle: String,
    pub is_me: bool,
    pub left: bool,
}

/// The chat as `GET /v3/chats/{id}` or `chat.created` describes it.
pub fn chat_details(
    t: &Connection,
    chat_id: &str,
    is_group: bool,
    display_name: Option<&str>,
    members: &[Member],
) -> Result<(), StoreError> {
    ensure_chat_row(t, chat_id, Some(is_group))?;
    let now = now_ms();
    t.execute(
        "UPDATE chats SET display_name = COALESCE(?2, display_name), details_fetched = 1, updated_at = ?3 WHERE id = ?1",
        params![chat_id, display_name, now],
    )?;
    for m in members {
        t.execute(
            "INSERT INTO participants (chat_id, handle, is_me, joined_at, left_at) VALUES (?1, ?2, ?3, ?4, CASE WHEN ?5 THEN ?4 END)
             ON CONFLICT(chat_id, handle) DO UPDATE SET is_me = excluded.is_me, left_at = excluded.left_at",
            params![chat_id, m.handle, m.is_me as i64, now, m.left],
        )?;
    }
    Ok(())
}

/// Whether the chat still needs its details read from Linq.
pub fn needs_details(t: &Connection, chat_id: &str) -> Result<bool, StoreError> {
    Ok(t.query_row(
        "SELECT details_fetched = 0 FROM chats WHERE id = ?1",
        [chat_id],
        |r| r.get::<_, bool>(0),
    )
    .unwrap_or(false))
}

/// What the chat's finished turns cost since `since_ms` (SPEC T6), as the agent reported it.
pub fn spent_since(t: &Connection, chat_id: &str, since_ms: i64) -> Result<f64, StoreError> {
    Ok(t.query_row(
        "SELECT COALESCE(SUM(cost_usd), 0) FROM turns WHERE chat_id = ?1 AND status = 'done' AND finished_at >= ?2",
        params![chat_id, since_ms],
        |r| r.get(0),
    )?)
}

/// Forget the raw bodies of webhooks received before `before_ms` (`[data] raw_webhook_days`);
/// the row stays, as the replay guard, and so does everything parsed from it. How many.
pub fn expire_raw_webhooks(t: &Connection, before_ms: i64) -> Result<usize, StoreError> {
    Ok(t.execute(
        "UPDATE events SET body = '' WHERE received_at < ?1 AND body != ''",
        params![before_ms],
    )?)
}

/// What all chats together spent since `since_ms`.
pub fn spent_since_all(t: &Connection, since_ms: i64) -> Result<f64, StoreError> {
    Ok(t.query_row(
        "SELECT COALESCE(SUM(cost_usd), 0) FROM turns WHERE status = 'done' AND finished_at >= ?1",
        params![since_ms],
        |r| r.get(0),
    )?)
}

/// Provisioned, unarchived chats with no message since `before_ms` and no turn queued or running.
pub fn idle_chats(t: &Connection, before_ms: i64) -> Result<Vec<String>, StoreError> {
    let mut st = t.prepare(
        "SELECT c.id FROM chats c
         WHERE c.unix_user IS NOT NULL AND c.archived_at IS NULL
           AND COALESCE((SELECT MAX(created_at) FROM messages m WHERE m.chat_id = c.id), c.created_at) < ?1
           AND NOT EXISTS (SELECT 1 FROM turns u WHERE u.chat_id = c.id AND u.status != 'done')",
    )?;
    let v = st
        .query_map([before_ms], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(v)
}

pub fn set_archived(t: &Connection, chat_id: &str, archived: bool) -> Result<(), StoreError> {
    t.execute(
        "UPDATE chats SET archived_at = CASE WHEN ?2 THEN ?3 END, updated_at = ?3 WHERE id = ?1",
        params![chat_id, archived, now_ms()],
    )?;
    Ok(())
}

pub fn set_opted_out(t: &Connection, chat_id: &str, opted_out: bool) -> Result<(), StoreError> {
    t.execute(
        "UPDATE chats SET opted_out = ?2, updated_at = ?3 WHERE id = ?1",
        params![chat_id, opted_out as i64, now_ms()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::queries::{store_message, Inbound};
    use super::super::Store;
    use super::*;

    #[tokio::test]
    async fn old_raw_webhook_bodies_are_emptied_and_their_rows_kept() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("t.db")).unwrap();
        let n = s
            .call(|t| {
                t.execute(
                    "INSERT INTO events VALUES ('old','x',1000,'r','{\"a\":1}')",
                    [],
                )?;
                t.execute(
                    "INSERT INTO events VALUES ('new','x',9000,'r','{\"b\":2}')",
                    [],
                )?;
                expire_raw_webhooks(t, 5000)
            })
            .await
            .unwrap();
        assert_eq!(n, 1);
        let rows = s
            .call(|t| {
                let mut st = t.prepare("SELECT event_id, body FROM events ORDER BY event_id")?;
                let v = st
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(v)
            })
            .await
            .unwrap();
        assert_eq!(
            rows,
            vec![
                ("new".into(), "{\"b\":2}".into()),
                ("old".into(), String::new())
            ]
        );
        // Again: nothing left to empty.
        assert_eq!(s.call(|t| expire_raw_webhooks(t, 5000)).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn status_edits_reactions_and_members_land_in_the_log() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("t.db")).unwrap();
        let m = Inbound {
            event_id: "e1".into(),
            event_type: "message.received".into(),
            request_id: "r".into(),
            body: "{}".into(),
            chat_id: "c1".into(),
            is_group: true,
            bot_handle: None,
            sender: "+1".into(),
            linq_id: "m1".into(),
            text: "hello".into(),
            reply_to: None,
            from_bot: false,
        };
        s.call(move |t| store_message(t, &m)).await.unwrap();
        let (status, text, orig): (Option<String>, String, Option<String>) = s
            .call(|t| {
                assert!(message_status(t, "m1", "delivered", None)?);
                assert!(message_status(t, "m1", "read", None)?);
                assert!(
                    message_status(t, "m1", "delivered", None)?,
                    "a late delivered does not undo read"
                );
                assert!(message_edited(t, "m1", "hello, edited")?);
                assert!(message_edited(t, "m1", "hello, edited twice")?);
                assert!(!message_status(t, "nope", "read", None)?);
                let r = Reaction {
                    message_id: "m1",
                    chat_id: Some("c1"),
                    handle: "+2",
                    kind: "love",
                    custom_emoji: None,
                    part_index: 0,
                    is_from_bot: false,
                };
                reaction(t, &r, true)?;
                reaction(t, &r, true)?;
                reaction(t, &r, false)?;
                participant(t, "c1", "+3", false, true)?;
                participant(t, "c1", "+3", false, false)?;
                group_renamed(t, "c1", Some("Team"))?;
                Ok(t.query_row(
                    "SELECT status, text, original_text FROM messages WHERE linq_id = 'm1'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(status.as_deref(), Some("read"));
        assert_eq!(text, "hello, edited twice");
        assert_eq!(orig.as_deref(), Some("hello"));
        let (n, removed, left, name): (i64, bool, bool, String) = s
            .call(|t| {
                Ok(t.query_row(
                    "SELECT (SELECT COUNT(*) FROM reactions), (SELECT removed_at IS NOT NULL FROM reactions),
                            (SELECT left_at IS NOT NULL FROM participants WHERE handle = '+3'), (SELECT display_name FROM chats WHERE id = 'c1')",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?)
            })
            .await
            .unwrap();
        assert_eq!((n, removed, left, name.as_str()), (1, true, true, "Team"));
    }
}
