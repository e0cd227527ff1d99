//! The `org.picortex.Provision1` object. Each method: identify the caller, ask polkit, validate
//! the input, do the work through `users`/`units`, and write one audit record, whatever happens.
//! Polkit comes first so that an unauthorised caller leaves one `refused` record and nothing it
//! chose: until the caller is authorised, its arguments reach polkit and the journal only once
//! they have passed their parser.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use picortex_proto::bus::actions;
use picortex_proto::ids::{ChatId, IdError, TurnId};
use zbus::message::Header;
use zbus::{fdo, interface, Connection, OwnedFd, OwnedVariant};

use crate::audit::{self, Caller};
use crate::authz::{self, AuthzError};
use crate::units::{self, Limits, UnitError};
use crate::users;

/// Calls in flight and the time of the last one, for the idle exit.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }
}

impl Activity {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
    pub fn idle_for(&self) -> Duration {
        if self.in_flight() > 0 {
            return Duration::ZERO;
        }
        self.last
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(Duration::ZERO)
    }
    fn enter(self: &Arc<Self>) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }
}

struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.last.lock() {
            *t = Instant::now();
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Provision {
    activity: Arc<Activity>,
    chats: ChatLocks,
}

impl Provision {
    pub fn new(activity: Arc<Activity>) -> Self {
        Self {
            activity,
            chats: ChatLocks::default(),
        }
    }
}

/// One lock per chat: provisioning, starting a turn, archiving and removing one chat happen one
/// at a time, so a turn never starts in a home being archived and a removal never races a
/// restore. Different chats never wait for each other.
#[derive(Default)]
struct ChatLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl ChatLocks {
    async fn lock(&self, chat: &ChatId) -> tokio::sync::OwnedMutexGuard<()> {
        let m = match self.0.lock() {
            Ok(mut map) => map.entry(chat.as_str().to_owned()).or_default().clone(),
            // A poisoned map only means another call panicked holding it; the locks in it are
            // still right.
            Err(p) => p
                .into_inner()
                .entry(chat.as_str().to_owned())
                .or_default()
                .clone(),
        };
        m.lock_owned().await
    }
}

/// Identify and authorise the caller; on refusal, audit and return AccessDenied.
async fn authorize(
    conn: &Connection,
    hdr: &Header<'_>,
    op: &str,
    action: &str,
    chat: &str,
    turn: &str,
) -> Result<Caller, fdo::Error> {
    let caller = authz::caller(conn, hdr)
        .await
        .map_err(|e| fdo::Error::AccessDenied(e.to_string()))?;
    let details = HashMap::from([("chat_id", chat), ("turn_id", turn)]);
    match authz::check(conn, hdr, action, &details).await {
        Ok(()) => Ok(caller),
        Err(e @ AuthzError::Denied { .. }) => {
            audit::record(op, &caller, chat, turn, "refused", &e.to_string());
            Err(fdo::Error::AccessDenied(e.to_string()))
        }
        Err(e) => {
            audit::record(op, &caller, chat, turn, "failed", &e.to_string());
            Err(fdo::Error::Failed(e.to_string()))
        }
    }
}

/// An authorised caller's malformed argument: audited as a failure, refused as invalid.
fn bad_input(op: &str, caller: &Caller, chat: &str, turn: &str, msg: String) -> fdo::Error {
    audit::record(op, caller, chat, turn, "failed", &msg);
    fdo::Error::InvalidArgs(msg)
}

/// An id as polkit and the audit may see it before the caller is authorised: only if it parsed.
fn shown<T>(id: &Result<T, IdError>, as_str: fn(&T) -> &str) -> &str {
    id.as_ref().map_or("", as_str)
}

/// The audit's name for letting a turn's unit go, whichever method did it.
const RELEASE: &str = "ReleaseTurn";

/// ReleaseTurn's work once the caller is authorised: stop the unit, forget it, delete the
/// turn's staged grants (a no-op for a turn without any), audit (`detail`: with which call).
async fn release_authorized(
    caller: &Caller,
    turn: Result<TurnId, IdError>,
    detail: &str,
    conn: &Connection,
) -> fdo::Result<()> {
    let turn = turn.map_err(|e| bad_input(RELEASE, caller, "", "", e.to_string()))?;
    let r = units::release_turn(conn, &turn).await;
    let t = turn.clone();
    let _ = tokio::task::spawn_blocking(move || crate::share::remove_staged(&t)).await;
    match r {
        Ok(()) => {
            audit::record(RELEASE, caller, "", turn.as_str(), "ok", detail);
            Ok(())
        }
        Err(e) => {
            audit::record(RELEASE, caller, "", turn.as_str(), "failed", &e.to_string());
            Err(fdo::Error::Failed(e.to_string()))
        }
    }
}

impl Provision {
    /// Shared body of ArchiveChat and RemoveChat: authorise (manage-chat), validate, act on the
    /// chat's account as root in a blocking task, audit.
    async fn lifecycle(
        &self,
        op: &'static str,
        chat_id: &str,
        hdr: &Header<'_>,
        conn: &Connection,
        act: fn(&users::ChatAccount) -> Result<Option<std::path::PathBuf>, users::UserError>,
    ) -> fdo::Result<String> {
        let chat = ChatId::parse(chat_id);
        let shown_chat = shown(&chat, ChatId::as_str);
        let caller = authorize(conn, hdr, op, actions::MANAGE_CHAT, shown_chat, "").await?;
        let chat = chat.map_err(|e| bad_input(op, &caller, "", "", e.to_string()))?;
        let _chat_lock = self.chats.lock(&chat).await;
        // Nothing of the chat may run while its home is archived or removed.
        if let Ok(Some(tag)) = users::existing_tag(&chat) {
            if let Err(e) = units::stop_slice(conn, &tag.slice()).await {
                audit::record(op, &caller, chat.as_str(), "", "failed", &e.to_string());
                return Err(fdo::Error::Failed(e.to_string()));
            }
        }
        let c = chat.clone();
        let r = tokio::task::spawn_blocking(
            move || -> Result<Option<std::path::PathBuf>, users::UserError> {
                let tag = users::existing_tag(&c)?.ok_or_else(|| {
                    users::UserError::Unsafe(format!("chat {c} was never provisioned"))
                })?;
                let acct = users::account(&tag)?;
                act(&acct)
            },
        )
        .await
        .map_err(|e| fdo::Error::Failed(e.to_string()))?;
        match r {
            Ok(path) => {
                let p = path.map(|p| p.display().to_string()).unwrap_or_default();
                audit::record(
                    op,
                    &caller,
                    chat.as_str(),
                    "",
                    "ok",
                    &format!("archive {p}"),
                );
                Ok(p)
            }
            Err(e) => {
                audit::record(op, &caller, chat.as_str(), "", "failed", &e.to_string());
                Err(fdo::Error::Failed(e.to_string()))
            }
        }
    }
}

impl Provision {
    /// Shared body of StartTurn, StartGrantedTurn and ReleaseAndStartTurn.
    #[allow(clippy::too_many_arguments)]
    async fn start_turn_with(
        &self,
        op: &'static str,
        chat_id: &str,
        turn_id: &str,
        request: OwnedFd,
        result: OwnedFd,
        limits: HashMap<String, OwnedVariant>,
        grants: &[(String, String)],
        hdr: &Header<'_>,
        conn: &Connection,
    ) -> fdo::Result<String> {
        let (chat, turn) = (ChatId::parse(chat_id), TurnId::parse(turn_id));
        let (shown_chat, shown_turn) = (shown(&chat, ChatId::as_str), shown(&turn, TurnId::as_str));
        let caller = authorize(conn, hdr, op, actions::START_TURN, shown_chat, shown_turn).await?;
        self.start_authorized(
            op, &caller, chat, turn, request, result, limits, grants, conn,
        )
        .await
    }

    /// StartTurn's work once the caller is authorised: validate, provision nothing, start the
    /// unit, audit.
    #[allow(clippy::too_many_arguments)]
    async fn start_authorized(
        &self,
        op: &'static str,
        caller: &Caller,
        chat: Result<ChatId, IdError>,
        turn: Result<TurnId, IdError>,
        request: OwnedFd,
        result: OwnedFd,
        limits: HashMap<String, OwnedVariant>,
        grants: &[(String, String)],
        conn: &Connection,
    ) -> fdo::Result<String> {
        let shown_turn = shown(&turn, TurnId::as_str);
        let chat = chat.map_err(|e| bad_input(op, caller, "", shown_turn, e.to_string()))?;
        let turn = turn.map_err(|e| bad_input(op, caller, chat.as_str(), "", e.to_string()))?;
        let limits = Limits::from_dict(&limits)
            .map_err(|e| bad_input(op, caller, chat.as_str(), turn.as_str(), e))?;
        let grants = crate::share::parse_grants(grants)
            .map_err(|e| bad_input(op, caller, chat.as_str(), turn.as_str(), e))?;
        let (request, result): (std::os::fd::OwnedFd, std::os::fd::OwnedFd) =
            (request.into(), result.into());
        let fail = |msg: String| {
            audit::record(op, caller, chat.as_str(), turn.as_str(), "failed", &msg);
            fdo::Error::Failed(msg)
        };
        units::check_fds(&request, &result).map_err(|e| {
            audit::record(op, caller, chat.as_str(), turn.as_str(), "failed", &e);
            fdo::Error::InvalidArgs(e)
        })?;
        // Until the unit is started: not while the chat is being archived or removed.
        let _chat_lock = self.chats.lock(&chat).await;
        // The chat must have been provisioned through EnsureChat (and not removed since); a
        // turn never creates users.
        let c = chat.clone();
        // The operator's configuration, read once for the whole call (see `config`).
        let (acct, config) = tokio::task::spawn_blocking(
            move || -> Result<(Option<users::ChatAccount>, String), String> {
                let config = crate::config::read()?;
                let acct = match users::existing_tag(&c).map_err(|e| e.to_string())? {
                    Some(_) => users::ensure(&c, &config)
                        .map(|(a, _)| Some(a))
                        .map_err(|e| e.to_string())?,
                    None => None,
                };
                Ok((acct, config))
            },
        )
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(&fail)?;
        let acct = acct.ok_or_else(|| {
            fail(format!(
                "chat {chat} is not provisioned (or was removed); call EnsureChat first"
            ))
        })?;
        // picortex-egress applies the egress policy to the turn's connections; a table it would
        // refuse fails the turn here, with the operator's error, not as an agent without network.
        crate::egress::parse(&config).map_err(&fail)?;
        let a = acct.clone();
        let host = tokio::task::spawn_blocking(move || units::Host::probe(&a, &config))
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(&fail)?;
        // The owner's grants for this one turn, re-checked and copied for it (see `share`).
        let (t, a, g) = (turn.clone(), acct.clone(), grants.clone());
        let staged = tokio::task::spawn_blocking(move || crate::share::stage_grants(&t, &a, &g))
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| {
                crate::share::remove_staged(&turn);
                fail(e.to_string())
            })?;
        let spec = units::TurnSpec {
            acct: &acct,
            chat: &chat,
            turn: &turn,
            limits: &limits,
            host: &host,
            grants: &staged,
        };
        match units::start_turn(conn, &spec, request, result).await {
            Ok(unit) => {
                audit::record(
                    op,
                    caller,
                    chat.as_str(),
                    turn.as_str(),
                    "ok",
                    &format!(
                        "unit {unit} user {} MemoryMax={} RuntimeMaxUSec={}{}",
                        acct.user,
                        limits.memory_max,
                        limits.runtime_max_usec,
                        if grants.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " grants {}",
                                grants
                                    .iter()
                                    .map(|(c, p)| format!("{c}:{p}"))
                                    .collect::<Vec<_>>()
                                    .join(",")
                            )
                        }
                    ),
                );
                Ok(unit)
            }
            Err(UnitError::Exists(m)) => {
                // The turn's own earlier start holds the staged copies it was started with.
                audit::record(op, caller, chat.as_str(), turn.as_str(), "failed", &m);
                Err(fdo::Error::FileExists(m))
            }
            Err(e) => {
                crate::share::remove_staged(&turn);
                Err(fail(e.to_string()))
            }
        }
    }
}

