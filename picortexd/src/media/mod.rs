//! Media a person sends (photos, files, voice memos): Linq delivers `media` parts with a URL that
//! may expire within minutes (research/linq.md). The gateway records each part at ingest, fetches
//! it when the message's turn starts (before the prompt is written) — only from the origins in
//! `[linq] media_hosts`, never following a redirect, at most `[linq] media_max_bytes` — into a
//! memory file, and hands that descriptor to the helper's `DepositInbox`, which writes it into
//! the chat's `inbox/<date>-<name>` as the chat's user (0600). The gateway never writes into a
//! chat's home. The prompt then says what arrived and where, or why it did not.
//!
//! The decisions (which URL, which name, what the prompt says) are the pure functions below.

pub mod out;

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use crate::bus::Bus;
use crate::config::Config;
use crate::store::{media as db, Store};

/// How a media part ended, as `media.status` stores it.
pub const PENDING: &str = "pending";
pub const STORED: &str = "stored";
pub const REFUSED: &str = "refused";
pub const FAILED: &str = "failed";

/// One media part of an inbound message, as the log has it.
#[derive(Debug, Clone, PartialEq)]
pub struct Media {
    pub id: i64,
    pub part_index: i64,
    pub url: Option<String>,
    pub filename: Option<String>,
    pub mime_type: Option<String>,
    pub size_bytes: Option<i64>,
    pub status: String,
    pub rel_path: Option<String>,
    pub stored_size: Option<i64>,
    pub error: Option<String>,
}

/// Whether `url` may be fetched: its origin (scheme, host, port) is one of `hosts` (origins like
/// `https://cdn.linqapp.com`), with no user info. The reason otherwise, for the log and prompt.
pub fn url_allowed(url: &str, hosts: &[String]) -> Result<Url, String> {
    let u = Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(u.scheme(), "https" | "http") {
        return Err(format!("scheme {} is not http(s)", u.scheme()));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("URL carries credentials".into());
    }
    let origin = u.origin().ascii_serialization();
    let ok = hosts.iter().any(|h| {
        Url::parse(h)
            .map(|allowed| allowed.origin().ascii_serialization() == origin)
            .unwrap_or(false)
    });
    if ok {
        Ok(u)
    } else {
        Err(format!(
            "{origin} is not one of Linq's media hosts ([linq] media_hosts)"
        ))
    }
}

/// The inbox name hint for a part: `<YYYY-MM-DD>-<filename>`, or `<date>-attachment-<n>` when Linq
/// gave no file name (the helper sanitises it further and never overwrites).
pub fn name_hint(date: &str, filename: Option<&str>, part_index: i64) -> String {
    let name = filename
        .map(|f| f.rsplit('/').next().unwrap_or(f).trim())
        .filter(|f| !f.is_empty() && *f != "." && *f != "..")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("attachment-{part_index}"));
    format!("{date}-{name}")
}

/// What the prompt says about a message's media, after the message text.
pub fn prompt_note(media: &[Media]) -> String {
    if media.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n\nAttachments sent with this message:\n");
    for m in media {
        let name = m.filename.as_deref().unwrap_or("(no name)");
        let kind = m.mime_type.as_deref().unwrap_or("unknown type");
        match (m.status.as_str(), &m.rel_path) {
            (STORED, Some(p)) => out.push_str(&format!(
                "- {name} ({kind}, {} bytes): saved in your working directory as {p}\n",
                m.stored_size.unwrap_or(0)
            )),
            _ => out.push_str(&format!(
                "- {name} ({kind}): could not be saved ({})\n",
                m.error.as_deref().unwrap_or("not fetched")
            )),
        }
    }
    out
}

fn utc_date() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    )
}

/// Fetch every pending media part of `message_id` into `chat_id`'s inbox (the chat must be
/// provisioned), record each outcome, and return the prompt's note about all of them.
pub async fn fetch_for_message(
    store: &Store,
    bus: &Arc<Bus>,
    cfg: &Config,
    chat_id: &str,
    message_id: i64,
) -> Result<String, crate::store::StoreError> {
    let all = store.call(move |t| db::of_message(t, message_id)).await?;
    if all.is_empty() {
        return Ok(String::new());
    }
    let date = utc_date();
    for m in all.iter().filter(|m| m.status == PENDING) {
        let (status, rel, size, sha, error) = match fetch_one(bus, cfg, chat_id, &date, m).await {
            Ok((rel, sha, size)) => (STORED, Some(rel), Some(size as i64), Some(sha), None),
            Err((status, e)) => (status, None, None, None, Some(e)),
        };
        match &error {
            None => tracing::info!(
                PICORTEX_CHAT = chat_id,
                media = m.id,
                path = rel.as_deref().unwrap_or(""),
                "media part {} stored in the chat's inbox",
                m.part_index
            ),
            Some(e) => tracing::warn!(
                PICORTEX_CHAT = chat_id,
                media = m.id,
                "media part {} {status}: {e}",
                m.part_index
            ),
        }
        let id = m.id;
        store
            .call(move |t| {
                db::set_outcome(
                    t,
                    id,
                    status,
                    rel.as_deref(),
                    size,
                    sha.as_deref(),
                    error.as_deref(),
                )
            })
            .await?;
    }
    let all = store.call(move |t| db::of_message(t, message_id)).await?;
    Ok(prompt_note(&all))
}

