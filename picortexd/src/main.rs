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
    check_config: bool,
    backup: Option<PathBuf>,
    listen: Option<String>,
    credentials_dir: Option<PathBuf>,
    state_dir: PathBuf,
}

const USAGE: &str =
    "usage: picortexd [--config PATH] [--listen ADDR] [--credentials-dir DIR] [--state-dir DIR]
       picortexd --check-config [--config PATH]
       picortexd --backup DIR [--state-dir DIR]
  Normally started by picortexd.socket. For development, --listen binds its own socket and
  --credentials-dir names a directory holding linq-token and linq-webhook-secret.
  --check-config checks the configuration (default /etc/picortex/picortexd.toml) whole and
  prints OK, or each problem as file:line:column: key: message; it exits 0, or 78 (EX_CONFIG).
  --backup copies the log (consistently, while the service runs) into a new directory below DIR,
  as root with the helper's registry, the chat users and the configuration, and writes
  RESTORE.txt there: what else to save (the chat homes) and how to restore.";

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        config: PathBuf::from(config::DEFAULT_PATH),
        check_config: false,
        backup: None,
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
            "--check-config" => a.check_config = true,
            "--backup" => a.backup = Some(val("--backup")?.into()),
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
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PICORTEX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald =
        std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some();
    let layer = || {
        tracing_journald::layer().map(|j| {
            j.with_syslog_identifier("picortexd".into())
                .with_field_prefix(Some("PICORTEX".into()))
                // syslog's meanings: routine events are informational (6), not notices (5).
                .with_priority_mappings(tracing_journald::PriorityMappings {
                    info: tracing_journald::Priority::Informational,
                    debug: tracing_journald::Priority::Debug,
                    ..tracing_journald::PriorityMappings::new()
                })
        })
    };
    match layer() {
        Ok(j) if journald => {
            // Catalogued events (catalog.rs) are written by its layer, which adds MESSAGE_ID=.
            let plain = j.with_filter(filter_fn(|m| {
                m.is_span() || !picortexd::catalog::is_catalogued(m.target())
            }));
            tracing_subscriber::registry()
                .with(filter)
                .with(plain)
                .with(picortexd::catalog::JournalLayer)
                .init();
        }
        _ => tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}

/// A start refused for its configuration: each problem to the journal (and STATUS=, so that
/// `systemctl status` shows it even after the process is gone), then exit with EX_CONFIG, which
/// the unit does not restart (picortexd.socket keeps listening).
fn refuse_start(e: &config::ConfigError, socket: Option<&std::net::TcpListener>) -> ! {
    use picortexd::catalog;
    let lines = e.lines();
    let last = lines.last().cloned().unwrap_or_default();
    // First the catalogued entry (MESSAGE_ID, for `journalctl -x`), while the process is alive
    // for journald to attribute it to the unit; the problems themselves go last, on stderr:
    // journald knows a stream's unit from its start, so they reach `systemctl status` even
    // though the process is gone by the time journald reads them.
    let summary = format!(
        "refused to start: {} problem{} in the configuration or credentials; first: {}",
        lines.len(),
        if lines.len() == 1 { "" } else { "s" },
        lines.first().cloned().unwrap_or_default()
    );
    let journal = catalog::send(
        catalog::ERR,
        catalog::CONFIG_INVALID,
        &summary,
        &[("PICORTEX_PROBLEMS", &lines.join("\n"))],
    );
    if let Some(l) = socket {
        drain(l);
    }
    let _ = sd_notify::notify(&[NotifyState::Status(&format!("refused to start: {last}"))]);
    notify_barrier(Duration::from_secs(2));
    for l in &lines {
        // "<3>": journald reads it as priority err.
        if journal {
            eprintln!("<3>{l}");
        } else {
            eprintln!("{l}");
        }
    }
    std::process::exit(config::EXIT_CONFIG);
}

/// Answer the connections already waiting on systemd's socket with 503 (Linq retries later):
/// left in the queue, each would make systemd start the service again at once, until the
/// socket's trigger limit fails it and the port closes.
fn drain(l: &std::net::TcpListener) {
    use std::io::Write;
    if l.set_nonblocking(true).is_err() {
        return;
    }
    let body =
        "picortexd cannot start: its configuration is wrong (see systemctl status picortexd)\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 60\r\n\r\n{body}",
        body.len()
    );
    for _ in 0..1024 {
        match l.accept() {
            Ok((mut c, _)) => {
                let _ = c.set_write_timeout(Some(Duration::from_millis(200)));
                let _ = c.write_all(answer.as_bytes());
            }
            Err(_) => return,
        }
    }
}

