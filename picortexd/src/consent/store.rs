//! The consent broker's side of the log: disclosures, their audit steps, each chat's manifest of
//! standing grants and the bridge's copies. Plain functions over a transaction, like `store`;
//! the decisions they apply are `consent::decide` and friends.

use picortex_proto::consent::{AccessRequest, MAX_GRANTS_PER_TURN, OWNER_WORKSPACE};
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    can_stand, challenge_text, decide, refusal_text, Answer, Challenge, Kind, Status, Step, Verdict,
};
use crate::owner::Owner;
use crate::store::authority;
use crate::store::queries::{self, TurnJob, TurnKind};
use crate::store::{now_ms, StoreError};

/// One audit step: a row, and a journal entry with the chat, the turn and the disclosure.
pub fn event(
    t: &Connection,
    disclosure: i64,
    step: Step,
    turn: Option<&str>,
    detail: &str,
) -> Result<(), StoreError> {
    t.execute(
        "INSERT INTO consent_events (disclosure_id, step, turn_id, detail, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![disclosure, step.as_str(), turn, detail, now_ms()],
    )?;
    let chat: String = t
        .query_row(
            "SELECT chat_id FROM disclosures WHERE id = ?1",
            [disclosure],
            |r| r.get(0),
        )
        .unwrap_or_default();
    tracing::info!(
        chat = %chat,
        turn = turn.unwrap_or(""),
        disclosure,
        step = step.as_str(),
        "disclosure {disclosure} {}: {detail}",
        step.as_str()
    );
    Ok(())
}

/// The workspace a request names: the owner's DM for reads and `owner`, else the chat itself.
fn source_of(
    t: &Connection,
    owner: &Owner,
    req: &AccessRequest,
) -> Result<Option<String>, StoreError> {
    match req {
        AccessRequest::Read { .. } => authority::owner_dm(t, owner),
        AccessRequest::Import { from_chat, .. } if from_chat == OWNER_WORKSPACE => {
            authority::owner_dm(t, owner)
        }
        AccessRequest::Import { from_chat, .. } => Ok(queries::chat(t, from_chat)?.map(|c| c.id)),
    }
}

/// What became of a finished turn's requests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Disclosures now pending (the chat gets the acknowledgement instead of the agent's text).
    pub pending: Vec<i64>,
    /// Requests that could not even be asked (the chat gets a polite no).
    pub failed: Vec<i64>,
}

/// Record a finished turn's requests as disclosures, ask the owner, and answer the ones that
/// cannot be asked. Runs in the transaction that finishes the turn.
pub fn open_requests(
    t: &Connection,
    job: &TurnJob,
    reqs: &[AccessRequest],
    owner: &Owner,
    ttl_ms: i64,
) -> Result<Opened, StoreError> {
    let mut out = Opened::default();
    let Some(chat) = queries::chat(t, &job.chat_id)? else {
        return Ok(out);
    };
    let now = now_ms();
    for req in reqs {
        if req.validate().is_err() {
            continue; // the result's reader already refused these; never reached
        }
        let source = source_of(t, owner, req)?;
        if source.as_deref() == Some(chat.id.as_str()) {
            tracing::info!(chat = %chat.id, turn = %job.turn_id, "the agent asked for its own chat's workspace; nothing to approve");
            continue;
        }
        let held: Vec<i64> = {
            let mut st =
                t.prepare_cached("SELECT number FROM disclosures WHERE status = 'pending'")?;
            let v = st
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<i64>, _>>()?;
            v
        };
        let number = crate::quarantine::next_number(&held);
        let (status, reason) = match &source {
            Some(_) => (Status::Pending, None),
            None => (
                Status::Failed,
                Some(
                    "no such workspace (the owner has no DM with the bot, or the chat is unknown)",
                ),
            ),
        };
        let kind = match req {
            AccessRequest::Read { .. } => Kind::Read,
            AccessRequest::Import { .. } => Kind::Import,
        };
        let key = format!("picortex-consent-{}", uuid::Uuid::new_v4().simple());
        t.execute(
            "INSERT INTO disclosures (number, chat_id, turn_id, message_id, sender, kind, source_chat, path, why, status, created_at, expires_at, challenge_key, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                number, chat.id, job.turn_id, job.message_id, job.sender, kind.as_str(), source, req.path(), req.why(),
                status.as_str(), now, now + ttl_ms, key, reason
            ],
        )?;
        let id = t.last_insert_rowid();
        event(
            t,
            id,
            Step::Requested,
            Some(&job.turn_id),
            &format!(
                "#{number} {} {} from {}: {}",
                kind.as_str(),
                req.path(),
                source.as_deref().unwrap_or("?"),
                req.why()
            ),
        )?;
        if status == Status::Failed {
            event(
                t,
                id,
                Step::Failed,
                Some(&job.turn_id),
                reason.unwrap_or(""),
            )?;
            out.failed.push(id);
            continue;
        }
        let source_label = match (&source, kind) {
            (Some(s), Kind::Import) if authority::owner_dm(t, owner)?.as_deref() != Some(s) => {
                queries::chat(t, s)?.map(|c| c.label())
            }
            _ => None,
        };
        let ttl_min = (ttl_ms / 60_000).max(1) as u64;
        let text = challenge_text(&Challenge {
            number,
            kind,
            chat_label: &chat.label(),
            sender: &job.sender,
            question: &job.prompt,
            path: req.path(),
            source_label: source_label.as_deref(),
            why: req.why(),
            ttl_min,
        });
        let told = authority::notify_owner(t, owner, chat.bot_handle.as_deref(), &text, &key)?;
        event(
            t,
            id,
            Step::Asked,
            Some(&job.turn_id),
            if told {
                "challenge queued to the owner's DM"
            } else {
                "the owner could not be told (no handles or no bot line)"
            },
        )?;
        out.pending.push(id);
    }
    Ok(out)
}

