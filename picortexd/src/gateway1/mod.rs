//! `org.picortex.Gateway1` at `/org/picortex/Gateway1` on the system bus: the administrator's
//! view of the gateway and its levers (SPEC O1–O6), so nobody has to write SQL. `picortexctl`
//! is its client; `busctl` works as well. The names are `picortex_proto::gateway`'s.
//!
//! Every method asks polkit first — `org.picortex.gateway.read` to look,
//! `org.picortex.gateway.manage` to change — about the caller's bus name (the same subject the
//! root helper uses, `picortex-provision/src/authz.rs`), and every refusal is a journal entry.
//! The methods are thin: a setting is the owner's `/picortex` command (`commands::execute`), built
//! by the same rule; allow/block is `commands::decide`; archive and remove go through the helper
//! and are then recorded in the log. The reads are `store::admin`.

use std::collections::HashMap;
use std::sync::Arc;

use picortex_proto::gateway::{actions, GATEWAY_PATH};
use zbus::message::{Flags, Header};
use zbus::names::BusName;
use zbus::object_server::SignalEmitter;
use zbus::{fdo, interface, Connection};
use zbus_polkit::policykit1::{AuthorityProxy, CheckAuthorizationFlags, Subject};

use crate::commands::{self, Command};
use crate::store::admin::{
    self, ChatRecord, CostRecord, DecisionRecord, Defaults, MessageRecord, PendingRecord,
    StatsRecord, TurnRecord,
};
use crate::store::queries::{self, Chat};
use crate::store::{Store, StoreError};
use crate::turns::Turns;

/// How many recent decisions and turns `GetChat` returns.
pub const RECENT: i64 = 10;

/// How an administrator names a chat: its Linq id, or while it waits, its quarantine number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatRef {
    Number(i64),
    Id(String),
}

impl ChatRef {
    pub fn parse(s: &str) -> Result<ChatRef, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("no chat named: give a chat id, or a waiting chat's number".into());
        }
        let n = s.strip_prefix('#').unwrap_or(s);
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && n.len() <= 9 {
            return match n.parse::<i64>() {
                Ok(n) if n > 0 => Ok(ChatRef::Number(n)),
                _ => Err(format!("{s:?} is not a waiting chat's number")),
            };
        }
        if s.len() > 256 || s.chars().any(char::is_control) {
            return Err(format!("{s:?} is not a chat id"));
        }
        Ok(ChatRef::Id(s.to_owned()))
    }
}

fn find(t: &rusqlite::Connection, r: &ChatRef) -> Result<Option<Chat>, StoreError> {
    match r {
        ChatRef::Number(n) => crate::store::authority::chat_by_number(t, *n),
        ChatRef::Id(id) => queries::chat(t, id),
    }
}

/// Why a call failed, as the caller reads it.
fn invalid(msg: impl Into<String>) -> fdo::Error {
    fdo::Error::InvalidArgs(msg.into())
}

fn failed(e: impl std::fmt::Display) -> fdo::Error {
    fdo::Error::Failed(e.to_string())
}

#[derive(Clone)]
pub struct Gateway1 {
    store: Store,
    turns: Arc<Turns>,
}

impl Gateway1 {
    pub fn new(store: Store, turns: Arc<Turns>) -> Self {
        Self { store, turns }
    }

    fn defaults(&self) -> Defaults {
        let c = self.turns.cfg.get();
        Defaults {
            memory_max: c.memory_max_bytes(),
            permission_mode: c.turns.permission_mode.clone(),
            daily_budget_usd: c.turns.daily_budget_usd,
        }
    }

    async fn chat(&self, chat: &str) -> fdo::Result<Chat> {
        let r = ChatRef::parse(chat).map_err(invalid)?;
        let r2 = r.clone();
        let found = self
            .store
            .call(move |t| find(t, &r2))
            .await
            .map_err(failed)?;
        found.ok_or_else(|| {
            fdo::Error::UnknownObject(match r {
                ChatRef::Number(n) => {
                    format!("no chat has number {n}; `picortexctl pending` lists the waiting ones")
                }
                ChatRef::Id(id) => {
                    format!("no chat {id:?} in the log; `picortexctl chats` lists them")
                }
            })
        })
    }

