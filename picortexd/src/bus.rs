//! The gateway's view of the system bus: the root helper (`org.picortex.Provision1`, through the
//! shared proxy) and systemd itself, which it reads but never commands. The gateway learns that a
//! turn ended by watching the unit's state on systemd's bus API (read-only, allowed to any user),
//! and reads the outcome from the unit, which stays loaded until the gateway releases it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

use futures_util::StreamExt;
use picortex_proto::bus::ProvisionProxy;
use picortex_proto::ids::unit_object_path;
use tokio::sync::OnceCell;
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
/// the bus is down, and connects again on the next use.
pub struct Bus {
    conn: OnceCell<Connection>,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self {
            conn: OnceCell::new(),
        }
    }

    async fn conn(&self) -> Result<&Connection, BusError> {
        self.conn
            .get_or_try_init(|| async {
                let c = Connection::system()
                    .await
                    .map_err(|e| BusError::Unavailable(e.to_string()))?;
                // PID 1 emits unit signals only to subscribed clients.
                let mgr = ManagerProxy::new(&c)
                    .await
                    .map_err(|e| BusError::Systemd(e.to_string()))?;
                if let Err(e) = mgr.subscribe().await {
                    tracing::debug!(error = %e, "systemd Subscribe");
                }
                Ok(c)
            })
            .await
    }

    pub async fn connect(&self) -> Result<(), BusError> {
        self.conn().await.map(|_| ())
    }

    /// True if the bus daemon answers.
    pub async fn ok(&self) -> bool {
        match self.conn.get() {
            Some(c) => match zbus::fdo::DBusProxy::new(c).await {
                Ok(p) => p.get_id().await.is_ok(),
                Err(_) => false,
            },
            None => self.connect().await.is_ok(),
        }
    }

    async fn provision(&self) -> Result<ProvisionProxy<'static>, BusError> {
        let c = self.conn().await?.clone();
        ProvisionProxy::new(&c).await.map_err(helper_err)
    }

    pub async fn ensure_chat(
        &self,
        chat_id: &str,
    ) -> Result<(String, u32, String, String), BusError> {
        self.provision()
            .await?
            .ensure_chat(chat_id)
            .await
            .map_err(helper_err)
    }

    pub async fn start_turn(
        &self,
        chat_id: &str,
        turn_id: &str,
        request: OwnedFd,
        result: OwnedFd,
        limits: &[(&'static str, u64)],
    ) -> Result<Started, BusError> {
        let p = self.provision().await?;
        let limits: HashMap<&str, Variant<'_>> = limits
            .iter()
            .map(|(k, v)| (*k, Variant::from(*v)))
            .collect();
        match p
            .start_turn(chat_id, turn_id, request.into(), result.into(), limits)
            .await
            .map_err(helper_err)
        {
            Ok(unit) => Ok(Started::Started(unit)),
            Err(BusError::Exists(_)) => Ok(Started::AlreadyRunning(
                picortex_proto::ids::TurnId::parse(turn_id)
                    .map(|t| t.unit_name())
                    .unwrap_or_default(),
            )),
            Err(e) => Err(e),
        }
    }

    pub async fn archive_chat(&self, chat_id: &str) -> Result<String, BusError> {
        self.provision()
            .await?
            .archive_chat(chat_id)
            .await
            .map_err(helper_err)
    }

    pub async fn release_turn(&self, turn_id: &str) -> Result<(), BusError> {
        self.provision()
            .await?
            .release_turn(turn_id)
            .await
            .map_err(helper_err)
    }

    /// Whether systemd has the unit loaded.
    pub async fn unit_exists(&self, unit: &str) -> Result<bool, BusError> {
        let c = self.conn().await?;
        let mgr = ManagerProxy::new(c)
            .await
            .map_err(|e| BusError::Systemd(e.to_string()))?;
        match mgr.get_unit(unit.to_owned()).await {
            Ok(_) => Ok(true),
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                Ok(false)
            }
            Err(e) => Err(BusError::Systemd(e.to_string())),
        }
    }

    /// Every turn unit systemd has loaded (running, or kept after its end until released).
    pub async fn turn_units(&self) -> Result<Vec<String>, BusError> {
        let c = self.conn().await?;
        let mgr = ManagerProxy::new(c)
            .await
            .map_err(|e| BusError::Systemd(e.to_string()))?;
        let units = mgr
            .list_units_by_patterns(vec![], vec!["picortex-turn-*.service".to_owned()])
            .await
            .map_err(|e| BusError::Systemd(e.to_string()))?;
        Ok(units.into_iter().map(|u| u.0).collect())
    }

    /// Wait until the unit's main process is done (active+exited under RemainAfterExit, or
    /// failed, or inactive with no job pending) and return how it ended. Listens for
    /// PropertiesChanged on the unit, re-reading the state on each one, with a slow poll as a
    /// safety net; `give_up` bounds the wait.
    pub async fn wait_unit(&self, unit: &str, give_up: Duration) -> Result<UnitEnd, BusError> {
        let c = self.conn().await?;
        let path = unit_object_path(unit);
        let sys = |e: zbus::Error| BusError::Systemd(e.to_string());
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
        let deadline = tokio::time::Instant::now() + give_up;
        loop {
            let state = unit_p.active_state().await.map_err(sys)?;
            let sub = unit_p.sub_state().await.map_err(sys)?;
            let job = unit_p.job().await.map_err(sys)?;
            let done = (state == "active" && sub == "exited")
                || state == "failed"
                || (state == "inactive" && job.0 == 0);
            if done {
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
                _ = changes.next() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(BusError::Systemd(format!("{unit} still {state}/{sub} after {}s", give_up.as_secs())));
                }
            }
        }
    }
}