/// Tell the asking chat no (politely), in reply to the question.
fn tell_chat_no(t: &Connection, id: i64, why: Status) -> Result<(), StoreError> {
    let (chat, linq): (String, Option<String>) = t.query_row(
        "SELECT d.chat_id, m.linq_id FROM disclosures d JOIN messages m ON m.id = d.message_id WHERE d.id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    authority::queue_text(
        t,
        &chat,
        refusal_text(why),
        linq.as_deref(),
        &format!("picortex-consent-no-{id}"),
    )
}

/// The failed requests of [`open_requests`]: answered at once.
pub fn answer_failed(t: &Connection, ids: &[i64]) -> Result<(), StoreError> {
    for id in ids {
        tell_chat_no(t, *id, Status::Failed)?;
    }
    Ok(())
}

/// What the owner's answer did.
#[derive(Debug, Default)]
pub struct Answered {
    pub reply: String,
    pub wake_turns: bool,
    pub wake_imports: bool,
}

struct Row {
    id: i64,
    status: Status,
    expires_at: i64,
    kind: Kind,
    chat_id: String,
    message_id: i64,
    path: String,
    source_chat: Option<String>,
}

fn row_by_number(t: &Connection, number: i64) -> Result<Option<Row>, StoreError> {
    Ok(t.query_row(
        "SELECT id, status, expires_at, kind, chat_id, message_id, path, source_chat FROM disclosures
         WHERE number = ?1 ORDER BY (status = 'pending') DESC, id DESC LIMIT 1",
        [number],
        |r| {
            Ok(Row {
                id: r.get(0)?,
                status: Status::from_stored(&r.get::<_, String>(1)?),
                expires_at: r.get(2)?,
                kind: Kind::from_stored(&r.get::<_, String>(3)?),
                chat_id: r.get(4)?,
                message_id: r.get(5)?,
                path: r.get(6)?,
                source_chat: r.get(7)?,
            })
        },
    )
    .optional()?)
}

/// Queue the asking message again as a turn carrying the disclosure (its grant, or the note of
/// its import). At most one per disclosure (a unique index).
fn queue_rerun(t: &Connection, id: i64, chat: &str, message_id: i64) -> Result<String, StoreError> {
    let turn = queries::queue_turn(t, chat, message_id, TurnKind::Answer, false)?;
    t.execute(
        "UPDATE turns SET disclosure_id = ?2 WHERE id = ?1",
        params![turn, id],
    )?;
    Ok(turn)
}