    /// Apply one of the owner's commands to a chat, as the owner's message would.
    async fn command(&self, chat: &Chat, cmd: Command, who: &Caller) -> fdo::Result<String> {
        let c = chat.clone();
        let c2 = cmd.clone();
        // An administrator has no handle and no Linq message: the record names the uid.
        let sender = format!("uid {}", who.uid_text());
        let fx = self
            .store
            .call(move |t| {
                let origin = commands::Origin {
                    sender: &sender,
                    message: "",
                };
                commands::execute(t, &c, &c2, origin)
            })
            .await
            .map_err(failed)?;
        if fx.wake_turns {
            self.turns.wake.notify_one();
        }
        if fx.wake_consent {
            crate::consent::worker::wake();
        }
        tracing::info!(chat = %chat.id, caller_uid = who.uid, caller = %who.bus_name, command = ?cmd, "administrator (uid {}): {}", who.uid_text(), fx.reply);
        Ok(fx.reply)
    }

    /// A setting: the value through its rule (the one `/picortex` uses), then the command.
    async fn set(
        &self,
        hdr: &Header<'_>,
        conn: &Connection,
        method: &str,
        chat: &str,
        value: &str,
        rule: fn(&str) -> Result<Command, String>,
    ) -> fdo::Result<String> {
        let who = authorize(conn, hdr, actions::MANAGE, method, chat).await?;
        let c = self.chat(chat).await?;
        let cmd = rule(value).map_err(|e| {
            tracing::info!(chat = %c.id, caller_uid = who.uid, "{method} refused: {e}");
            invalid(e)
        })?;
        self.command(&c, cmd, &who).await
    }

    async fn decide(
        &self,
        hdr: &Header<'_>,
        conn: &Connection,
        chat: &str,
        allow: bool,
    ) -> fdo::Result<String> {
        let method = if allow { "Allow" } else { "Block" };
        let who = authorize(conn, hdr, actions::MANAGE, method, chat).await?;
        let c = self.chat(chat).await?;
        let (reply, wake) = self
            .store
            .call(move |t| commands::decide(t, &c, allow))
            .await
            .map_err(failed)?;
        if wake {
            self.turns.wake.notify_one();
        }
        tracing::info!(
            caller_uid = who.uid,
            "administrator (uid {}): {reply}",
            who.uid_text()
        );
        Ok(reply)
    }

    /// Archive or remove: through the helper, then recorded in the log.
    async fn retire(
        &self,
        hdr: &Header<'_>,
        conn: &Connection,
        chat: &str,
        remove: bool,
    ) -> fdo::Result<String> {
        let method = if remove { "Remove" } else { "Archive" };
        let who = authorize(conn, hdr, actions::MANAGE, method, chat).await?;
        let c = self.chat(chat).await?;
        let id = c.id.clone();
        let busy = self
            .store
            .call(move |t| admin::busy(t, &id))
            .await
            .map_err(failed)?;
        if busy > 0 {
            return Err(fdo::Error::Failed(format!(
                "chat {} has a turn running; try again when it has finished",
                c.id
            )));
        }
        if !remove && (c.unix_user.is_none() || c.archived) {
            return Err(fdo::Error::Failed(format!(
                "chat {} has nothing to archive ({})",
                c.id,
                if c.archived {
                    "it is archived already"
                } else {
                    "it has no user yet"
                }
            )));
        }
        self.turns.drop_spare(&c.id).await;
        let bus = &self.turns.bus;
        let r = if remove {
            bus.remove_chat(&c.id).await
        } else {
            bus.archive_chat(&c.id).await
        };
        let path = r.map_err(|e| {
            tracing::error!(chat = %c.id, caller_uid = who.uid, error = %e, "{method} of chat {} failed: {e}", c.id);
            failed(format!("the helper could not {}: {e}", method.to_lowercase()))
        })?;
        let id = c.id.clone();
        let rec = self
            .store
            .call(move |t| {
                if remove {
                    admin::removed(t, &id).map(|_| ())
                } else {
                    crate::store::channel::set_archived(t, &id, true)
                }
            })
            .await;
        if let Err(e) = rec {
            tracing::error!(chat = %c.id, error = %e, "{method}: the helper did it but the log could not record it: {e}");
            return Err(failed(format!(
                "done by the helper, but not recorded in the log: {e}"
            )));
        }
        let path_s = if path.is_empty() {
            "nothing to keep".to_owned()
        } else {
            path.clone()
        };
        tracing::info!(chat = %c.id, caller_uid = who.uid, archive = %path, "administrator (uid {}): chat {} {} ({path_s})", who.uid_text(), c.id, if remove { "removed, and blocked" } else { "archived" });
        Ok(path)
    }
}

