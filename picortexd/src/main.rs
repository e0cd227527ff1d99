//! picortexd: the unprivileged, socket-activated gateway. Linq webhooks come in over the socket
//! `picortexd.socket` hands over (or one it binds itself with `--listen`, for development); each
//! becomes a row in the SQLite log, a queued turn run through the root helper, and a reply sent
//! back to Linq. See README.md for the whole picture.

use picortexd::{bus, config, failpoint, http, linq, outbox, store, turns};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sd_notify::NotifyState;
use tokio::sync::Notify;
use tracing_subscriber::prelude::*;

struct Args {
    config: PathBuf,
    listen: Option<String>,
    credentials_dir: Option<PathBuf>,
    state_dir: PathBuf,
}

const USAGE: &str =
    "usage: picortexd [--config PATH] [--listen ADDR] [--credentials-dir DIR] [--state-dir DIR]
  Normally started by picortexd.socket. For development, --listen binds its own socket and
  --credentials-dir names a directory holding linq-token and linq-webhook-secret.";

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        config: PathBuf::from(config::DEFAULT_PATH),
        listen: None,
        credentials_dir: None,
        state_dir: std::env::var_os("STATE_DIRECTORY")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/lib/picortex".into()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--config" => a.config = val("--config")?.into(),
            "--listen" => a.listen = Some(val("--listen")?),
            "--credentials-dir" => a.credentials_dir = Some(val("--credentials-dir")?.into()),
            "--state-dir" => a.state_dir = val("--state-dir")?.into(),
            "--version" => {
                println!("picortexd {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(a)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PICORTEX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald =
        std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some();
    match tracing_journald::layer() {
        Ok(j) if journald => {
            let j = j
                .with_syslog_identifier("picortexd".into())
                .with_field_prefix(Some("PICORTEX".into()));
            tracing_subscriber::registry().with(filter).with(j).init();
        }
        _ => tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    init_logging();
    if let Err(e) = caps::clear(None, caps::CapSet::Effective) {
        tracing::debug!(error = %e, "clearing effective capabilities");
    }
    // The socket from systemd must be taken before any other thread exists.
    let mut fds = listenfd::ListenFd::from_env();
    let std_listener = match fds
        .take_tcp_listener(0)
        .context("taking the socket from systemd")?
    {
        Some(l) => l,
        None => {
            let cfg = config::Config::load(&args.config)?;
            let addr = args.listen.clone().unwrap_or(cfg.http.listen.clone());
            std::net::TcpListener::bind(&addr).with_context(|| format!("binding {addr}"))?
        }
    };
    std_listener.set_nonblocking(true)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args, std_listener))
}