#[interface(name = "org.picortex.Provision1")]
impl Provision {
    /// Create (or repair) a chat's user, home and slice; idempotent.
    /// Returns (user name, uid, home, slice).
    async fn ensure_chat(
        &self,
        chat_id: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<(String, u32, String, String)> {
        let _g = self.activity.enter();
        const OP: &str = "EnsureChat";
        let chat = ChatId::parse(chat_id);
        let shown_chat = shown(&chat, ChatId::as_str);
        let caller = authorize(conn, &hdr, OP, actions::ENSURE_CHAT, shown_chat, "").await?;
        let chat = chat.map_err(|e| bad_input(OP, &caller, "", "", e.to_string()))?;
        let _chat_lock = self.chats.lock(&chat).await;
        let c = chat.clone();
        let r = tokio::task::spawn_blocking(move || {
            let config = crate::config::read()?;
            users::ensure(&c, &config).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| fdo::Error::Failed(e.to_string()))?;
        match r {
            Ok((a, quota)) => {
                audit::record(
                    OP,
                    &caller,
                    chat.as_str(),
                    "",
                    "ok",
                    &format!(
                        "user {} uid {} home {} disk_quota {quota}",
                        a.user, a.uid, a.home
                    ),
                );
                Ok((a.user, a.uid, a.home, a.tag.slice()))
            }
            Err(e) => {
                audit::record(OP, &caller, chat.as_str(), "", "failed", &e.to_string());
                Err(fdo::Error::Failed(e.to_string()))
            }
        }
    }

    /// Start `picortex-turn-<turn_id>.service` for a provisioned chat. `request` becomes its stdin,
    /// `result` its stdout. `limits` may hold MemoryMax, TasksMax, RuntimeMaxUSec, CPUWeight,
    /// IOWeight, CPUQuotaPerSecUSec (t).
    /// Fails with org.freedesktop.DBus.Error.FileExists if that turn was started before.
    #[allow(clippy::too_many_arguments)] // a D-Bus method: its arguments are the interface's
    async fn start_turn(
        &self,
        chat_id: &str,
        turn_id: &str,
        request: OwnedFd,
        result: OwnedFd,
        limits: HashMap<String, OwnedVariant>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        let _g = self.activity.enter();
        self.start_turn_with(
            "StartTurn",
            chat_id,
            turn_id,
            request,
            result,
            limits,
            &[],
            &hdr,
            conn,
        )
        .await
    }

    /// StartTurn with the owner's grants for this one turn (SPEC C2): `grants` are (source chat
    /// id, path relative to its home); each file is opened beneath that home (no `..`, no
    /// symlink, regular files within the cap), copied for the turn's user and bound read-only at
    /// /var/lib/picortex/shared/<n> (n the grant's index). ReleaseTurn deletes the copies.
    #[allow(clippy::too_many_arguments)] // a D-Bus method: its arguments are the interface's
    async fn start_granted_turn(
        &self,
        chat_id: &str,
        turn_id: &str,
        request: OwnedFd,
        result: OwnedFd,
        limits: HashMap<String, OwnedVariant>,
        grants: Vec<(String, String)>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        let _g = self.activity.enter();
        self.start_turn_with(
            "StartGrantedTurn",
            chat_id,
            turn_id,
            request,
            result,
            limits,
            &grants,
            &hdr,
            conn,
        )
        .await
    }

    /// Copy `path` (relative to `source_chat`'s home) into `dest_chat`'s `inbox/` (SPEC C3): the
    /// source opened beneath its home with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), a
    /// regular file within the cap; the copy the destination user's, 0600, never overwriting.
    /// Returns (path relative to the destination home, sha256 hex, size).
    async fn import_file(
        &self,
        source_chat: &str,
        path: &str,
        dest_chat: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<(String, String, u64)> {
        let _g = self.activity.enter();
        const OP: &str = "ImportFile";
        let (src, dst) = (ChatId::parse(source_chat), ChatId::parse(dest_chat));
        let shown_src = shown(&src, ChatId::as_str);
        let caller = authorize(conn, &hdr, OP, actions::SHARE_FILE, shown_src, "").await?;
        let src = src.map_err(|e| bad_input(OP, &caller, "", "", e.to_string()))?;
        let dst = dst.map_err(|e| bad_input(OP, &caller, src.as_str(), "", e.to_string()))?;
        picortex_proto::consent::check_relative_path(path)
            .map_err(|e| bad_input(OP, &caller, src.as_str(), "", e))?;
        if src == dst {
            return Err(bad_input(
                OP,
                &caller,
                src.as_str(),
                "",
                "source and destination are the same chat".into(),
            ));
        }
        // Both homes stay put (no archive or removal) while the copy runs.
        let (first, second) = if src.as_str() < dst.as_str() {
            (&src, &dst)
        } else {
            (&dst, &src)
        };
        let _l1 = self.chats.lock(first).await;
        let _l2 = self.chats.lock(second).await;
        let (s, d, p) = (src.clone(), dst.clone(), path.to_owned());
        let r = tokio::task::spawn_blocking(move || {
            let from = crate::share::account_of(&s)?;
            let to = crate::share::account_of(&d)?;
            crate::share::import(&from, &p, &to)
        })
        .await
        .map_err(|e| fdo::Error::Failed(e.to_string()))?;
        match r {
            Ok(dep) => {
                let rel = dep.rel_path.display().to_string();
                audit::record(
                    OP,
                    &caller,
                    src.as_str(),
                    "",
                    "ok",
                    &format!(
                        "{path} -> chat {dst} {rel} sha256 {} size {}",
                        dep.sha256, dep.size
                    ),
                );
                Ok((rel, dep.sha256, dep.size))
            }
            Err(e @ crate::share::ShareError::Refused(_)) => {
                audit::record(
                    OP,
                    &caller,
                    src.as_str(),
                    "",
                    "refused",
                    &format!("{path}: {e}"),
                );
                Err(fdo::Error::AccessDenied(e.to_string()))
            }
            Err(e) => {
                audit::record(
                    OP,
                    &caller,
                    src.as_str(),
                    "",
                    "failed",
                    &format!("{path}: {e}"),
                );
                Err(fdo::Error::Failed(e.to_string()))
            }
        }
    }

    /// Copy `file` into the chat's `inbox/` (see the proxy's doc in picortex-proto). Authorised
    /// as StartTurn is: putting a person's media where the chat's next turn reads it.
    async fn deposit_inbox(
        &self,
        chat_id: &str,
        name_hint: &str,
        file: OwnedFd,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<(String, String, u64)> {
        let _g = self.activity.enter();
        const OP: &str = "DepositInbox";
        let chat = ChatId::parse(chat_id);
        let shown_chat = shown(&chat, ChatId::as_str);
        let caller = authorize(conn, &hdr, OP, actions::START_TURN, shown_chat, "").await?;
        let chat = chat.map_err(|e| bad_input(OP, &caller, "", "", e.to_string()))?;
        if name_hint.len() > 1024 || name_hint.contains('\0') {
            return Err(bad_input(
                OP,
                &caller,
                chat.as_str(),
                "",
                "bad name hint".into(),
            ));
        }
        let file: std::os::fd::OwnedFd = file.into();
        // Only a regular file (a memfd or an unlinked temporary file of the gateway's): never a
        // pipe or socket the helper could block on, never a directory.
        let st = nix::sys::stat::fstat(&file)
            .map_err(|e| bad_input(OP, &caller, chat.as_str(), "", format!("fstat: {e}")))?;
        if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
            return Err(bad_input(
                OP,
                &caller,
                chat.as_str(),
                "",
                "the file must be a regular file".into(),
            ));
        }
        let _chat_lock = self.chats.lock(&chat).await;
        let (c, hint) = (chat.clone(), name_hint.to_owned());
        let r = tokio::task::spawn_blocking(move || -> Result<crate::inbox::Deposited, String> {
            let tag = users::existing_tag(&c)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("chat {c} is not provisioned; call EnsureChat first"))?;
            let acct = users::account(&tag).map_err(|e| e.to_string())?;
            let mut f = std::fs::File::from(file);
            // pread from 0: the offset of the gateway's descriptor is shared and not ours.
            let mut src = PositionedReader {
                file: &mut f,
                at: 0,
            };
            crate::inbox::deposit(
                std::path::Path::new(&acct.home),
                acct.uid,
                acct.gid,
                &hint,
                &mut src,
                picortex_proto::bus::INBOX_MAX_BYTES,
            )
            .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| fdo::Error::Failed(e.to_string()))?;
        match r {
            Ok(dep) => {
                let rel = dep.rel_path.display().to_string();
                audit::record(
                    OP,
                    &caller,
                    chat.as_str(),
                    "",
                    "ok",
                    &format!("{rel} sha256 {} size {}", dep.sha256, dep.size),
                );
                Ok((rel, dep.sha256, dep.size))
            }
            Err(e) => {
                audit::record(OP, &caller, chat.as_str(), "", "failed", &e);
                Err(fdo::Error::Failed(e))
            }
        }
    }

    /// Copies of the sendable files in the chat's `outbox/` (src/outfiles.rs). Authorised as
    /// StartTurn is.
    #[allow(clippy::type_complexity)]
    async fn collect_outbox(
        &self,
        chat_id: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<(
        Vec<(String, String, u64, String, OwnedFd)>,
        Vec<(String, String)>,
    )> {
        let _g = self.activity.enter();
        const OP: &str = "CollectOutbox";
        let chat = ChatId::parse(chat_id);
        let shown_chat = shown(&chat, ChatId::as_str);
        let caller = authorize(conn, &hdr, OP, actions::START_TURN, shown_chat, "").await?;
        let chat = chat.map_err(|e| bad_input(OP, &caller, "", "", e.to_string()))?;
        let _chat_lock = self.chats.lock(&chat).await;
        let c = chat.clone();
        let r =
            tokio::task::spawn_blocking(move || -> Result<crate::outfiles::Collected, String> {
                let tag = users::existing_tag(&c)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("chat {c} is not provisioned"))?;
                let acct = users::account(&tag).map_err(|e| e.to_string())?;
                crate::outfiles::collect(
                    std::path::Path::new(&acct.home),
                    acct.uid,
                    picortex_proto::bus::INBOX_MAX_BYTES,
                )
            })
            .await
            .map_err(|e| fdo::Error::Failed(e.to_string()))?;
        match r {
            Ok(col) => {
                let names: Vec<String> = col
                    .files
                    .iter()
                    .map(|f| format!("{} ({} bytes, sha256 {})", f.name, f.size, f.sha256))
                    .chain(
                        col.refused
                            .iter()
                            .map(|(n, why)| format!("{n} refused: {why}")),
                    )
                    .collect();
                audit::record(OP, &caller, chat.as_str(), "", "ok", &names.join("; "));
                let files = col
                    .files
                    .into_iter()
                    .map(|f| (f.name, f.mime, f.size, f.sha256, OwnedFd::from(f.copy)))
                    .collect();
                Ok((files, col.refused))
            }
            Err(e) => {
                audit::record(OP, &caller, chat.as_str(), "", "failed", &e);
                Err(fdo::Error::Failed(e))
            }
        }
    }

    /// Remove recorded files from the chat's `outbox/` (src/outfiles.rs).
    async fn clear_outbox(
        &self,
        chat_id: &str,
        done: Vec<(String, String)>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<u32> {
        let _g = self.activity.enter();
        const OP: &str = "ClearOutbox";
        let chat = ChatId::parse(chat_id);
        let shown_chat = shown(&chat, ChatId::as_str);
        let caller = authorize(conn, &hdr, OP, actions::START_TURN, shown_chat, "").await?;
        let chat = chat.map_err(|e| bad_input(OP, &caller, "", "", e.to_string()))?;
        if done.len() > crate::outfiles::MAX_FILES * 4 {
            return Err(bad_input(
                OP,
                &caller,
                chat.as_str(),
                "",
                "too many names".into(),
            ));
        }
        let _chat_lock = self.chats.lock(&chat).await;
        let c = chat.clone();
        let d = done.clone();
        let r = tokio::task::spawn_blocking(move || -> Result<u32, String> {
            let tag = users::existing_tag(&c)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("chat {c} is not provisioned"))?;
            let acct = users::account(&tag).map_err(|e| e.to_string())?;
            crate::outfiles::clear(std::path::Path::new(&acct.home), acct.uid, &d)
        })
        .await
        .map_err(|e| fdo::Error::Failed(e.to_string()))?;
        match r {
            Ok(n) => {
                let names: Vec<&str> = done.iter().map(|(n, _)| n.as_str()).collect();
                audit::record(
                    OP,
                    &caller,
                    chat.as_str(),
                    "",
                    "ok",
                    &format!("removed {n} of {}", names.join(", ")),
                );
                Ok(n)
            }
            Err(e) => {
                audit::record(OP, &caller, chat.as_str(), "", "failed", &e);
                Err(fdo::Error::Failed(e))
            }
        }
    }

    /// Stop and forget a finished turn's unit.
    async fn release_turn(
        &self,
        turn_id: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<()> {
        let _g = self.activity.enter();
        let turn = TurnId::parse(turn_id);
        let shown_turn = shown(&turn, TurnId::as_str);
        let caller = authorize(conn, &hdr, RELEASE, actions::START_TURN, "", shown_turn).await?;
        release_authorized(&caller, turn, "", conn).await
    }

    /// ReleaseTurn, then StartTurn, in one call and under one authorisation (both are
    /// `start-turn`): how the gateway lets an answered turn's unit go as it starts the chat's
    /// next one, at half the polkit checks and bus round trips of two calls. Each part is
    /// audited under its own name; the release comes first and its failure does not stop the
    /// start (the gateway releases again, which is idempotent, when this call fails).
    /// Returns the started unit's name, as StartTurn does.
    #[allow(clippy::too_many_arguments)] // a D-Bus method: its arguments are the interface's
    async fn release_and_start_turn(
        &self,
        release_turn_id: &str,
        chat_id: &str,
        turn_id: &str,
        request: OwnedFd,
        result: OwnedFd,
        limits: HashMap<String, OwnedVariant>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        let _g = self.activity.enter();
        const OP: &str = "ReleaseAndStartTurn";
        let old = TurnId::parse(release_turn_id);
        let (chat, turn) = (ChatId::parse(chat_id), TurnId::parse(turn_id));
        let (shown_chat, shown_turn) = (shown(&chat, ChatId::as_str), shown(&turn, TurnId::as_str));
        let caller = authorize(conn, &hdr, OP, actions::START_TURN, shown_chat, shown_turn).await?;
        let with = format!("in {OP}, which starts turn {shown_turn}");
        if let Err(e) = release_authorized(&caller, old, &with, conn).await {
            tracing::warn!(error = %e, "the release part of {OP} failed; starting all the same");
        }
        self.start_authorized(
            "StartTurn",
            &caller,
            chat,
            turn,
            request,
            result,
            limits,
            &[],
            conn,
        )
        .await
    }

    /// Archive an idle chat (home tarred into the helper's state directory and removed, user
    /// locked); its next turn restores it. Returns the archive's path.
    async fn archive_chat(
        &self,
        chat_id: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        let _g = self.activity.enter();
        self.lifecycle("ArchiveChat", chat_id, &hdr, conn, |a| {
            crate::archive::archive(a).map(Some)
        })
        .await
    }

    /// Archive the chat if it has a home, then delete its user. Returns the archive's path.
    async fn remove_chat(
        &self,
        chat_id: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        let _g = self.activity.enter();
        self.lifecycle("RemoveChat", chat_id, &hdr, conn, crate::archive::remove)
            .await
    }

    /// The helper's version.
    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }
}

/// Reads a file from a given offset with pread, leaving the descriptor's shared offset alone.
struct PositionedReader<'a> {
    file: &'a mut std::fs::File,
    at: u64,
}

impl std::io::Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}
