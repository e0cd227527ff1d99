//! After the helper changes the user database, running turns get their view of it back.
//!
//! A turn sees its own `/etc/passwd` and `/etc/group` (root, nobody and its chat's user; see
//! `view`), bound over the real files in its mount namespace. useradd (a new chat) and userdel
//! (a removed one) replace those files by a rename, and the kernel detaches every mount on a
//! replaced file, in every namespace: the real files, with every chat's user, show through in
//! each turn running at that moment, and in each spare, which may wait minutes for its turn.
//! So after each such change the helper binds every running turn's view back in with systemd's
//! `BindMountUnit`. Between the rename and that bind (milliseconds) a turn reading the file
//! could see the one name that changed. A turn whose view cannot be put back is stopped: a
//! spare is only waiting, and a turn that would go on seeing every chat's user is not let run.

use picortex_proto::ids::ChatTag;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy};

/// The user database's files and where each turn's view of it is bound.
const USER_DB: [(&str, &str); 2] = [("passwd", "/etc/passwd"), ("group", "/etc/group")];

/// Bind each running turn's view of the user database back over the real files (see the module
/// doc). Logs what it did; never fails its caller, whose change is made either way.
pub async fn user_db_views(conn: &zbus::Connection, why: &str) {
    let mgr = match ManagerProxy::new(conn).await {
        Ok(m) => m,
        Err(e) => {
            return tracing::error!(error = %e, "cannot reach systemd to put turns' user database views back")
        }
    };
    let units = match mgr
        .list_units_by_patterns(
            vec!["active".into(), "activating".into(), "reloading".into()],
            vec!["picortex-turn-*.service".into()],
        )
        .await
    {
        Ok(u) => u,
        Err(e) => {
            return tracing::error!(error = %e, "cannot list turn units to put their user database views back")
        }
    };
    let (mut restored, mut stopped) = (0usize, 0usize);
    for u in units {
        let (unit, path) = (u.0, u.6);
        // One still building its sandbox may have built it before the change: bind it once it
        // runs. (Its own start binds a fresh view if it builds it after.)
        if !wait_running(conn, &path).await {
            continue;
        }
        match reattach_one(conn, &mgr, &unit, path.clone()).await {
            Ok(()) => restored += 1,
            // One that ended meanwhile has nothing left to see with.
            Err(_) if !wait_running(conn, &path).await => {}
            Err(e) => {
                tracing::warn!(unit = %unit, error = %e, "could not put the turn's user database view back; stopping the turn so it cannot see every chat's user");
                match mgr.stop_unit(unit.clone(), "replace".into()).await {
                    Ok(_) => stopped += 1,
                    Err(e) => tracing::error!(unit = %unit, error = %e, "could not stop the turn"),
                }
            }
        }
    }
    if restored + stopped > 0 {
        tracing::info!(
            restored,
            stopped,
            "turns' user database views put back after {why}"
        );
    }
}

/// Whether the unit's main process runs (waiting up to 5 s while the unit is being started).
async fn wait_running(conn: &zbus::Connection, path: &zbus::OwnedObjectPath) -> bool {
    let Ok(unit) = zbus_systemd::systemd1::UnitProxy::builder(conn)
        .path(path.clone())
        .build()
        .await
    else {
        return false;
    };
    for _ in 0..50 {
        match unit.sub_state().await.as_deref() {
            Ok("running") => return true,
            Ok("start") | Ok("start-pre") | Ok("start-post") => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            _ => return false,
        }
    }
    false
}

async fn reattach_one(
    conn: &zbus::Connection,
    mgr: &ManagerProxy<'_>,
    unit: &str,
    path: zbus::OwnedObjectPath,
) -> Result<(), String> {
    let svc = ServiceProxy::builder(conn)
        .path(path)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let user = svc.user().await.map_err(|e| format!("its User: {e}"))?;
    let tag = ChatTag::from_user_name(&user).map_err(|e| format!("its User {user:?}: {e}"))?;
    let dir = crate::view::user_db_dir(&tag);
    for (file, target) in USER_DB {
        let source = dir.join(file);
        if !source.is_file() {
            return Err(format!("no view at {}", source.display()));
        }
        mgr.bind_mount_unit(
            unit.to_owned(),
            source.display().to_string(),
            target.to_owned(),
            true,
            false,
        )
        .await
        .map_err(|e| format!("BindMountUnit {target}: {e}"))?;
    }
    Ok(())
}