/// Fetch one part and deposit it. Errors carry the status to record (refused: a rule said no;
/// failed: the download or the helper did not work).
async fn fetch_one(
    bus: &Arc<Bus>,
    cfg: &Config,
    chat_id: &str,
    date: &str,
    m: &Media,
) -> Result<(String, String, u64), (&'static str, String)> {
    let cap = cfg.linq.media_max_bytes;
    let url = m
        .url
        .as_deref()
        .ok_or((REFUSED, "the part has no URL".to_owned()))?;
    let url = url_allowed(url, &cfg.linq.media_hosts).map_err(|e| (REFUSED, e))?;
    if m.size_bytes.is_some_and(|s| s as u64 > cap) {
        return Err((REFUSED, format!("larger than the {cap}-byte limit")));
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(cfg.linq.request_timeout_s.max(10) * 4))
        .build()
        .map_err(|e| (FAILED, e.to_string()))?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| (FAILED, format!("download: {e}")))?;
    if !resp.status().is_success() {
        return Err((
            FAILED,
            format!(
                "download answered {} (the link may have expired)",
                resp.status()
            ),
        ));
    }
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err((REFUSED, format!("larger than the {cap}-byte limit")));
    }
    let fd =
        nix::sys::memfd::memfd_create(c"picortex-media", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| (FAILED, format!("memfd: {e}")))?;
    let mut file = std::fs::File::from(fd);
    let mut got: u64 = 0;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| (FAILED, format!("download: {e}")))?
    {
        got += chunk.len() as u64;
        if got > cap {
            return Err((REFUSED, format!("larger than the {cap}-byte limit")));
        }
        std::io::Write::write_all(&mut file, &chunk).map_err(|e| (FAILED, e.to_string()))?;
    }
    let hint = name_hint(date, m.filename.as_deref(), m.part_index);
    bus.deposit_inbox(chat_id, &hint, file.into())
        .await
        .map_err(|e| (FAILED, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec![
            "https://cdn.linqapp.com".into(),
            "http://127.0.0.1:8900".into(),
        ]
    }

    #[test]
    fn only_linqs_media_origins_are_fetched() {
        assert!(url_allowed("https://cdn.linqapp.com/a/b.jpg?sig=1", &hosts()).is_ok());
        assert!(url_allowed("http://127.0.0.1:8900/media/x", &hosts()).is_ok());
        for bad in [
            "https://evil.example.com/a.jpg",
            "http://cdn.linqapp.com/a.jpg",
            "https://cdn.linqapp.com.evil.com/a.jpg",
            "https://user:pw@cdn.linqapp.com/a.jpg",
            "http://127.0.0.1:8901/media/x",
            "file:///etc/shadow",
            "not a url",
        ] {
            assert!(url_allowed(bad, &hosts()).is_err(), "{bad} allowed");
        }
    }

    #[test]
    fn names_carry_the_date_and_never_a_path() {
        assert_eq!(
            name_hint("2026-12-01", Some("IMG_1.jpg"), 0),
            "2026-12-01-IMG_1.jpg"
        );
        assert_eq!(
            name_hint("2026-12-01", Some("../../etc/x"), 0),
            "2026-12-01-x"
        );
        assert_eq!(
            name_hint("2026-12-01", Some(".."), 2),
            "2026-12-01-attachment-2"
        );
        assert_eq!(name_hint("2026-12-01", None, 1), "2026-12-01-attachment-1");
    }

    #[test]
    fn the_prompt_says_where_each_attachment_is_or_why_not() {
        let stored = Media {
            id: 1,
            part_index: 1,
            url: None,
            filename: Some("cat.jpg".into()),
            mime_type: Some("image/jpeg".into()),
            size_bytes: Some(10),
            status: STORED.into(),
            rel_path: Some("inbox/2026-12-01-cat.jpg".into()),
            stored_size: Some(10),
            error: None,
        };
        let refused = Media {
            status: REFUSED.into(),
            rel_path: None,
            error: Some("larger than the 10-byte limit".into()),
            filename: Some("big.mov".into()),
            ..stored.clone()
        };
        let n = prompt_note(&[stored, refused]);
        assert!(n.contains("cat.jpg (image/jpeg, 10 bytes): saved in your working directory as inbox/2026-12-01-cat.jpg"), "{n}");
        assert!(
            n.contains("big.mov (image/jpeg): could not be saved (larger than the 10-byte limit)"),
            "{n}"
        );
        assert_eq!(prompt_note(&[]), "");
    }
}
