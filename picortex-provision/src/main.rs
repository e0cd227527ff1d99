//! picortex-provision: the root helper. Started by the system bus on the first call to
//! `org.picortex.Provision1`, it creates chat users and homes and starts turn units, for callers
//! that polkit authorises, auditing every call to the journal. It exits when idle.
//!
//! Kept small and suspicious on purpose (the model is kanidm's `kanidm_unixd_tasks`): it refuses
//! to run unless root, is not dumpable, and re-validates every input the gateway already checked.

mod archive;
mod audit;
mod authz;
mod config;
mod disk;
// The whole `[sandbox]` table; its connection decisions (`refusal`) are picortex-egress's.
#[allow(dead_code)]
mod egress;
mod failpoint;
mod inbox;
mod limits;
mod outfiles;
mod service;
mod share;
mod units;
mod userdb;
mod users;
mod view;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use picortex_proto::bus::{PROVISION_NAME, PROVISION_PATH};

/// How long the helper stays without a call before it releases its name and exits.
const DEFAULT_IDLE: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: picortex-provision [--idle-timeout SECONDS]
  The picortex root helper: owns org.picortex.Provision1 on the system bus, creates chat users
  and homes, starts and stops turn units, archives chats. The bus starts it
  (picortex-provision.service, D-Bus activation) and every call is authorised by polkit
  (org.picortex.provision.*); it exits after --idle-timeout seconds without a call (default 30).
  It is not meant to be run by hand. It reads [sandbox] of /etc/picortex/picortexd.toml at each
  turn start (picortex-egress applies its egress policy); `picortexd --check-config` checks that
  table with the same rules.
  --version  print the version";

fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return Ok(());
        }
        Some("--version") => {
            println!("picortex-provision {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        _ => {}
    }
    if !nix::unistd::geteuid().is_root() || nix::unistd::getegid().as_raw() != 0 {
        bail!("picortex-provision must run as root (it is started by the system bus; see picortex-provision.service)");
    }
    // No core dumps of a root process that handles other users' paths.
    nix::sys::prctl::set_dumpable(false).context("prctl(PR_SET_DUMPABLE)")?;
    // Everything it creates is private unless it says otherwise.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    audit::init();

    let idle = parse_idle(std::env::args().skip(1))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?
        .block_on(serve(idle))
}

fn parse_idle(mut args: impl Iterator<Item = String>) -> anyhow::Result<Duration> {
    let mut idle = DEFAULT_IDLE;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--idle-timeout" => {
                let v = args.next().context("--idle-timeout needs seconds")?;
                idle = Duration::from_secs(
                    v.parse()
                        .context("--idle-timeout: not a number of seconds")?,
                );
            }
            "--version" => {
                println!("picortex-provision {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other => bail!(
                "unknown argument {other:?} (usage: picortex-provision [--idle-timeout SECONDS])"
            ),
        }
    }
    Ok(idle)
}

async fn serve(idle: Duration) -> anyhow::Result<()> {
    let activity = Arc::new(service::Activity::default());
    let conn = zbus::connection::Builder::system()
        .serve_at(PROVISION_PATH, service::Provision::new(activity.clone()))
        .name(PROVISION_NAME)
        .build()
        .await
        .context("connecting to the system bus and taking org.picortex.Provision1")?;
    tracing::info!(idle_s = idle.as_secs(), "serving {PROVISION_NAME}");

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if activity.idle_for() >= idle {
                    break;
                }
            }
            _ = terminate() => {
                tracing::info!("terminating on signal");
                break;
            }
        }
    }
    // Give up the name first so the bus queues (and activates us again for) any new call, then
    // finish the calls already in flight.
    let _ = conn.release_name(PROVISION_NAME).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while activity.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!("idle, exiting");
    Ok(())
}

async fn terminate() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}
