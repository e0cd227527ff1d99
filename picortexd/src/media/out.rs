//! Media out: files the agent leaves in its home's `outbox/` are sent to the chat after a turn
//! that ended well, as media parts in the same thread, exactly once. The helper reads them
//! (`CollectOutbox`: regular files of a type Linq takes, never through a symlink; see
//! picortex-provision/src/outfiles.rs) and hands over memory copies; the gateway spools each
//! into its state directory and records it as an outbox row in one transaction, and only then
//! has the helper remove it from `outbox/` (`ClearOutbox`, only if unchanged). The outbox module
//! sends it like any reply (attachment upload, then a media part under the row's idempotency key).
//!
//! A crash between the record and the removal leaves the file in `outbox/` with a row not yet
//! marked cleared: the next collection recognises it (same chat, name and hash) and only clears
//! it, so it is never recorded twice.

use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use crate::bus::Bus;
use crate::store::{now_ms, Store, StoreError};

/// The outbox row key of a collected file: one per turn and content.
pub fn file_key(turn_id: &str, sha256: &str) -> String {
    format!(
        "picortex-file-{turn_id}-{}",
        sha256.get(..16).unwrap_or(sha256)
    )
}

/// Record a collected file as an outbox row unless the same file (chat, name, hash) is already
/// recorded and not yet cleared from `outbox/`. Returns whether a row was added.
#[allow(clippy::too_many_arguments)]
pub fn record(
    t: &Connection,
    chat_id: &str,
    turn_id: &str,
    reply_to: Option<&str>,
    part: i64,
    name: &str,
    mime: &str,
    sha256: &str,
    spool: &str,
) -> Result<bool, StoreError> {
    let known: Option<i64> = t
        .query_row(
            "SELECT id FROM outbox WHERE chat_id = ?1 AND file_name = ?2 AND file_sha256 = ?3 AND file_cleared = 0",
            params![chat_id, name, sha256],
            |r| r.get(0),
        )
        .optional()?;
    if known.is_some() {
        return Ok(false);
    }
    let n = t.execute(
        "INSERT OR IGNORE INTO outbox (chat_id, turn_id, part, text, reply_to, idempotency_key, status, next_attempt_at, created_at,
                                       file_path, file_name, file_mime, file_sha256, file_cleared)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7, ?8, ?9, ?10, ?11, 0)",
        params![chat_id, turn_id, part, format!("[file] {name}"), reply_to, file_key(turn_id, sha256), now_ms(), spool, name, mime, sha256],
    )?;
    Ok(n > 0)
}

