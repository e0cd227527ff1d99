//! linq-sim: a stand-in for Linq's servers (partner API v3 + signed webhooks) for picortex's
//! tests and demo, with a control interface to play the humans and inject faults.
//! State lives in memory only; one process is one world.

mod api;
mod control;
mod error;
mod media;
mod state;
mod validate;
mod webhooks;
mod wire;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::watch;

use crate::state::{RuntimeConfig, Sim, SimConfig};
use crate::webhooks::Secret;

const USAGE: &str = "\
usage: linq-sim [--api-listen ADDR] [--control-socket PATH] [--control-listen ADDR]
                [--webhook-url URL] --webhook-secret-file PATH --token-file PATH
                --bot-handle +1555… [--partner-id ID] [--retry-base-ms N]

  --api-listen ADDR         partner API (default 127.0.0.1:8900), base path /api/partner
  --control-socket PATH     control API, HTTP over a Unix socket
  --control-listen ADDR     control API over TCP as well
  --webhook-url URL         where webhooks are POSTed (or later: POST /control/config)
  --webhook-secret-file P   file holding whsec_<base64 key>
  --token-file PATH         file holding the bearer token clients must present
  --bot-handle HANDLE       the bot's own line (owner_handle, is_me=true)
  --partner-id ID           partner_id in webhook envelopes
  --retry-base-ms N         first webhook retry delay, doubling (default 200)
";

struct Args {
    api_listen: SocketAddr,
    control_socket: Option<PathBuf>,
    control_listen: Option<SocketAddr>,
    webhook_url: Option<String>,
    webhook_secret_file: PathBuf,
    token_file: PathBuf,
    bot_handle: String,
    partner_id: String,
    retry_base_ms: u64,
}

fn parse_args(argv: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut api_listen: SocketAddr = "127.0.0.1:8900".parse()?;
    let (mut control_socket, mut control_listen, mut webhook_url) = (None, None, None);
    let (mut secret_file, mut token_file, mut bot_handle) = (None, None, None);
    let mut partner_id = "6f1c2b7e-0000-4000-8000-000000000001".to_string();
    let mut retry_base_ms = 200;
    let mut it = argv.peekable();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> anyhow::Result<String> {
            inline
                .clone()
                .or_else(|| it.next())
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--api-listen" => api_listen = value()?.parse().context("--api-listen")?,
            "--control-socket" => control_socket = Some(PathBuf::from(value()?)),
            "--control-listen" => {
                control_listen = Some(value()?.parse().context("--control-listen")?)
            }
            "--webhook-url" => webhook_url = Some(value()?),
            "--webhook-secret-file" => secret_file = Some(PathBuf::from(value()?)),
            "--token-file" => token_file = Some(PathBuf::from(value()?)),
            "--bot-handle" => bot_handle = Some(value()?),
            "--partner-id" => partner_id = value()?,
            "--retry-base-ms" => retry_base_ms = value()?.parse().context("--retry-base-ms")?,
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if control_socket.is_none() && control_listen.is_none() {
        bail!("give --control-socket and/or --control-listen\n{USAGE}");
    }
    let bot_handle = bot_handle.context("--bot-handle is required")?;
    if !validate::valid_handle(&bot_handle) {
        bail!("--bot-handle {bot_handle} is not an E.164 number");
    }
    Ok(Args {
        api_listen,
        control_socket,
        control_listen,
        webhook_url,
        webhook_secret_file: secret_file.context("--webhook-secret-file is required")?,
        token_file: token_file.context("--token-file is required")?,
        bot_handle,
        partner_id,
        retry_base_ms,
    })
}

fn read_trimmed(p: &Path, what: &str) -> anyhow::Result<String> {
    let s =
        std::fs::read_to_string(p).with_context(|| format!("reading {what} {}", p.display()))?;
    let s = s.trim().to_string();
    if s.is_empty() {
        bail!("{what} {} is empty", p.display());
    }
    Ok(s)
}

fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed stale control socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))
}

async fn shutdown_signal(tx: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = tx.send(true);
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let args = parse_args(std::env::args().skip(1))?;
    let secret = Secret::parse(&read_trimmed(
        &args.webhook_secret_file,
        "webhook secret file",
    )?)?;
    let token = read_trimmed(&args.token_file, "token file")?;
    let cfg = SimConfig {
        token,
        secret,
        bot_handle: args.bot_handle.clone(),
        partner_id: args.partner_id.clone(),
        subscription_id: uuid::Uuid::new_v4().to_string(),
        media_base: format!("http://{}", args.api_listen),
    };
    let runtime = RuntimeConfig {
        webhook_url: args.webhook_url.clone(),
        echo_outbound: true,
        retry_base_ms: args.retry_base_ms,
    };
    let sim = Arc::new(Sim::new(cfg, runtime)?);

    let (tx, rx) = watch::channel(false);
    tokio::spawn(shutdown_signal(tx));

    let mut servers = tokio::task::JoinSet::new();
    let api_listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("binding API on {}", args.api_listen))?;
    let api_app = api::router(sim.clone());
    let r = rx.clone();
    servers.spawn(async move {
        axum::serve(api_listener, api_app)
            .with_graceful_shutdown(stopped(r))
            .await
    });

    let control_app = control::router(sim.clone());
    if let Some(path) = &args.control_socket {
        let uds = bind_unix(path)?;
        let (app, r) = (control_app.clone(), rx.clone());
        servers.spawn(async move {
            axum::serve(uds, app)
                .with_graceful_shutdown(stopped(r))
                .await
        });
    }
    if let Some(addr) = args.control_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding control on {addr}"))?;
        let (app, r) = (control_app.clone(), rx.clone());
        servers.spawn(async move { axum::serve(l, app).with_graceful_shutdown(stopped(r)).await });
    }
    tracing::info!(
        api = %args.api_listen,
        control_socket = ?args.control_socket,
        control_listen = ?args.control_listen,
        webhook_url = ?args.webhook_url,
        bot = %args.bot_handle,
        "linq-sim ready"
    );

    // Run until a signal; then give open connections a moment to finish.
    stopped(rx).await;
    let drain = async {
        while let Some(r) = servers.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!("server error: {e}");
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 5 s; exiting anyway");
    }
    if let Some(path) = &args.control_socket {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> anyhow::Result<Args> {
        parse_args(s.split_whitespace().map(str::to_string))
    }

    #[test]
    fn cli() {
        let a = args("--api-listen=127.0.0.1:1 --control-socket /tmp/x.sock --webhook-secret-file s --token-file t --bot-handle +15550001000").unwrap();
        assert_eq!(a.api_listen.port(), 1);
        assert_eq!(a.control_socket, Some(PathBuf::from("/tmp/x.sock")));
        assert!(args("--control-socket /x --webhook-secret-file s --token-file t").is_err());
        assert!(args("--webhook-secret-file s --token-file t --bot-handle +15550001000").is_err());
        assert!(args("--bogus 1").is_err());
    }
}
