//! picortex-egress's process: arguments, logging, the socket systemd passes, the settings and
//! credential read as root, privileges dropped for good, then `picortex_egress::serve`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use picortex_egress::{serve, setup, Ctx};
use tracing_subscriber::prelude::*;

/// Threads resolving names at once (picortex-egress.service has TasksMax=64).
const MAX_LOOKUP_THREADS: usize = 16;

const USAGE: &str = "usage: picortex-egress
  The picortex turns' one way out: forwards the agent's API requests with the real credential
  (/etc/picortex/credentials/anthropic-api-key or claude-oauth-token) and opens CONNECT tunnels
  where [sandbox] egress of /etc/picortex/picortexd.toml allows. Started by
  picortex-egress.socket as root; it reads those files, becomes the picortex-egress user and
  serves chat users only. It exits after a minute without connections; restart it
  (`systemctl restart picortex-egress`) to apply a new configuration or credential at once.
  --version  print the version";

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PICORTEX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journal = (std::env::var_os("JOURNAL_STREAM").is_some()
        || std::env::var_os("INVOCATION_ID").is_some())
    .then(tracing_journald::layer)
    .and_then(Result::ok);
    match journal {
        Some(j) => tracing_subscriber::registry()
            .with(filter)
            .with(
                j.with_syslog_identifier("picortex-egress".into())
                    .with_field_prefix(Some("PICORTEX".into())),
            )
            .init(),
        None => tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}

fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return Ok(());
        }
        Some("--version") => {
            println!("picortex-egress {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Some(other) => bail!("unexpected argument {other:?}\n{USAGE}"),
        None => {}
    }
    init_logging();
    if !nix::unistd::geteuid().is_root() {
        bail!("picortex-egress must be started as root by picortex-egress.socket (it reads the agent's credential, then becomes the {} user)", setup::USER);
    }
    let listener = listenfd::ListenFd::from_env()
        .take_unix_listener(0)
        .context("taking the socket from systemd")?
        .with_context(|| {
            format!(
                "no socket passed: start picortex-egress through picortex-egress.socket ({})",
                picortex_proto::egress::SOCKET
            )
        })?;
    let settings = setup::load().map_err(anyhow::Error::msg)?;
    setup::drop_privileges().map_err(anyhow::Error::msg)?;
    tracing::info!(
        api = %settings.api_url,
        credential = settings.credential.kind(),
        egress = ?settings.egress,
        "serving turns"
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(600))
        .build()
        .context("building the HTTP client")?;
    let ctx = Arc::new(Ctx::new(settings, client));
    listener.set_nonblocking(true)?;
    // Name lookups run on blocking threads: a bounded pool (lookups queue beyond it), well under
    // the unit's TasksMax, so a burst of CONNECTs cannot make thread creation fail.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(MAX_LOOKUP_THREADS)
        .build()?;
    rt.block_on(async move { serve(tokio::net::UnixListener::from_std(listener)?, ctx).await })
}
