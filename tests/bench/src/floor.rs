//! The floor a turn cannot beat: the same stand-in agent started the plain way, with
//! `systemd-run --wait --pipe -p User=<chat user>`, prompt on stdin, as an operator would from a
//! shell. No helper, no D-Bus round trips of ours, no sandbox properties, no result file.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub const STANDIN: &str = "/usr/lib/picortex-test/claude-standin";

pub struct Outcome {
    pub wall_ms: Vec<f64>,
    /// The same run with the turn unit's sandbox and limits (see `turn_sandbox`), after the
    /// plain runs: how much of a turn is systemd's sandbox set-up rather than picortex's own
    /// path.
    pub sandboxed_ms: Vec<f64>,
    pub errors: Vec<String>,
    pub user: String,
}

/// The properties of a real turn unit, from the transient unit file systemd wrote for it, as
/// `systemd-run -p` arguments: everything but what only makes sense for a turn started by the
/// helper (its command, its fds, RemainAfterExit, which `--wait` cannot wait out). Returns the
/// unit's user and working directory too.
pub fn sandbox_from_unit_file(text: &str) -> Option<(String, String, Vec<String>)> {
    const SKIP: &[&str] = &[
        "Description",
        "ExecStart",
        "RemainAfterExit",
        "StandardInput",
        "StandardOutput",
        "StandardInputFileDescriptor",
        "StandardOutputFileDescriptor",
        "LogExtraFields",
        "SourcePath",
        "CollectMode",
        "User",
        "WorkingDirectory",
    ];
    let (mut user, mut home, mut props) = (None, None, Vec::new());
    let mut section = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if l.starts_with('[') {
            section = l.to_owned();
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            continue;
        };
        match k {
            "User" => user = Some(v.to_owned()),
            "WorkingDirectory" => home = Some(v.trim_start_matches(['-', '!', '+']).to_owned()),
            _ if SKIP.contains(&k) => {}
            // systemd 252 writes a RestrictNamespaces= mask of 0 (no namespace may be created)
            // as an empty value, which on parsing means the opposite (no restriction).
            "RestrictNamespaces" if v.is_empty() => props.push("RestrictNamespaces=yes".to_owned()),
            _ if section == "[Unit]" || section == "[Service]" => props.push(format!("{k}={v}")),
            _ => {}
        }
    }
    Some((user?, home?, props))
}

/// A static copy of the turn sandbox (picortex-provision/src/units.rs, `turn_properties`) as it
/// was when this benchmark was written; used only when no live turn unit file could be read.
pub fn turn_sandbox(user: &str, home: &str) -> Vec<String> {
    let tag = user.strip_prefix("chat-").unwrap_or(user);
    [
        "Type=exec".to_owned(),
        format!("Group={user}"),
        format!("Slice=picortex-chat-{tag}.slice"),
        "StandardError=journal".into(),
        "SyslogIdentifier=picortex-turn".into(),
        "RemainAfterExit=no".into(),
        "RuntimeMaxSec=60".into(),
        "TimeoutStopSec=5".into(),
        "OOMPolicy=stop".into(),
        "UMask=0077".into(),
        "NoNewPrivileges=yes".into(),
        "ProtectSystem=strict".into(),
        "ProtectHome=yes".into(),
        format!("ReadWritePaths={home}"),
        "PrivateTmp=yes".into(),
        "PrivateDevices=yes".into(),
        "PrivateIPC=yes".into(),
        "ProtectProc=invisible".into(),
        "ProcSubset=pid".into(),
        "CapabilityBoundingSet=".into(),
        "AmbientCapabilities=".into(),
        "RestrictSUIDSGID=yes".into(),
        "LockPersonality=yes".into(),
        "RestrictRealtime=yes".into(),
        "RestrictNamespaces=yes".into(),
        "ProtectKernelTunables=yes".into(),
        "ProtectKernelModules=yes".into(),
        "ProtectKernelLogs=yes".into(),
        "ProtectControlGroups=yes".into(),
        "ProtectClock=yes".into(),
        "ProtectHostname=yes".into(),
        "RemoveIPC=yes".into(),
        "KeyringMode=private".into(),
        "SystemCallArchitectures=native".into(),
        "SystemCallFilter=@system-service".into(),
        "SystemCallErrorNumber=EPERM".into(),
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6".into(),
        "PrivateNetwork=yes".into(),
        "IPAddressAllow=localhost".into(),
        "IPAddressDeny=any".into(),
    ]
    .to_vec()
}

