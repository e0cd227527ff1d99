//! The `media` table (migration 0006): one row per media part of an inbound message.

use rusqlite::{params, Connection};

use super::StoreError;
use crate::media::{Media, PENDING};

/// Record a media part at ingest (idempotent per message and part).
#[allow(clippy::too_many_arguments)]
pub fn record(
    t: &Connection,
    message_id: i64,
    part_index: i64,
    linq_id: Option<&str>,
    url: Option<&str>,
    filename: Option<&str>,
    mime_type: Option<&str>,
    size_bytes: Option<i64>,
) -> Result<(), StoreError> {
    t.execute(
        "INSERT OR IGNORE INTO media (message_id, part_index, linq_id, url, filename, mime_type, size_bytes, status, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![message_id, part_index, linq_id, url, filename, mime_type, size_bytes, PENDING, super::now_ms()],
    )?;
    Ok(())
}

/// A message's media parts, in part order.
pub fn of_message(t: &Connection, message_id: i64) -> Result<Vec<Media>, StoreError> {
    let mut st = t.prepare(
        "SELECT id, part_index, url, filename, mime_type, size_bytes, status, rel_path, stored_size, error
         FROM media WHERE message_id = ?1 ORDER BY part_index",
    )?;
    let rows = st.query_map([message_id], |r| {
        Ok(Media {
            id: r.get(0)?,
            part_index: r.get(1)?,
            url: r.get(2)?,
            filename: r.get(3)?,
            mime_type: r.get(4)?,
            size_bytes: r.get(5)?,
            status: r.get(6)?,
            rel_path: r.get(7)?,
            stored_size: r.get(8)?,
            error: r.get(9)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How fetching a part ended.
pub fn set_outcome(
    t: &Connection,
    id: i64,
    status: &str,
    rel_path: Option<&str>,
    stored_size: Option<i64>,
    sha256: Option<&str>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    t.execute(
        "UPDATE media SET status = ?2, rel_path = ?3, stored_size = ?4, sha256 = ?5, error = ?6 WHERE id = ?1",
        params![id, status, rel_path, stored_size, sha256, error],
    )?;
    Ok(())
}