/// Files recorded for the chat but still in its `outbox/` (name, sha256).
pub fn uncleared(t: &Connection, chat_id: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut st = t.prepare(
        "SELECT file_name, file_sha256 FROM outbox WHERE chat_id = ?1 AND file_cleared = 0 AND file_name IS NOT NULL",
    )?;
    let v = st
        .query_map([chat_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(v)
}

pub fn mark_cleared(
    t: &Connection,
    chat_id: &str,
    done: &[(String, String)],
) -> Result<(), StoreError> {
    for (name, sha) in done {
        t.execute(
            "UPDATE outbox SET file_cleared = 1 WHERE chat_id = ?1 AND file_name = ?2 AND file_sha256 = ?3",
            params![chat_id, name, sha],
        )?;
    }
    Ok(())
}

/// Collect the chat's `outbox/` after a turn `turn_id` (answering `reply_to`) ended well.
/// Returns how many files were queued for sending.
pub async fn collect(
    store: &Store,
    bus: &Arc<Bus>,
    spool_dir: &Path,
    chat_id: &str,
    turn_id: &str,
    reply_to: Option<&str>,
) -> usize {
    let (files, refused) = match bus.collect_outbox(chat_id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(PICORTEX_CHAT = chat_id, PICORTEX_TURN = turn_id, error = %e, "cannot collect the chat's outbox/; its files stay there");
            return 0;
        }
    };
    for (name, why) in &refused {
        tracing::warn!(
            PICORTEX_CHAT = chat_id,
            PICORTEX_TURN = turn_id,
            "outbox/{name} not sent: {why}"
        );
    }
    let mut queued = 0;
    let mut done = Vec::new();
    for (i, (name, mime, _size, sha, fd)) in files.into_iter().enumerate() {
        let key = file_key(turn_id, &sha);
        let spool = spool_dir.join(&key);
        let mut f = std::fs::File::from(std::os::fd::OwnedFd::from(fd));
        let mut bytes = Vec::new();
        let read = f
            .seek(std::io::SeekFrom::Start(0))
            .and_then(|_| f.read_to_end(&mut bytes));
        let written = read.and_then(|_| {
            std::fs::create_dir_all(spool_dir)?;
            use std::os::unix::fs::OpenOptionsExt;
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&spool)?;
            out.write_all(&bytes)?;
            out.sync_all()
        });
        if let Err(e) = written {
            tracing::warn!(
                PICORTEX_CHAT = chat_id,
                "cannot spool outbox/{name}: {e}; it stays there"
            );
            continue;
        }
        let (c, t, r, n, m, s, p) = (
            chat_id.to_owned(),
            turn_id.to_owned(),
            reply_to.map(str::to_owned),
            name.clone(),
            mime.clone(),
            sha.clone(),
            spool.display().to_string(),
        );
        match store
            .call(move |db| record(db, &c, &t, r.as_deref(), 100 + i as i64, &n, &m, &s, &p))
            .await
        {
            Ok(added) => {
                if added {
                    queued += 1;
                    tracing::info!(
                        PICORTEX_CHAT = chat_id,
                        PICORTEX_TURN = turn_id,
                        "outbox/{name} ({mime}) queued to be sent"
                    );
                } else {
                    let _ = std::fs::remove_file(&spool);
                    tracing::info!(
                        PICORTEX_CHAT = chat_id,
                        "outbox/{name} was recorded before; only removing it"
                    );
                }
                done.push((name, sha));
            }
            Err(e) => {
                tracing::error!(PICORTEX_CHAT = chat_id, error = %e, "cannot record outbox/{name}")
            }
        }
    }
    // Also what an earlier collection recorded but could not remove (a crash in between).
    let c = chat_id.to_owned();
    if let Ok(earlier) = store.call(move |db| uncleared(db, &c)).await {
        for e in earlier {
            if !done.contains(&e) {
                done.push(e);
            }
        }
    }
    if done.is_empty() {
        return queued;
    }
    crate::failpoint::hit("media-out-recorded");
    match bus.clear_outbox(chat_id, done.clone()).await {
        Ok(_) => {
            let c = chat_id.to_owned();
            if let Err(e) = store.call(move |db| mark_cleared(db, &c, &done)).await {
                tracing::error!(error = %e, "cannot mark outbox files cleared");
            }
        }
        Err(e) => {
            tracing::warn!(PICORTEX_CHAT = chat_id, error = %e, "cannot clear the chat's outbox/; the next turn tries again")
        }
    }
    queued
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let t = Connection::open_in_memory().unwrap();
        t.execute_batch(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY, chat_id TEXT, to_handle TEXT, from_handle TEXT, turn_id TEXT,
              part INTEGER NOT NULL DEFAULT 0, text TEXT NOT NULL, reply_to TEXT, idempotency_key TEXT NOT NULL UNIQUE,
              status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL,
              linq_message_id TEXT, last_error TEXT, created_at INTEGER NOT NULL, sent_at INTEGER,
              file_path TEXT, file_name TEXT, file_mime TEXT, file_sha256 TEXT, file_cleared INTEGER NOT NULL DEFAULT 1);",
        )
        .unwrap();
        t
    }

    #[test]
    fn a_file_is_recorded_once_until_it_is_cleared() {
        let t = db();
        let sha = "ab".repeat(32);
        assert!(record(
            &t,
            "c",
            "t1",
            Some("m"),
            100,
            "a.pdf",
            "application/pdf",
            &sha,
            "/s/1"
        )
        .unwrap());
        // A crash before clearing: the next turn's collection finds it again.
        assert!(!record(
            &t,
            "c",
            "t2",
            Some("m2"),
            100,
            "a.pdf",
            "application/pdf",
            &sha,
            "/s/2"
        )
        .unwrap());
        assert_eq!(
            uncleared(&t, "c").unwrap(),
            vec![("a.pdf".to_owned(), sha.clone())]
        );
        mark_cleared(&t, "c", &[("a.pdf".into(), sha.clone())]).unwrap();
        assert!(uncleared(&t, "c").unwrap().is_empty());
        // Sent again later on purpose (a new file of the same content): a new row.
        assert!(record(
            &t,
            "c",
            "t3",
            None,
            100,
            "a.pdf",
            "application/pdf",
            &sha,
            "/s/3"
        )
        .unwrap());
        let n: i64 = t
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }
}