/// Who called, as the bus recorded it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub bus_name: String,
    pub uid: Option<u32>,
}

impl Caller {
    fn uid_text(&self) -> String {
        self.uid.map_or_else(|| "unknown".into(), |u| u.to_string())
    }
}

/// Ask polkit whether the caller may do `action`. Interactive authentication only when the
/// caller said it can wait for it (`busctl --allow-interactive-authorization`). A refusal is
/// logged with the caller, the method and the chat, and answered `AccessDenied`.
async fn authorize(
    conn: &Connection,
    hdr: &Header<'_>,
    action: &str,
    method: &str,
    chat: &str,
) -> fdo::Result<Caller> {
    let sender = hdr
        .sender()
        .ok_or_else(|| fdo::Error::AccessDenied("call has no sender".into()))?;
    let uid = match fdo::DBusProxy::new(conn).await {
        Ok(d) => d
            .get_connection_unix_user(BusName::from(sender.to_owned()))
            .await
            .ok(),
        Err(_) => None,
    };
    let who = Caller {
        bus_name: sender.to_string(),
        uid,
    };
    let r = async {
        let subject = Subject::new_for_message_header(hdr).map_err(|e| e.to_string())?;
        let authority = AuthorityProxy::new(conn).await.map_err(|e| e.to_string())?;
        let flags = if hdr
            .primary()
            .flags()
            .contains(Flags::ALLOW_INTERACTIVE_AUTH)
        {
            CheckAuthorizationFlags::ALLOW_USER_INTERACTION
        } else {
            CheckAuthorizationFlags::empty()
        };
        authority
            .check_authorization(&subject, action, &HashMap::new(), flags, "")
            .await
            .map(|r| r.is_authorized)
            .map_err(|e| e.to_string())
    }
    .await;
    match r {
        Ok(true) => Ok(who),
        Ok(false) => {
            tracing::warn!(
                caller_uid = who.uid,
                caller = %who.bus_name,
                action,
                method,
                chat,
                "refused {method}({chat}) to uid {} ({}): polkit does not authorise {action}",
                who.uid_text(),
                who.bus_name
            );
            Err(fdo::Error::AccessDenied(format!(
                "not authorised by polkit for {action}: ask an administrator, run as root, or join the picortex-admin group"
            )))
        }
        Err(e) => {
            // polkit answers an unprivileged gateway about other users' processes only for
            // actions it owns (`org.freedesktop.policykit.owner` in the .policy file).
            let hint = if e.contains("NotAuthorized") {
                " (is /usr/share/polkit-1/actions/org.picortex.gateway.policy installed, naming unix-user:picortex as the actions' owner?)"
            } else {
                ""
            };
            tracing::error!(
                caller_uid = who.uid,
                caller = %who.bus_name,
                action,
                method,
                "refused {method}({chat}) to uid {}: could not ask polkit: {e}{hint}",
                who.uid_text()
            );
            Err(fdo::Error::AccessDenied(format!(
                "could not ask polkit about {action}: {e}"
            )))
        }
    }
}

