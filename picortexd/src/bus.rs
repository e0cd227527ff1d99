//! The gateway's view of the system bus: the root helper (`org.picortex.Provision1`, through the
//! shared proxy) and systemd itself, which it reads but never commands; and the gateway's own
//! `org.picortex.Gateway1` (`gateway1`), served on every connection, the name acquired again
//! whenever the connection is made again (after the bus daemon restarted). The gateway learns that a
//! turn ended by watching the unit's state on systemd's bus API (read-only, allowed to any user),
//! and reads the outcome from the unit, which stays loaded until the gateway releases it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

/// The longest a Gateway1 signal may hold up the turn that emits it.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(2);

use futures_util::StreamExt;
use picortex_proto::bus::ProvisionProxy;
use picortex_proto::ids::unit_object_path;
use tokio::sync::Mutex;
use zbus::proxy::CacheProperties;
use zbus::{Connection, Variant};
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("system bus unavailable: {0}")]
    Unavailable(String),
    #[error("the provisioning helper refused: {0}")]
    Denied(String),
    #[error("the provisioning helper failed: {0}")]
    Helper(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("systemd: {0}")]
    Systemd(String),
}

/// An error of a call to systemd: the connection being gone is the bus being unavailable.
fn sys_err(e: zbus::Error) -> BusError {
    match e {
        zbus::Error::InputOutput(_) => BusError::Unavailable(e.to_string()),
        e => BusError::Systemd(e.to_string()),
    }
}

fn helper_err(e: zbus::Error) -> BusError {
    // The helper answers only AccessDenied, InvalidArgs, FileExists or Failed; any other error
    // comes from the bus (cannot activate it, no reply, gone) and means it is not available.
    // zbus reports the standard org.freedesktop.DBus.Error.* names as Error::FDO.
    match e {
        zbus::Error::FDO(f) => match *f {
            zbus::fdo::Error::AccessDenied(m) => BusError::Denied(m),
            zbus::fdo::Error::Failed(m) | zbus::fdo::Error::InvalidArgs(m) => BusError::Helper(m),
            zbus::fdo::Error::FileExists(m) => BusError::Exists(m),
            other => BusError::Unavailable(other.to_string()),
        },
        zbus::Error::MethodError(name, msg, _) => {
            BusError::Unavailable(format!("{name}: {}", msg.unwrap_or_default()))
        }
        other => BusError::Unavailable(other.to_string()),
    }
}

/// How a turn unit ended, as systemd tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitEnd {
    pub active_state: String,
    /// systemd's `Result=`: success, exit-code, signal, timeout, oom-kill, core-dump, …
    pub result: String,
    /// 1 exited, 2 killed, 3 dumped.
    pub exec_main_code: i32,
    pub exec_main_status: i32,
}

pub enum Started {
    Started(String),
    /// The unit was already started (by us, before a restart); watch it.
    AlreadyRunning(String),
}