async fn run(args: Args, std_listener: std::net::TcpListener) -> anyhow::Result<()> {
    let started = Instant::now();
    let cfg = Arc::new(config::Config::load(&args.config)?);
    let secrets = config::Secrets::load(args.credentials_dir.clone())?;
    let verifier = linq::verify::Verifier::new(&secrets.webhook_secret)
        .context("credential linq-webhook-secret")?
        .with_tolerance(Duration::from_secs(cfg.linq.timestamp_tolerance_s));
    let linq = Arc::new(
        linq::client::LinqClient::new(
            &cfg.linq.api_base,
            secrets.linq_token.clone(),
            Duration::from_secs(cfg.linq.request_timeout_s),
        )
        .context("Linq client")?,
    );
    let _instance = picortexd::instance::claim(&args.state_dir).map_err(anyhow::Error::msg)?;
    failpoint::init(&args.state_dir);
    let results_dir = args.state_dir.join("turns");
    std::fs::create_dir_all(&results_dir)
        .with_context(|| format!("creating {}", results_dir.display()))?;
    let db_path = args.state_dir.join("picortex.db");
    let store =
        store::Store::open(&db_path).with_context(|| format!("opening {}", db_path.display()))?;

    let bus = Arc::new(bus::Bus::new());
    let turns_wake = Arc::new(Notify::new());
    let outbox_wake = Arc::new(Notify::new());
    let turns = Arc::new(turns::Turns::new(
        store.clone(),
        bus.clone(),
        linq.clone(),
        cfg.clone(),
        results_dir,
        turns_wake.clone(),
        outbox_wake.clone(),
    ));
    let outbox = Arc::new(outbox::Outbox::new(
        store.clone(),
        linq.clone(),
        outbox_wake.clone(),
    ));
    // org.picortex.Gateway1, served on the bus connection (and again on each new one).
    bus.serve(picortexd::gateway1::Gateway1::new(
        store.clone(),
        turns.clone(),
    ));
    if let Err(e) = bus.connect().await {
        tracing::error!(error = %e, "system bus not reachable; webhooks are still accepted, turns wait for it");
    }
    tokio::spawn(turns.run());
    tokio::spawn(outbox.run());
    tokio::spawn(turns::archive_idle(store.clone(), bus.clone(), cfg.clone()));
    // The consent broker's timer and imports (pending disclosures live in the log: nothing is
    // lost across a restart).
    tokio::spawn(picortexd::consent::worker::run(
        store.clone(),
        bus.clone(),
        outbox_wake.clone(),
        turns_wake.clone(),
    ));

    let owner = picortexd::owner::Owner::new(&cfg.owner.handles);
    if !owner.is_configured() {
        tracing::warn!(
            "no [owner] handles in {}: every chat stays quarantined and nobody can allow one",
            args.config.display()
        );
    }
    let ctx = Arc::new(picortexd::ingest::Ctx {
        owner,
        bot_names: cfg.linq.bot_names.clone(),
    });
    // Chats left waiting without a decision (from before quarantine, or a group whose members
    // Linq never told us) are decided now, not at their next message.
    let o = ctx.owner.clone();
    match store
        .call(move |t| store::authority::settle_waiting(t, &o))
        .await
    {
        Ok(s) if s.wake_outbox => outbox_wake.notify_one(),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "cannot settle waiting chats"),
    }
    // Webhooks that were in flight when the previous process died: one strike each.
    let inflight_dir = args.state_dir.join("inflight");
    let died_on = picortexd::poison::leftovers(&inflight_dir)
        .with_context(|| format!("reading {}", inflight_dir.display()))?;
    for id in &died_on {
        tracing::warn!(event_id = %id, "webhook {id} was being processed when the gateway died");
    }
    let poisoned = store
        .call(move |t| store::queries::poison_strike(t, &died_on, picortexd::poison::STRIKES))
        .await
        .context("recording webhooks in flight at the last crash")?;
    let poison = picortexd::poison::Guard::new(inflight_dir, poisoned.into_iter().collect());
    let app = Arc::new(http::App {
        store: store.clone(),
        verifier,
        cfg: cfg.clone(),
        bus: bus.clone(),
        linq: linq.clone(),
        turns_wake,
        outbox_wake,
        ctx,
        poison,
        started,
    });
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    tracing::info!(addr = %listener.local_addr()?, "picortexd {} ready", env!("CARGO_PKG_VERSION"));
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
    tokio::spawn(watchdog(store.clone(), bus.clone()));

    axum::serve(listener, http::router(app))
        .with_graceful_shutdown(shutdown())
        .await?;
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    tracing::info!("stopped; turns still running in their units are collected on the next start");
    Ok(())
}

/// Ping the watchdog only while the database answers, and keep STATUS= current.
async fn watchdog(store: store::Store, bus: Arc<bus::Bus>) {
    let period = sd_notify::watchdog_enabled()
        .map(|d| d / 3)
        .unwrap_or(Duration::from_secs(10));
    loop {
        tokio::time::sleep(period).await;
        if !store.ping().await {
            tracing::error!("database not answering; withholding the watchdog ping");
            continue;
        }
        let counts = store.call(store::queries::counts).await.unwrap_or_default();
        let bus_ok = bus.ok().await;
        let status = format!(
            "{} chats, {} turns queued, {} running, {} replies pending{}",
            counts.chats,
            counts.queued,
            counts.running,
            counts.outbox_pending,
            if bus_ok { "" } else { "; system bus DOWN" }
        );
        let _ = sd_notify::notify(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
    }
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
