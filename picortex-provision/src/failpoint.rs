//! Crash points for the fault tests (a helper killed mid-provisioning, mid-archive). Inert unless
//! the service runs with `PICORTEX_PROVISION_FAILPOINT=<name>` (a test drop-in, which only root
//! can write); then the first time execution reaches that point the helper SIGKILLs itself, after
//! leaving a marker so the next instance does not crash again.

const MARKER: &str = "/var/lib/picortex-provision/failpoint.fired";

/// Die here, if this is the armed point and it has not fired yet.
pub fn hit(name: &str) {
    let armed = std::env::var("PICORTEX_PROVISION_FAILPOINT").unwrap_or_default();
    if armed.is_empty() || armed != name || std::path::Path::new(MARKER).exists() {
        return;
    }
    if std::fs::write(MARKER, name).is_err() {
        return;
    }
    tracing::warn!(failpoint = %name, "crash point reached: SIGKILL");
    let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
}