/// Wait until systemd has read our notifications (BARRIER=1), so STATUS= is set before it
/// sees the process exit.
fn notify_barrier(timeout: Duration) {
    use std::io::Read;
    use std::os::fd::AsFd;
    let Ok((r, w)) = nix::unistd::pipe() else {
        return;
    };
    if sd_notify::notify_with_fds(&[NotifyState::Custom("BARRIER=1")], &[w.as_fd()]).is_err() {
        return;
    }
    drop(w);
    let _ = nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut f = std::fs::File::from(r);
    let end = Instant::now() + timeout;
    let mut b = [0u8; 16];
    while Instant::now() < end {
        match f.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            // EOF: systemd closed its copy of the pipe.
            _ => return,
        }
    }
}

fn check_config(path: &std::path::Path) -> ! {
    match config::Config::load(path) {
        Ok(_) if !path.exists() => {
            println!(
                "{}: OK (no such file: every key has its default)",
                path.display()
            );
            std::process::exit(0);
        }
        Ok(_) => {
            println!("{}: OK", path.display());
            std::process::exit(0);
        }
        Err(e) => {
            for l in e.lines() {
                eprintln!("{l}");
            }
            std::process::exit(config::EXIT_CONFIG);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.check_config {
        check_config(&args.config);
    }
    if let Some(dest) = &args.backup {
        let src = picortexd::backup::Sources::system(&args.state_dir, &args.config);
        let r = picortexd::backup::run(&src, dest, nix::unistd::geteuid().is_root())
            .map_err(anyhow::Error::msg)?;
        println!("backup in {}:", r.dir.display());
        for c in &r.copied {
            println!("  {c}");
        }
        for c in &r.skipped {
            println!("  not included: {c}");
        }
        println!(
            "see {}/RESTORE.txt for the chat homes and how to restore",
            r.dir.display()
        );
        return Ok(());
    }
    init_logging();
    if let Err(e) = caps::clear(None, caps::CapSet::Effective) {
        tracing::debug!(error = %e, "clearing effective capabilities");
    }
    // The socket from systemd must be taken before any other thread exists.
    let mut fds = listenfd::ListenFd::from_env();
    let socket = fds
        .take_tcp_listener(0)
        .context("taking the socket from systemd")?;
    let cfg =
        config::Config::load(&args.config).unwrap_or_else(|e| refuse_start(&e, socket.as_ref()));
    let secrets = config::Secrets::load(args.credentials_dir.clone())
        .unwrap_or_else(|e| refuse_start(&e, socket.as_ref()));
    let std_listener = match socket {
        Some(l) => l,
        None => {
            let addr = args.listen.clone().unwrap_or(cfg.http.listen.clone());
            std::net::TcpListener::bind(&addr).with_context(|| format!("binding {addr}"))?
        }
    };
    std_listener.set_nonblocking(true)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args, cfg, secrets, std_listener))
}

async fn run(
    args: Args,
    cfg: config::Config,
    secrets: config::Secrets,
    std_listener: std::net::TcpListener,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let live = config::Live::new(cfg.clone());
    let cfg = Arc::new(cfg);
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
    let turns_wake_reload = turns_wake.clone();
    let outbox_wake = Arc::new(Notify::new());
    let turns = Arc::new(turns::Turns::new(
        store.clone(),
        bus.clone(),
        linq.clone(),
        live.clone(),
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
    tokio::spawn(turns::expire_raw_webhooks(store.clone(), cfg.clone()));
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
    tokio::spawn(reload_on_hangup(
        args.config.clone(),
        live,
        turns_wake_reload,
    ));

    axum::serve(listener, http::router(app))
        .with_graceful_shutdown(shutdown())
        .await?;
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    tracing::info!("stopped; turns still running in their units are collected on the next start");
    Ok(())
}

/// `systemctl reload picortexd` (ExecReload= checks the file, then sends SIGHUP): re-read the
/// configuration, apply what can change live, and say what needs a restart. A file that became
/// invalid since is refused whole: the running configuration stays.
async fn reload_on_hangup(path: PathBuf, live: config::Live, turns_wake: Arc<Notify>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let _ = sd_notify::notify(&[NotifyState::Reloading]);
        match config::Config::load(&path) {
            Err(e) => {
                for l in e.lines() {
                    let m = format!("reload refused, the running configuration stays: {l}");
                    if !picortexd::catalog::send(
                        picortexd::catalog::ERR,
                        picortexd::catalog::CONFIG_INVALID,
                        &m,
                        &[],
                    ) {
                        tracing::error!("{m}");
                    }
                }
            }
            Ok(new) => {
                let restart = live.reload(new);
                if restart.is_empty() {
                    tracing::info!("configuration reloaded from {}", path.display());
                } else {
                    tracing::warn!(
                        keys = %restart.join(" "),
                        "configuration reloaded from {}; changed keys that apply only after `systemctl restart picortexd`: {}",
                        path.display(),
                        restart.join(", ")
                    );
                }
                // A raised limit (max_concurrent, a budget) may let queued turns start now.
                turns_wake.notify_one();
            }
        }
        let _ = sd_notify::notify(&[NotifyState::Ready]);
    }
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