/// The owner's `yes N` / `no N` / `always N`, from their DM (the caller checked that). `approver`
/// is the handle it came from, `approval_message` its Linq id.
pub fn answer(
    t: &Connection,
    number: i64,
    ans: Answer,
    approver: &str,
    approval_message: &str,
) -> Result<Answered, StoreError> {
    let mut out = Answered::default();
    let now = now_ms();
    let Some(d) = row_by_number(t, number)? else {
        out.reply = format!("No request has number {number}.");
        return Ok(out);
    };
    let label = queries::chat(t, &d.chat_id)?
        .map(|c| c.label())
        .unwrap_or_else(|| d.chat_id.clone());
    match decide(d.status, ans, now, d.expires_at) {
        Verdict::Approve { standing } => {
            let standing = standing && can_stand(d.kind);
            t.execute(
                "UPDATE disclosures SET status = 'approved', decided_at = ?2, approver = ?3, approval_message = ?4, standing = ?5 WHERE id = ?1",
                params![d.id, now, approver, approval_message, standing as i64],
            )?;
            event(
                t,
                d.id,
                Step::Approved,
                None,
                &format!(
                    "by {approver} ({approval_message}){}",
                    if standing { ", standing" } else { "" }
                ),
            )?;
            match d.kind {
                Kind::Read => {
                    let turn = queue_rerun(t, d.id, &d.chat_id, d.message_id)?;
                    if standing {
                        t.execute(
                            "INSERT INTO standing_grants (chat_id, source_chat, path, disclosure_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![d.chat_id, d.source_chat, d.path, d.id, now],
                        )?;
                    }
                    tracing::info!(chat = %d.chat_id, turn = %turn, disclosure = d.id, "re-running the question with the owner's grant");
                    out.wake_turns = true;
                    out.reply = if standing {
                        format!("OK (#{number}): {label} may read \"{}\" from now on; answering them now. \"/picortex status\" there lists it, \"/picortex revoke <n>\" ends it.", d.path)
                    } else {
                        format!(
                            "OK (#{number}): answering {label} with \"{}\", this once.",
                            d.path
                        )
                    };
                }
                Kind::Import => {
                    out.wake_imports = true;
                    out.reply = format!(
                        "OK (#{number}): copying \"{}\" into {label}'s inbox.",
                        d.path
                    );
                }
            }
        }
        Verdict::Deny => {
            t.execute(
                "UPDATE disclosures SET status = 'denied', decided_at = ?2, approver = ?3, approval_message = ?4 WHERE id = ?1",
                params![d.id, now, approver, approval_message],
            )?;
            event(
                t,
                d.id,
                Step::Denied,
                None,
                &format!("by {approver} ({approval_message})"),
            )?;
            tell_chat_no(t, d.id, Status::Denied)?;
            out.reply = format!("Not shared (#{number}); I told {label} no.");
        }
        Verdict::TooLate(s) => {
            if d.status == Status::Pending && s == Status::Expired {
                expire_one(t, d.id)?;
            }
            event(
                t,
                d.id,
                Step::Ignored,
                None,
                &format!("{approver} answered {ans:?} to a disclosure that is {s}"),
            )?;
            out.reply =
                format!("#{number} is not waiting any more (it is {s}); nothing more was shared.");
        }
    }
    Ok(out)
}

fn expire_one(t: &Connection, id: i64) -> Result<(), StoreError> {
    let n = t.execute(
        "UPDATE disclosures SET status = 'expired', decided_at = ?2 WHERE id = ?1 AND status = 'pending'",
        params![id, now_ms()],
    )?;
    if n == 1 {
        event(
            t,
            id,
            Step::Expired,
            None,
            "no answer from the owner in time",
        )?;
        tell_chat_no(t, id, Status::Expired)?;
    }
    Ok(())
}

/// The timer: expire every pending disclosure past its time. Returns how many.
pub fn expire_due(t: &Connection, now: i64) -> Result<usize, StoreError> {
    let ids: Vec<i64> = {
        let mut st = t.prepare_cached(
            "SELECT id FROM disclosures WHERE status = 'pending' AND expires_at <= ?1",
        )?;
        let v = st
            .query_map([now], |r| r.get(0))?
            .collect::<Result<Vec<i64>, _>>()?;
        v
    };
    for id in &ids {
        expire_one(t, *id)?;
    }
    Ok(ids.len())
}