/// Prepare a writable `CLAUDE_CONFIG_DIR` owned by `user` inside its home, onboarding done.
fn prepare(user: &str, home: &str) -> anyhow::Result<String> {
    let dir = format!("{home}/.bench-floor-claude");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir}"))?;
    std::fs::write(
        format!("{dir}/.claude.json"),
        br#"{"hasCompletedOnboarding":true}"#,
    )?;
    let st = Command::new("chown")
        .args(["-R", &format!("{user}:{user}"), &dir])
        .status()?;
    if !st.success() {
        bail!("chown {dir} failed");
    }
    Ok(dir)
}

fn once(user: &str, home: &str, cfg: &str, prompt: &str, extra: &[String]) -> anyhow::Result<f64> {
    let session = uuid::Uuid::new_v4().to_string();
    let t0 = Instant::now();
    let mut child = Command::new("systemd-run")
        .args(["--wait", "--pipe", "--quiet", "--collect"])
        .arg(format!("--property=User={user}"))
        .arg(format!("--property=WorkingDirectory={home}"))
        .arg(format!("--setenv=CLAUDE_CONFIG_DIR={cfg}"))
        .args(extra.iter().map(|p| format!("--property={p}")))
        .args([
            STANDIN,
            "-p",
            "--output-format",
            "json",
            "--session-id",
            &session,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning systemd-run")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(prompt.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success()
        || !stdout.contains("standin:")
        || !stdout.contains("\"is_error\":false")
    {
        bail!(
            "systemd-run run failed ({}): {} {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms)
}

/// `runs` plain runs; with `sandbox`, each is followed by one run with those properties.
pub fn run(
    user: &str,
    home: &str,
    runs: usize,
    sandbox: Option<Vec<String>>,
    budget: Duration,
) -> anyhow::Result<Outcome> {
    let cfg = prepare(user, home)?;
    let sandboxed = sandbox.is_some();
    let sandbox = sandbox.unwrap_or_default();
    // Warm-up (page cache, systemd's first transient units of these shapes).
    for i in 0..3 {
        once(user, home, &cfg, &format!("floor warm-up {i}"), &[])?;
        if sandboxed {
            once(
                user,
                home,
                &cfg,
                &format!("sandboxed floor warm-up {i}"),
                &sandbox,
            )?;
        }
    }
    // The plain runs first, on their own: each on a machine no sandboxed run before it is still
    // tearing down (network, IPC and mount namespaces go after the unit has), as each settled
    // turn meets it (see turns::Pace). Then the sandboxed ones.
    let t_end = Instant::now() + budget;
    let (mut wall_ms, mut sandboxed_ms, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for (props, out, what) in [
        (&[][..], &mut wall_ms, ""),
        (&sandbox[..], &mut sandboxed_ms, "sandboxed "),
    ] {
        if !what.is_empty() && !sandboxed {
            break;
        }
        for i in 0..runs {
            if Instant::now() > t_end {
                errors.push(format!(
                    "time budget of {budget:?} spent after {i} {what}runs"
                ));
                break;
            }
            match once(
                user,
                home,
                &cfg,
                &format!("benchmark {what}floor run {i}"),
                props,
            ) {
                Ok(ms) => out.push(ms),
                Err(e) => errors.push(format!("{what}{e:#}")),
            }
        }
    }
    Ok(Outcome {
        wall_ms,
        sandboxed_ms,
        errors,
        user: user.to_owned(),
    })
}
