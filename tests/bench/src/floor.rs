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
    pub errors: Vec<String>,
    pub user: String,
}

/// Prepare a writable `CLAUDE_CONFIG_DIR` owned by `user` inside its home, onboarding done.
fn prepare(user: &str, home: &str) -> anyhow::Result<String> {
    let dir = format!("{home}/.bench-floor-claude");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir}"))?;
    std::fs::write(format!("{dir}/.claude.json"), br#"{"hasCompletedOnboarding":true}"#)?;
    let st = Command::new("chown").args(["-R", &format!("{user}:{user}"), &dir]).status()?;
    if !st.success() {
        bail!("chown {dir} failed");
    }
    Ok(dir)
}

fn once(user: &str, home: &str, cfg: &str, prompt: &str) -> anyhow::Result<f64> {
    let session = uuid::Uuid::new_v4().to_string();
    let t0 = Instant::now();
    let mut child = Command::new("systemd-run")
        .args(["--wait", "--pipe", "--quiet", "--collect"])
        .arg(format!("--property=User={user}"))
        .arg(format!("--property=WorkingDirectory={home}"))
        .arg(format!("--setenv=CLAUDE_CONFIG_DIR={cfg}"))
        .args([STANDIN, "-p", "--output-format", "json", "--session-id", &session])
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
    if !out.status.success() || !stdout.contains("standin:") || !stdout.contains("\"is_error\":false") {
        bail!("systemd-run run failed ({}): {} {}", out.status, stdout.trim(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(ms)
}

pub fn run(user: &str, home: &str, runs: usize, budget: Duration) -> anyhow::Result<Outcome> {
    let cfg = prepare(user, home)?;
    // Warm-up (page cache, systemd's first transient unit of this shape).
    for i in 0..5 {
        once(user, home, &cfg, &format!("floor warm-up {i}"))?;
    }
    let t_end = Instant::now() + budget;
    let mut wall_ms = Vec::new();
    let mut errors = Vec::new();
    for i in 0..runs {
        if Instant::now() > t_end {
            errors.push(format!("time budget of {budget:?} spent after {i} runs"));
            break;
        }
        match once(user, home, &cfg, &format!("benchmark floor run {i}")) {
            Ok(ms) => wall_ms.push(ms),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    Ok(Outcome { wall_ms, errors, user: user.to_owned() })
}