/// When the next pending disclosure expires.
pub fn next_expiry(t: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(t.query_row(
        "SELECT MIN(expires_at) FROM disclosures WHERE status = 'pending'",
        [],
        |r| r.get(0),
    )?)
}

/// One file a turn may read: whose workspace, which path, and on whose word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub source_chat: String,
    pub path: String,
    /// The single-use disclosure, or the standing grant's id.
    pub disclosure: Option<i64>,
    pub standing: Option<i64>,
}

/// The grants of a turn: its own disclosure's (approved, or already consumed by this very turn:
/// a turn restarted after a crash keeps it), then the chat's standing grants.
pub fn grants_for_turn(
    t: &Connection,
    turn_id: &str,
    chat_id: &str,
) -> Result<Vec<Grant>, StoreError> {
    let mut out: Vec<Grant> = Vec::new();
    let single = t
        .query_row(
            "SELECT d.id, d.source_chat, d.path FROM turns tu JOIN disclosures d ON d.id = tu.disclosure_id
             WHERE tu.id = ?1 AND d.kind = 'read' AND d.source_chat IS NOT NULL
               AND (d.status = 'approved' OR (d.status = 'consumed' AND d.grant_turn_id = ?1))",
            [turn_id],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
        )
        .optional()?;
    if let Some((id, source_chat, path)) = single {
        out.push(Grant {
            source_chat,
            path,
            disclosure: Some(id),
            standing: None,
        });
    }
    let mut st = t.prepare_cached(
        "SELECT id, source_chat, path FROM standing_grants WHERE chat_id = ?1 AND revoked_at IS NULL ORDER BY id",
    )?;
    let standing = st
        .query_map([chat_id], |r| {
            Ok(Grant {
                standing: Some(r.get(0)?),
                source_chat: r.get(1)?,
                path: r.get(2)?,
                disclosure: None,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for g in standing {
        if !out
            .iter()
            .any(|o| o.source_chat == g.source_chat && o.path == g.path)
        {
            out.push(g);
        }
    }
    out.truncate(MAX_GRANTS_PER_TURN);
    Ok(out)
}

/// A granted turn is starting: its single-use grant is used up by it, and by no other.
pub fn consume(t: &Connection, turn_id: &str) -> Result<Option<i64>, StoreError> {
    let id: Option<i64> = t
        .query_row(
            "SELECT d.id FROM turns tu JOIN disclosures d ON d.id = tu.disclosure_id
             WHERE tu.id = ?1 AND d.kind = 'read' AND d.status = 'approved'",
            [turn_id],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = id {
        t.execute(
            "UPDATE disclosures SET status = 'consumed', grant_turn_id = ?2 WHERE id = ?1 AND status = 'approved'",
            params![id, turn_id],
        )?;
        event(
            t,
            id,
            Step::Consumed,
            Some(turn_id),
            "the granted turn is starting",
        )?;
    }
    Ok(id)
}

/// The note a re-run of an import gets: where the copy landed.
pub fn import_note(t: &Connection, turn_id: &str) -> Result<Option<String>, StoreError> {
    Ok(t
        .query_row(
            "SELECT d.path, d.imported_path FROM turns tu JOIN disclosures d ON d.id = tu.disclosure_id
             WHERE tu.id = ?1 AND d.kind = 'import' AND d.status = 'copied' AND d.imported_path IS NOT NULL",
            [turn_id],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()?
        .map(|(p, dest)| picortex_proto::consent::import_note(&p, &dest)))
}

/// Whether the chat has standing grants (its spares would miss them: it gets none).
pub fn has_standing(t: &Connection, chat_id: &str) -> Result<bool, StoreError> {
    Ok(t.query_row(
        "SELECT EXISTS (SELECT 1 FROM standing_grants WHERE chat_id = ?1 AND revoked_at IS NULL)",
        [chat_id],
        |r| r.get(0),
    )?)
}

/// `/picortex revoke <n>`: end standing grant `n`.
pub fn revoke(t: &Connection, id: i64) -> Result<String, StoreError> {
    let d: Option<(i64, String)> = t
        .query_row(
            "SELECT disclosure_id, path FROM standing_grants WHERE id = ?1 AND revoked_at IS NULL",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((disclosure, path)) = d else {
        return Ok(format!(
            "No standing grant has number {id}; \"/picortex status\" lists them."
        ));
    };
    t.execute(
        "UPDATE standing_grants SET revoked_at = ?2 WHERE id = ?1",
        params![id, now_ms()],
    )?;
    event(
        t,
        disclosure,
        Step::Revoked,
        None,
        &format!("standing grant {id} revoked"),
    )?;
    Ok(format!(
        "Revoked standing grant {id} (\"{path}\"); later turns no longer see it."
    ))
}

/// The chat's manifest, for `/picortex status`.
pub fn manifest_lines(t: &Connection, chat_id: &str) -> Result<Vec<String>, StoreError> {
    let mut st = t.prepare_cached(
        "SELECT id, path FROM standing_grants WHERE chat_id = ?1 AND revoked_at IS NULL ORDER BY id",
    )?;
    let v = st
        .query_map([chat_id], |r| {
            Ok(format!(
                "- grant {}: read \"{}\" of the owner's workspace (\"/picortex revoke {}\" ends it)",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(0)?
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(v)
}

/// Disclosures waiting for the owner, for `/picortex status` in their DM.
pub fn pending_lines(t: &Connection) -> Result<Vec<String>, StoreError> {
    let mut st = t.prepare_cached(
        "SELECT number, kind, path, chat_id FROM disclosures WHERE status = 'pending' ORDER BY number",
    )?;
    let v = st
        .query_map([], |r| {
            Ok(format!(
                "- #{} {} \"{}\" for {} (\"yes {0}\" / \"no {0}\")",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(v)
}

/// An approved import waiting for the helper.
#[derive(Debug, Clone)]
pub struct ImportJob {
    pub id: i64,
    pub dest_chat: String,
    pub source_chat: String,
    pub path: String,
}

pub fn approved_imports(t: &Connection) -> Result<Vec<ImportJob>, StoreError> {
    let mut st = t.prepare_cached(
        "SELECT id, chat_id, source_chat, path FROM disclosures
         WHERE kind = 'import' AND status = 'approved' AND source_chat IS NOT NULL ORDER BY id",
    )?;
    let v = st
        .query_map([], |r| {
            Ok(ImportJob {
                id: r.get(0)?,
                dest_chat: r.get(1)?,
                source_chat: r.get(2)?,
                path: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(v)
}

/// The helper copied an import: the bridge's record, and the question asked again with a note
/// of where the copy is.
pub fn import_copied(
    t: &Connection,
    job: &ImportJob,
    dest_path: &str,
    sha256: &str,
    size: u64,
) -> Result<(), StoreError> {
    let n = t.execute(
        "UPDATE disclosures SET status = 'copied', imported_path = ?2 WHERE id = ?1 AND status = 'approved'",
        params![job.id, dest_path],
    )?;
    if n == 0 {
        return Ok(());
    }
    t.execute(
        "INSERT INTO bridge_events (disclosure_id, source_chat, dest_chat, path, dest_path, sha256, size, approver, challenge_message, approval_message, created_at)
         SELECT d.id, d.source_chat, d.chat_id, d.path, ?2, ?3, ?4, COALESCE(d.approver, ''),
                (SELECT o.linq_message_id FROM outbox o WHERE o.idempotency_key = d.challenge_key),
                COALESCE(d.approval_message, ''), ?5
         FROM disclosures d WHERE d.id = ?1",
        params![job.id, dest_path, sha256, size as i64, now_ms()],
    )?;
    event(
        t,
        job.id,
        Step::Copied,
        None,
        &format!(
            "{} of {} -> {} of {} sha256 {sha256} size {size}",
            job.path, job.source_chat, dest_path, job.dest_chat
        ),
    )?;
    let message_id: i64 = t.query_row(
        "SELECT message_id FROM disclosures WHERE id = ?1",
        [job.id],
        |r| r.get(0),
    )?;
    queue_rerun(t, job.id, &job.dest_chat, message_id)?;
    Ok(())
}

/// The helper refused or failed an import: the chat gets a polite no.
pub fn import_failed(t: &Connection, id: i64, why: &str) -> Result<(), StoreError> {
    let n = t.execute(
        "UPDATE disclosures SET status = 'failed', reason = ?2 WHERE id = ?1 AND status = 'approved'",
        params![id, why],
    )?;
    if n == 1 {
        event(t, id, Step::Failed, None, why)?;
        tell_chat_no(t, id, Status::Failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The broker on a real SQLite log: chats and messages arrive as Linq sends them (`ingest`).
    use super::*;
    use crate::ingest::{apply, Ctx};
    use crate::linq::events::parse_event;
    use crate::store::Store;
    use serde_json::{json, Value};

    const OWNER: &str = "+15550002000";
    const FRIEND: &str = "+15557770000";
    const DM: &str = "4c6113a3-cb58-46e5-a29c-326444779872";
    const GROUP: &str = "6e8335c5-ed7a-4807-84cb-548666991094";

    fn ctx() -> Ctx {
        Ctx {
            owner: Owner::new(&[OWNER.into()]),
            bot_names: vec![],
        }
    }

    fn message(n: u32, chat: &str, group: bool, from: &str, text: &str) -> Vec<u8> {
        let mut v: Value =
            serde_json::from_str(include_str!("../linq/fixtures/message.received-1to1.json"))
                .unwrap();
        v["event_id"] = json!(format!("00000000-0000-4000-8000-{n:012}"));
        v["data"]["id"] = json!(format!("10000000-0000-4000-8000-{n:012}"));
        v["data"]["chat"]["id"] = json!(chat);
        v["data"]["chat"]["is_group"] = json!(group);
        v["data"]["sender_handle"]["handle"] = json!(from);
        v["data"]["parts"][0]["value"] = json!(text);
        serde_json::to_vec(&v).unwrap()
    }

    async fn send(s: &Store, body: Vec<u8>) {
        let env = parse_event(&body).unwrap();
        let text = String::from_utf8(body).unwrap();
        s.call(move |t| apply(t, &env, "r", &text, &ctx()))
            .await
            .unwrap();
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

    /// The owner's DM, a group where the friend asked something, and that question's turn.
    async fn setup() -> (tempfile::TempDir, Store, TurnJob) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("t.db")).unwrap();
        send(&s, message(1, DM, false, OWNER, "hi")).await;
        send(
            &s,
            message(2, GROUP, true, OWNER, "/picortex attention always"),
        )
        .await;
        send(&s, message(3, GROUP, true, FRIEND, "when do we leave?")).await;
        let job = s
            .call(|t| {
                t.execute(
                    "UPDATE turns SET status = 'running' WHERE chat_id = ?1",
                    [GROUP],
                )?;
                Ok(queries::inflight_turns(t)?
                    .into_iter()
                    .find(|j| j.chat_id == GROUP)
                    .unwrap())
            })
            .await
            .unwrap();
        (d, s, job)
    }

    fn read(what: &str) -> AccessRequest {
        AccessRequest::Read {
            what: what.into(),
            why: "they asked".into(),
        }
    }

    #[tokio::test]
    async fn yes_grants_one_turn_once_and_late_answers_change_nothing() {
        let (_d, s, job) = setup().await;
        let j = job.clone();
        let opened = s
            .call(move |t| open_requests(t, &j, &[read("notes/plan.txt")], &ctx().owner, 600_000))
            .await
            .unwrap();
        assert_eq!(opened.pending.len(), 1);
        assert!(q(&s, "SELECT text FROM outbox WHERE idempotency_key LIKE 'picortex-consent-%' AND chat_id = '4c6113a3-cb58-46e5-a29c-326444779872'")
            .await
            .contains("yes 1"));
        let a = s
            .call(|t| answer(t, 1, Answer::Yes, OWNER, "m1"))
            .await
            .unwrap();
        assert!(a.wake_turns, "{}", a.reply);
        let rerun = q(&s, "SELECT id FROM turns WHERE disclosure_id IS NOT NULL").await;
        let (r1, r2) = (rerun.clone(), rerun.clone());
        let grants = s
            .call(move |t| grants_for_turn(t, &r1, GROUP))
            .await
            .unwrap();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].source_chat, DM);
        // Consumed by that turn; it keeps it across a restart, no other turn gets it.
        s.call(move |t| consume(t, &r2)).await.unwrap();
        assert_eq!(q(&s, "SELECT status FROM disclosures").await, "consumed");
        let r3 = rerun.clone();
        assert_eq!(
            s.call(move |t| grants_for_turn(t, &r3, GROUP))
                .await
                .unwrap()
                .len(),
            1
        );
        let other = job.turn_id.clone();
        assert!(s
            .call(move |t| grants_for_turn(t, &other, GROUP))
            .await
            .unwrap()
            .is_empty());
        let late = s
            .call(|t| answer(t, 1, Answer::Yes, OWNER, "m2"))
            .await
            .unwrap();
        assert!(
            !late.wake_turns && late.reply.contains("not waiting"),
            "{}",
            late.reply
        );
        assert_eq!(
            q(
                &s,
                "SELECT CAST(COUNT(*) AS TEXT) FROM turns WHERE disclosure_id IS NOT NULL"
            )
            .await,
            "1"
        );
        assert_eq!(
            q(&s, "SELECT group_concat(step) FROM consent_events").await,
            "requested,asked,approved,consumed,ignored"
        );
    }

    #[tokio::test]
    async fn no_and_the_timer_answer_the_group_and_grant_nothing() {
        let (_d, s, job) = setup().await;
        let j = job.clone();
        s.call(move |t| {
            open_requests(
                t,
                &j,
                &[read("a.txt"), read("b.txt")],
                &ctx().owner,
                600_000,
            )
        })
        .await
        .unwrap();
        assert_eq!(
            q(&s, "SELECT group_concat(number) FROM disclosures").await,
            "1,2",
            "each its own number"
        );
        let a = s
            .call(|t| answer(t, 2, Answer::No, OWNER, "m"))
            .await
            .unwrap();
        assert!(!a.wake_turns);
        assert_eq!(
            s.call(|t| expire_due(t, now_ms() + 600_001)).await.unwrap(),
            1
        );
        assert_eq!(
            q(
                &s,
                "SELECT group_concat(status) FROM (SELECT status FROM disclosures ORDER BY id)"
            )
            .await,
            "expired,denied"
        );
        assert_eq!(
            q(&s, "SELECT CAST(COUNT(*) AS TEXT) FROM outbox WHERE idempotency_key LIKE 'picortex-consent-no-%' AND chat_id = '6e8335c5-ed7a-4807-84cb-548666991094'").await,
            "2"
        );
        assert_eq!(
            q(
                &s,
                "SELECT CAST(COUNT(*) AS TEXT) FROM turns WHERE disclosure_id IS NOT NULL"
            )
            .await,
            "0"
        );
        // A number is free again once nothing pending holds it.
        let j = job.clone();
        s.call(move |t| open_requests(t, &j, &[read("c.txt")], &ctx().owner, 600_000))
            .await
            .unwrap();
        assert_eq!(
            q(
                &s,
                "SELECT CAST(number AS TEXT) FROM disclosures WHERE status = 'pending'"
            )
            .await,
            "1"
        );
    }

    #[tokio::test]
    async fn always_stands_until_revoked_and_imports_cannot_stand() {
        let (_d, s, job) = setup().await;
        let j = job.clone();
        s.call(move |t| {
            open_requests(
                t,
                &j,
                &[
                    read("plan.txt"),
                    AccessRequest::Import {
                        from_chat: "owner".into(),
                        path: "x.pdf".into(),
                        why: String::new(),
                    },
                ],
                &ctx().owner,
                600_000,
            )
        })
        .await
        .unwrap();
        s.call(|t| answer(t, 1, Answer::Always, OWNER, "m"))
            .await
            .unwrap();
        let i = s
            .call(|t| answer(t, 2, Answer::Always, OWNER, "m"))
            .await
            .unwrap();
        assert!(
            i.wake_imports && !i.reply.contains("from now on"),
            "{}",
            i.reply
        );
        let later = job.turn_id.clone();
        let g = s
            .call(move |t| grants_for_turn(t, &later, GROUP))
            .await
            .unwrap();
        assert_eq!(g.len(), 1);
        assert!(g[0].standing.is_some());
        assert!(s.call(|t| has_standing(t, GROUP)).await.unwrap());
        let id = g[0].standing.unwrap();
        assert!(s
            .call(move |t| revoke(t, id))
            .await
            .unwrap()
            .starts_with("Revoked"));
        assert!(!s.call(|t| has_standing(t, GROUP)).await.unwrap());
        let later = job.turn_id.clone();
        assert!(s
            .call(move |t| grants_for_turn(t, &later, GROUP))
            .await
            .unwrap()
            .is_empty());
    }
}