/// A lazily connected system bus: the gateway keeps serving webhooks (and queueing turns) while
/// the bus is down, and connects again on the next use. A connection found dead (the bus daemon
/// restarted) is dropped, so the next call — or the watchdog's next check — connects afresh
/// instead of failing every turn until someone restarts the gateway.
pub struct Bus {
    conn: Mutex<Option<Connection>>,
    /// What the gateway serves on each connection.
    gateway: std::sync::OnceLock<crate::gateway1::Gateway1>,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self {
            conn: Mutex::new(None),
            gateway: std::sync::OnceLock::new(),
        }
    }

    /// Serve `org.picortex.Gateway1` on this connection and every later one.
    pub fn serve(&self, gw: crate::gateway1::Gateway1) {
        let _ = self.gateway.set(gw);
    }

    async fn serve_on(&self, c: &Connection) {
        use picortex_proto::gateway::GATEWAY_NAME;
        use zbus::fdo::{RequestNameFlags, RequestNameReply};
        let Some(gw) = self.gateway.get() else {
            return;
        };
        if let Err(e) = c
            .object_server()
            .at(crate::gateway1::PATH, gw.clone())
            .await
        {
            tracing::error!(error = %e, "cannot serve {GATEWAY_NAME}: {e}");
            return;
        }
        match c
            .request_name_with_flags(GATEWAY_NAME, RequestNameFlags::DO_NOT_QUEUE)
            .await
        {
            Ok(RequestNameReply::PrimaryOwner) | Ok(RequestNameReply::AlreadyOwner) => {
                tracing::info!("serving {GATEWAY_NAME} on the system bus");
            }
            Ok(r) => tracing::warn!(
                "{GATEWAY_NAME} is owned by another process ({r:?}); picortexctl talks to that one"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "cannot own {GATEWAY_NAME}: {e} (is units/org.picortex.Gateway1.conf installed in /usr/share/dbus-1/system.d, and the bus reloaded?)"
            ),
        }
    }

    /// The connection now, if there is one (signals are not worth connecting for).
    async fn current(&self) -> Option<Connection> {
        self.conn.lock().await.clone()
    }

    /// Signals of `org.picortex.Gateway1`; lost, harmlessly, while the bus is down. Never more
    /// than `SIGNAL_TIMEOUT` of a turn's way: they come before its log line and the release of
    /// its unit.
    pub async fn turn_started(&self, chat: &str, turn: &str, kind: &str) {
        self.emit("TurnStarted", |e| async move {
            crate::gateway1::Gateway1::turn_started(&e, chat, turn, kind).await
        })
        .await
    }

    pub async fn turn_finished(&self, chat: &str, turn: &str, outcome: &str, cost_usd: f64) {
        self.emit("TurnFinished", |e| async move {
            crate::gateway1::Gateway1::turn_finished(&e, chat, turn, outcome, cost_usd).await
        })
        .await
    }

    pub async fn pending_added(&self, number: i64, chat: &str) {
        self.emit("PendingAdded", |e| async move {
            crate::gateway1::Gateway1::pending_added(&e, number, chat).await
        })
        .await
    }

    async fn emit<F, Fut>(&self, name: &str, send: F)
    where
        F: FnOnce(zbus::object_server::SignalEmitter<'static>) -> Fut,
        Fut: std::future::Future<Output = zbus::Result<()>>,
    {
        let sent = tokio::time::timeout(SIGNAL_TIMEOUT, async {
            let c = self.current().await?;
            let e = zbus::object_server::SignalEmitter::new(&c, crate::gateway1::PATH).ok()?;
            send(e.into_owned()).await.ok()
        })
        .await;
        if sent.is_err() {
            tracing::warn!(
                signal = name,
                "the {name} signal was not sent within {SIGNAL_TIMEOUT:?}; going on without it"
            );
        }
    }

    async fn conn(&self) -> Result<Connection, BusError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Connection::system()
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        // PID 1 emits unit signals only to subscribed clients.
        let mgr = ManagerProxy::new(&c).await.map_err(sys_err)?;
        if let Err(e) = mgr.subscribe().await {
            tracing::debug!(error = %e, "systemd Subscribe");
        }
        tracing::info!("connected to the system bus");
        *slot = Some(c.clone());
        drop(slot);
        self.serve_on(&c).await;
        Ok(c)
    }

    /// Drop the connection after an error that says the bus is gone; the next use reconnects.
    async fn check<T>(&self, r: Result<T, BusError>) -> Result<T, BusError> {
        if let Err(BusError::Unavailable(e)) = &r {
            if self.conn.lock().await.take().is_some() {
                tracing::warn!(error = %e, "system bus connection lost; reconnecting on next use");
            }
        }
        r
    }

    pub async fn connect(&self) -> Result<(), BusError> {
        let r = self.conn().await.map(|_| ());
        self.check(r).await
    }

    /// True if the bus daemon answers (connecting again if the old connection died).
    pub async fn ok(&self) -> bool {
        let alive = match self.conn.lock().await.clone() {
            Some(c) => match zbus::fdo::DBusProxy::new(&c).await {
                Ok(p) => p.get_id().await.is_ok(),
                Err(_) => false,
            },
            None => false,
        };
        if alive {
            return true;
        }
        let _ = self
            .check::<()>(Err(BusError::Unavailable(
                "the bus daemon does not answer".into(),
            )))
            .await;
        self.connect().await.is_ok()
    }

    async fn provision(&self) -> Result<ProvisionProxy<'static>, BusError> {
        let c = self.conn().await;
        let c = self.check(c).await?;
        let p = ProvisionProxy::new(&c).await.map_err(helper_err);
        self.check(p).await
    }

    pub async fn ensure_chat(
        &self,
        chat_id: &str,
    ) -> Result<(String, u32, String, String), BusError> {
        let r = self
            .provision()
            .await?
            .ensure_chat(chat_id)
            .await
            .map_err(helper_err);
        self.check(r).await
    }

    pub async fn start_turn(
        &self,
        chat_id: &str,
        turn_id: &str,
        request: OwnedFd,
        result: OwnedFd,
        limits: &[(&'static str, u64)],
    ) -> Result<Started, BusError> {
        self.start_granted_turn(chat_id, turn_id, request, result, limits, &[])
            .await
    }

    /// StartTurn, or StartGrantedTurn when the owner granted this turn files of other chats
    /// (SPEC C2): (source chat id, path relative to its home).
    pub async fn start_granted_turn(
        &self,
        chat_id: &str,
        turn_id: &str,
        request: OwnedFd,
        result: OwnedFd,
        limits: &[(&'static str, u64)],
        grants: &[(String, String)],
    ) -> Result<Started, BusError> {
        let p = self.provision().await?;
        let limits = limits_dict(limits);
        let r = if grants.is_empty() {
            p.start_turn(chat_id, turn_id, request.into(), result.into(), limits)
                .await
        } else {
            p.start_granted_turn(
                chat_id,
                turn_id,
                request.into(),
                result.into(),
                limits,
                grants.to_vec(),
            )
            .await
        }
        .map_err(helper_err);
        self.started(turn_id, r).await
    }

    /// ImportFile (SPEC C3): copy `path` of `source_chat`'s home into `dest_chat`'s inbox.
    /// Returns (path relative to the destination home, sha256, size).
    pub async fn import_file(
        &self,
        source_chat: &str,
        path: &str,
        dest_chat: &str,
    ) -> Result<(String, String, u64), BusError> {
        let r = self
            .provision()
            .await?
            .import_file(source_chat, path, dest_chat)
            .await
            .map_err(helper_err);
        self.check(r).await
    }

    /// Have the helper copy `file` into the chat's inbox (picortexd/src/media).
    /// Returns (path relative to the home, sha256 hex, size).
    pub async fn deposit_inbox(
        &self,
        chat_id: &str,
        name_hint: &str,
        file: OwnedFd,
    ) -> Result<(String, String, u64), BusError> {
        let r = self
            .provision()
            .await?
            .deposit_inbox(chat_id, name_hint, file.into())
            .await
            .map_err(helper_err);
        self.check(r).await
    }

    /// Copies of the sendable files in the chat's `outbox/` (picortexd/src/media/out.rs).
    #[allow(clippy::type_complexity)]
    pub async fn collect_outbox(
        &self,
        chat_id: &str,
    ) -> Result<
        (
            Vec<(String, String, u64, String, zbus::OwnedFd)>,
            Vec<(String, String)>,
        ),
        BusError,
    > {
        let r = self
            .provision()
            .await?
            .collect_outbox(chat_id)
            .await
            .map_err(helper_err);
        self.check(r).await
    }

    /// Remove recorded files from the chat's `outbox/`.
    pub async fn clear_outbox(
        &self,
        chat_id: &str,
        done: Vec<(String, String)>,
    ) -> Result<u32, BusError> {
        let r = self
            .provision()
            .await?
            .clear_outbox(chat_id, done)
            .await
            .map_err(helper_err);
        self.check(r).await
    }

    pub async fn archive_chat(&self, chat_id: &str) -> Result<String, BusError> {
        let r = self
            .provision()
            .await?
            .archive_chat(chat_id)
            .await
            .map_err(helper_err);
        self.check(r).await
    }

    pub async fn remove_chat(&self, chat_id: &str) -> Result<String, BusError> {
        let r = self
            .provision()
            .await?
            .remove_chat(chat_id)
            .await
            .map_err(helper_err);
        self.check(r).await
    }

    /// ReleaseAndStartTurn: let `release_turn_id`'s unit go and start `turn_id` (a spare, no
    /// grants) in one helper call, one polkit check.
    pub async fn release_and_start_turn(
        &self,
        release_turn_id: &str,
        chat_id: &str,
        turn_id: &str,
        request: OwnedFd,
        result: OwnedFd,
        limits: &[(&'static str, u64)],
    ) -> Result<Started, BusError> {
        let p = self.provision().await?;
        let limits = limits_dict(limits);
        let r = p
            .release_and_start_turn(
                release_turn_id,
                chat_id,
                turn_id,
                request.into(),
                result.into(),
                limits,
            )
            .await
            .map_err(helper_err);
        self.started(turn_id, r).await
    }

    /// A start's reply: the unit, or the unit of a turn that was started before.
    async fn started(
        &self,
        turn_id: &str,
        r: Result<String, BusError>,
    ) -> Result<Started, BusError> {
        match self.check(r).await {
            Ok(unit) => Ok(Started::Started(unit)),
            Err(BusError::Exists(_)) => Ok(Started::AlreadyRunning(
                picortex_proto::ids::TurnId::parse(turn_id)
                    .map(|t| t.unit_name())
                    .unwrap_or_default(),
            )),
            Err(e) => Err(e),
        }
    }

    pub async fn release_turn(&self, turn_id: &str) -> Result<(), BusError> {
        let r = self
            .provision()
            .await?
            .release_turn(turn_id)
            .await
            .map_err(helper_err);
        self.check(r).await
    }

    /// Whether systemd has the unit loaded.
    pub async fn unit_exists(&self, unit: &str) -> Result<bool, BusError> {
        let r = async {
            let c = self.conn().await?;
            let mgr = ManagerProxy::new(&c).await.map_err(sys_err)?;
            match mgr.get_unit(unit.to_owned()).await {
                Ok(_) => Ok(true),
                Err(zbus::Error::MethodError(name, _, _))
                    if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
                {
                    Ok(false)
                }
                Err(e) => Err(sys_err(e)),
            }
        }
        .await;
        self.check(r).await
    }

    /// Every turn unit systemd has loaded (running, or kept after its end until released).
    pub async fn turn_units(&self) -> Result<Vec<String>, BusError> {
        let r = async {
            let c = self.conn().await?;
            let mgr = ManagerProxy::new(&c).await.map_err(sys_err)?;
            let units = mgr
                .list_units_by_patterns(vec![], vec!["picortex-turn-*.service".to_owned()])
                .await
                .map_err(sys_err)?;
            Ok(units.into_iter().map(|u| u.0).collect())
        }
        .await;
        self.check(r).await
    }

    /// Wait until the unit's main process is done (active+exited under RemainAfterExit, or
    /// failed, or inactive with no job pending) and return how it ended. Listens for
    /// PropertiesChanged on the unit, re-reading the state on each one, with a slow poll as a
    /// safety net; `give_up` bounds the wait. The unit belongs to systemd, not to the bus: when
    /// the bus connection is lost midway, the wait goes on over a new one.
    pub async fn wait_unit(&self, unit: &str, give_up: Duration) -> Result<UnitEnd, BusError> {
        let deadline = tokio::time::Instant::now() + give_up;
        loop {
            let r = self.wait_unit_once(unit, deadline, give_up).await;
            match self.check(r).await {
                Err(BusError::Unavailable(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(unit, error = %e, "lost the bus while watching a turn unit; watching again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }

    async fn wait_unit_once(
        &self,
        unit: &str,
        deadline: tokio::time::Instant,
        give_up: Duration,
    ) -> Result<UnitEnd, BusError> {
        let c = self.conn().await?;
        let c = &c;
        let path = unit_object_path(unit);
        let sys = sys_err;
        let props = zbus::fdo::PropertiesProxy::builder(c)
            .destination("org.freedesktop.systemd1")
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(sys)?;
        let mut changes = props.receive_properties_changed().await.map_err(sys)?;
        let unit_p = UnitProxy::builder(c)
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(sys)?;
        loop {
            // As few round trips to PID 1 as the state needs: SubState only matters for an
            // active unit, the pending job only for an inactive one.
            let state = unit_p.active_state().await.map_err(sys)?;
            let sub = match state.as_str() {
                "active" => unit_p.sub_state().await.map_err(sys)?,
                _ => String::new(),
            };
            let idle = state == "inactive" && unit_p.job().await.map_err(sys)?.0 == 0;
            if unit_done(&state, &sub, idle) {
                let svc = ServiceProxy::builder(c)
                    .path(path)
                    .cache_properties(CacheProperties::No)
                    .build()
                    .await
                    .map_err(sys)?;
                return Ok(UnitEnd {
                    active_state: state,
                    result: svc.result().await.map_err(sys)?,
                    exec_main_code: svc.exec_main_code().await.map_err(sys)?,
                    exec_main_status: svc.exec_main_status().await.map_err(sys)?,
                });
            }
            tokio::select! {
                change = changes.next() => if change.is_none() {
                    return Err(BusError::Unavailable("the bus closed the unit's signal stream".into()));
                },
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(BusError::Systemd(format!("{unit} still {state}/{sub} after {}s", give_up.as_secs())));
                }
            }
        }
    }
}

/// StartTurn's `limits` dictionary.
fn limits_dict<'a>(limits: &[(&'a str, u64)]) -> HashMap<&'a str, Variant<'static>> {
    limits
        .iter()
        .map(|(k, v)| (*k, Variant::from(*v)))
        .collect()
}

/// Whether a turn unit's main process is done: active and exited (it is kept,
/// RemainAfterExit), failed, or inactive with no job pending (`idle`).
fn unit_done(state: &str, sub: &str, idle: bool) -> bool {
    (state == "active" && sub == "exited") || state == "failed" || (state == "inactive" && idle)
}

#[cfg(test)]
mod tests {
    use super::unit_done;

    #[test]
    fn a_unit_is_done_once_exited_failed_or_idle() {
        assert!(unit_done("active", "exited", false));
        assert!(!unit_done("active", "running", false));
        assert!(unit_done("failed", "", false));
        assert!(unit_done("inactive", "", true));
        assert!(!unit_done("inactive", "", false), "a start job is pending");
        assert!(!unit_done("activating", "", false));
        assert!(!unit_done("deactivating", "", false));
    }
}
