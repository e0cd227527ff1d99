//! Crash points for the crash-safety tests (issue: "nothing lost on crash"). Inert unless the
//! service runs with `PICORTEX_FAILPOINT=<name>` in its environment (a test drop-in); then the
//! first time execution reaches that point, picortexd kills itself with SIGKILL — exactly what
//! `kill -9` does — after leaving a marker `<state dir>/failpoint.fired` so that the restarted
//! process does not crash again. Production never sets the variable.

use std::path::PathBuf;
use std::sync::OnceLock;

static ARMED: OnceLock<Option<(String, PathBuf)>> = OnceLock::new();

/// Read the environment once, at start-up.
pub fn init(state_dir: &std::path::Path) {
    let armed = std::env::var("PICORTEX_FAILPOINT")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|name| (name, state_dir.join("failpoint.fired")));
    if let Some((name, _)) = &armed {
        tracing::warn!(failpoint = %name, "crash point armed (test configuration)");
    }
    let _ = ARMED.set(armed);
}

/// Die here every time `cond` holds, if this is the armed point: a fault the process meets again
/// after each restart (a webhook that crashes it, for the poison tests).
pub fn hit_every_time(name: &str, cond: bool) {
    let Some(Some((armed, _))) = ARMED.get() else {
        return;
    };
    if armed == name && cond {
        tracing::warn!(failpoint = %name, "crash point reached (every time): SIGKILL");
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Die here, if this is the armed point and it has not fired yet.
pub fn hit(name: &str) {
    let Some(Some((armed, marker))) = ARMED.get() else {
        return;
    };
    if armed != name || marker.exists() {
        return;
    }
    if std::fs::write(marker, name).is_err() {
        return;
    }
    tracing::warn!(failpoint = %name, "crash point reached: SIGKILL");
    let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
}