/// The gateway's administration interface. Chats are named by Linq id or quarantine number
/// ("3" or "#3"). Read methods need the polkit action org.picortex.gateway.read, the others
/// org.picortex.gateway.manage. See picortexctl(1).
#[interface(name = "org.picortex.Gateway1")]
impl Gateway1 {
    /// Every chat with its access (allowed/pending/blocked), attention mode, memory limit,
    /// permission mode and daily budget in effect (the *_own keys say whether the chat has its
    /// own), today's cost and last activity (unix ms).
    #[zbus(out_args("chats"))]
    async fn list_chats(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<Vec<ChatRecord>> {
        authorize(conn, &hdr, actions::READ, "ListChats", "").await?;
        let d = self.defaults();
        self.store
            .call(move |t| admin::list_chats(t, &d))
            .await
            .map_err(failed)
    }

    /// One chat (by id or quarantine number) in detail, with its last gate decisions and turns,
    /// newest first.
    #[zbus(out_args("chat", "decisions", "turns"))]
    async fn get_chat(
        &self,
        chat: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<(ChatRecord, Vec<DecisionRecord>, Vec<TurnRecord>)> {
        authorize(conn, &hdr, actions::READ, "GetChat", chat).await?;
        let c = self.chat(chat).await?;
        let d = self.defaults();
        self.store
            .call(move |t| {
                let rec = admin::chat_record(t, &c, &d)?;
                let (ds, ts) = admin::recent(t, &c.id, RECENT)?;
                Ok((rec, ds, ts))
            })
            .await
            .map_err(failed)
    }

    /// Chats waiting for the owner's decision (quarantine), by number: who, the first message,
    /// how many messages are held.
    #[zbus(out_args("pending"))]
    async fn list_pending(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<Vec<PendingRecord>> {
        authorize(conn, &hdr, actions::READ, "ListPending", "").await?;
        self.store.call(admin::pending).await.map_err(failed)
    }

    /// Requests of chats' agents for something of the owner's (SPEC C2) that wait for an answer:
    /// number, asking chat, read or import, whose workspace, path, why, who asked, until when.
    #[zbus(out_args("requests"))]
    async fn list_requests(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<Vec<admin::RequestRecord>> {
        authorize(conn, &hdr, actions::READ, "ListRequests", "").await?;
        self.store.call(admin::requests).await.map_err(failed)
    }

    /// Counts of chats by access, turns queued/running/held, replies waiting to be sent, today's
    /// turns, failures and cost (UTC day), and the gateway's version.
    #[zbus(out_args("stats"))]
    async fn stats(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<StatsRecord> {
        authorize(conn, &hdr, actions::READ, "Stats", "").await?;
        self.store.call(admin::stats).await.map_err(failed)
    }

    /// Cost and number of turns per chat, of the turns finished since since_ms (unix ms; 0 for
    /// all time), most expensive first.
    #[zbus(out_args("costs"))]
    async fn cost(
        &self,
        since_ms: i64,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<Vec<CostRecord>> {
        authorize(conn, &hdr, actions::READ, "Cost", "").await?;
        self.store
            .call(move |t| admin::cost(t, since_ms))
            .await
            .map_err(failed)
    }

    /// Why a message (its Linq id) was or was not answered: the message, the gate's decisions
    /// on it, the turns it started (outcome, cost), and the text of the reply that was sent.
    #[zbus(out_args("message", "decisions", "turns", "replies"))]
    async fn why(
        &self,
        message: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<(
        MessageRecord,
        Vec<DecisionRecord>,
        Vec<TurnRecord>,
        Vec<String>,
    )> {
        authorize(conn, &hdr, actions::READ, "Why", message).await?;
        let m = message.trim().to_owned();
        let m2 = m.clone();
        self.store
            .call(move |t| admin::why(t, &m2))
            .await
            .map_err(failed)?
            .ok_or_else(|| {
                fdo::Error::UnknownObject(format!(
                    "no message {m:?} in the log (give Linq's message id)"
                ))
            })
    }

    /// Set the chat's attention mode: always, mentions-only, discriminate, discriminate-quiet,
    /// silent, or default (the kind's default). Returns what changed.
    #[zbus(out_args("result"))]
    async fn set_attention(
        &self,
        chat: &str,
        mode: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        self.set(&hdr, conn, "SetAttention", chat, mode, commands::attention)
            .await
    }

    /// Set the memory limit of the chat's slice (MemoryMax=) from its next turn: a size like
    /// 512M or 2G between 32M and 64G, or default.
    #[zbus(out_args("result"))]
    async fn set_memory_max(
        &self,
        chat: &str,
        memory_max: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        self.set(
            &hdr,
            conn,
            "SetMemoryMax",
            chat,
            memory_max,
            commands::memory_max,
        )
        .await
    }

    /// Set the chat's daily budget in USD (0 to 10000, UTC days), or off/default.
    #[zbus(out_args("result"))]
    async fn set_budget(
        &self,
        chat: &str,
        daily_budget_usd: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        self.set(
            &hdr,
            conn,
            "SetBudget",
            chat,
            daily_budget_usd,
            commands::budget,
        )
        .await
    }

    /// Set the agent's permission mode in this chat: default, acceptEdits, plan, auto, dontAsk,
    /// bypassPermissions, or default to follow the configuration.
    #[zbus(out_args("result"))]
    async fn set_permission_mode(
        &self,
        chat: &str,
        permission_mode: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        self.set(
            &hdr,
            conn,
            "SetPermissionMode",
            chat,
            permission_mode,
            commands::permission_mode,
        )
        .await
    }

    /// Allow a chat (as the owner's "allow <n>"): its held messages are answered in order.
    #[zbus(out_args("result"))]
    async fn allow(
        &self,
        chat: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        self.decide(&hdr, conn, chat, true).await
    }

    /// Answer request `number` as the owner's "yes N", "no N" or "always N" in their DM would
    /// (`answer`: yes, no or always): yes re-runs the asking message once with the grant (or
    /// carries out the import), always also records a standing grant, no tells the chat politely.
    /// The record names the administrator's uid as the approver.
    #[zbus(out_args("result"))]
    async fn answer_request(
        &self,
        number: i64,
        answer: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        let who = authorize(conn, &hdr, actions::MANAGE, "AnswerRequest", "").await?;
        let ans = crate::consent::Answer::parse(answer)
            .ok_or_else(|| invalid(format!("answer {answer:?} is not one of yes, no, always")))?;
        let approver = format!("uid {}", who.uid_text());
        let a = self
            .store
            .call(move |t| crate::consent::store::answer(t, number, ans, &approver, ""))
            .await
            .map_err(failed)?;
        if a.wake_turns {
            self.turns.wake.notify_one();
        }
        if a.wake_imports {
            crate::consent::worker::wake();
        }
        tracing::info!(caller_uid = who.uid, caller = %who.bus_name, request = number, answer = ?ans, "administrator (uid {}) answered request {number}: {}", who.uid_text(), a.reply);
        Ok(a.reply)
    }

    /// Block a chat (as the owner's "block <n>"): nothing runs for it; its messages stay logged.
    #[zbus(out_args("result"))]
    async fn block(
        &self,
        chat: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        self.decide(&hdr, conn, chat, false).await
    }

    /// Archive the chat now through the helper (home tarred away, user locked; its next message
    /// restores it). Refused while a turn runs. Returns the archive's path.
    #[zbus(out_args("archive"))]
    async fn archive(
        &self,
        chat: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        self.retire(&hdr, conn, chat, false).await
    }

    /// Remove the chat's user through the helper (its home archived first) and block the chat,
    /// so nothing provisions it again until it is allowed. Returns the archive's path, or "".
    #[zbus(out_args("archive"))]
    async fn remove(
        &self,
        chat: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        self.retire(&hdr, conn, chat, true).await
    }

    /// Start a fresh agent session for the chat (its next message begins it). Returns what
    /// changed, with the new session id.
    #[zbus(out_args("result"))]
    async fn new_session(
        &self,
        chat: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        let who = authorize(conn, &hdr, actions::MANAGE, "NewSession", chat).await?;
        let c = self.chat(chat).await?;
        self.command(&c, Command::New, &who).await
    }

    /// A turn started in its unit (kind: answer or discriminate).
    #[zbus(signal)]
    pub async fn turn_started(
        emitter: &SignalEmitter<'_>,
        chat: &str,
        turn: &str,
        kind: &str,
    ) -> zbus::Result<()>;

    /// A turn ended (outcome: ok, timeout, out_of_memory, …; cost as the agent reported it).
    #[zbus(signal)]
    pub async fn turn_finished(
        emitter: &SignalEmitter<'_>,
        chat: &str,
        turn: &str,
        outcome: &str,
        cost_usd: f64,
    ) -> zbus::Result<()>;

    /// A chat is waiting for the owner's decision under this number.
    #[zbus(signal)]
    pub async fn pending_added(
        emitter: &SignalEmitter<'_>,
        number: i64,
        chat: &str,
    ) -> zbus::Result<()>;

    /// The gateway's version.
    #[zbus(property)]
    async fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }
}

/// The object's path, for the bus to serve it at.
pub const PATH: &str = GATEWAY_PATH;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_is_named_by_id_or_number() {
        assert_eq!(ChatRef::parse("3"), Ok(ChatRef::Number(3)));
        assert_eq!(ChatRef::parse(" #12 "), Ok(ChatRef::Number(12)));
        assert_eq!(
            ChatRef::parse("chat_abc-1"),
            Ok(ChatRef::Id("chat_abc-1".into()))
        );
        assert_eq!(
            ChatRef::parse("1234567890"),
            Ok(ChatRef::Id("1234567890".into())),
            "a long number is an id"
        );
        assert!(ChatRef::parse("0").is_err());
        assert!(ChatRef::parse("").is_err());
        assert!(ChatRef::parse("a\nb").is_err());
    }
}
