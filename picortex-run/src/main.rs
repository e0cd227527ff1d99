//! `picortex-run --turn <32 hex> [--config PATH]`: systemd's ExecStart for one turn unit, run as
//! the chat's user with a `TurnRequest` on stdin and the result file as stdout. It takes the
//! result file out of every child's reach, checks where it runs, checks the request, runs the
//! agent through `picortex_run::run_turn` and writes exactly one `TurnResult` line. `--config` exists for tests; the unit never passes it, and picortex-run reads its `[agent]` settings from the credential the helper passes instead.
//!
//! Exit status: 0 the agent answered, 1 the turn failed (the result says why), 2 refused,
//! 3 the result could not be written.

#![deny(unsafe_code)]

use picortex_proto::ids::{TurnId, TURN_CONFIG_DIR};
use picortex_proto::turn::{Outcome, TurnResult};
use picortex_run::channel::ResultChannel;
use picortex_run::config::{load_config, load_view_config};
use picortex_run::request::{check_chat, read_request_or_none, validate_request};
use picortex_run::{
    audit, run_turn, scope, EXIT_NO_RESULT, EXIT_OK, EXIT_REFUSED, EXIT_TURN_FAILED,
};
use std::path::PathBuf;
use std::process::ExitCode;

struct Cli {
    turn: String,
    /// Tests only; in a turn unit the `[agent]` settings are the helper's `/etc/picortex/agent.toml`.
    config: Option<PathBuf>,
}

/// Exactly `--turn <id>`, optionally `--config <path>`; nothing else.
fn parse_cli(args: &[String]) -> Result<Cli, String> {
    let mut turn = None;
    let mut config = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let slot = match a.as_str() {
            "--turn" => &mut turn,
            "--config" => &mut config,
            other => {
                return Err(format!(
                    "unexpected argument {:?}",
                    other.chars().take(64).collect::<String>()
                ))
            }
        };
        if slot.is_some() {
            return Err(format!("{a} given twice"));
        }
        *slot = Some(
            it.next()
                .ok_or_else(|| format!("{a} needs a value"))?
                .clone(),
        );
    }
    Ok(Cli {
        turn: turn.ok_or("missing --turn")?,
        config: config.map(PathBuf::from),
    })
}

fn write_result(channel: ResultChannel, r: &TurnResult) -> bool {
    match channel.write(r) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(turn = %r.turn_id, "cannot write the result: {e}");
            false
        }
    }
}

fn refuse(channel: ResultChannel, turn: &str, chat: Option<&str>, reason: &str) -> ExitCode {
    audit::turn_refused(turn, chat, reason);
    let turn: String = turn.chars().take(64).collect();
    if write_result(
        channel,
        &TurnResult::failure(&turn, Outcome::Refused, reason),
    ) {
        ExitCode::from(EXIT_REFUSED)
    } else {
        ExitCode::from(EXIT_NO_RESULT)
    }
}

fn main() -> ExitCode {
    // `picortex-run mcp …`: the agent's MCP server (consent, see picortex_run::mcp), started by
    // the agent inside the turn; its stdout is the MCP transport, not a result channel.
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some(picortex_run::mcp::MCP_ARG) {
        return match picortex_run::mcp::serve_main(argv.get(1..).unwrap_or_default()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("picortex-run mcp: {e}");
                ExitCode::from(EXIT_REFUSED)
            }
        };
    }
    // Not dumpable, before anything else: the agent runs as the same user, and must not be able
    // to ptrace this process or open its /proc/<pid>/mem or /proc/<pid>/fd/* (the result file)
    // to forge the turn's result or its reported cost; a leftover of the chat's previous turn
    // may be watching for this process to start. The agent becomes dumpable again at execve,
    // which is fine: it is the untrusted party.
    let dumpable = nix::sys::prctl::set_dumpable(false);
    // Then, before any log line or child: the result file leaves stdout (and stderr, if systemd
    // made it the same file) for a descriptor only this process holds.
    let channel = match ResultChannel::take_stdout() {
        Ok(c) => c,
        Err(e) => {
            audit::init();
            tracing::error!("cannot take the result channel from stdout: {e}");
            return ExitCode::from(EXIT_NO_RESULT);
        }
    };
    audit::init();
    if let Err(e) = dumpable {
        return refuse(
            channel,
            "",
            None,
            &format!("prctl(PR_SET_DUMPABLE, 0) failed: {e}"),
        );
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cli = match parse_cli(&args) {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                channel,
                "",
                None,
                &format!("usage: picortex-run --turn <turn id>: {e}"),
            )
        }
    };
    let turn = match TurnId::parse(&cli.turn) {
        Ok(t) => t,
        Err(e) => return refuse(channel, &cli.turn, None, &e.to_string()),
    };
    let facts = picortex_run::preflight::gather_facts();
    let identity = match picortex_run::preflight::check(&facts) {
        Ok(i) => i,
        Err(e) => {
            // Its own user not found, and the user database replaced under the view before
            // this process looked (see picortex_run::userdb): not a refusal but a sandbox gone
            // stale; the gateway runs the turn again in a fresh unit.
            if facts.passwd.is_err() {
                if let Err(stale) = picortex_run::userdb::check_system(None) {
                    return stale_sandbox(channel, turn.as_str(), None, &stale);
                }
            }
            return refuse(channel, turn.as_str(), None, &e.0);
        }
    };
    // A spare unit waits here, sandbox ready, until the gateway hands it a turn.
    let request = match read_request_or_none(std::io::stdin().lock()) {
        Ok(Some(r)) => r,
        Ok(None) => {
            tracing::info!(turn = %turn, "spare unit let go without a request; nothing ran");
            let r = TurnResult::failure(turn.as_str(), Outcome::NoRequest, "no request");
            return if write_result(channel, &r) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_NO_RESULT)
            };
        }
        Err(e) => return refuse(channel, turn.as_str(), None, &e.0),
    };
    if let Err(e) =
        validate_request(&request, &turn).and_then(|_| check_chat(&request, &identity.tag))
    {
        return refuse(channel, turn.as_str(), Some(&request.chat_id), &e.0);
    }
    // The sandbox must still be what the helper built (see picortex_run::userdb): a spare may
    // have waited while a chat was added, which replaces the user database under its view.
    if let Err(e) = picortex_run::userdb::check_system(Some(&identity.user)) {
        return stale_sandbox(channel, turn.as_str(), Some(&request.chat_id), &e);
    }
    let config = match &cli.config {
        Some(path) => load_config(path),
        None => load_view_config(std::path::Path::new(TURN_CONFIG_DIR)),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                channel,
                turn.as_str(),
                Some(&request.chat_id),
                &format!("configuration: {e}"),
            )
        }
    };
    // Files the agent creates are the chat's alone, whatever the unit's UMask.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // No btrfs subvolumes or snapshots of the agent's own: their space would escape the home's
    // quota (see picortex_run::nosubvol).
    if let Err(e) = picortex_run::nosubvol::install() {
        return refuse(channel, turn.as_str(), Some(&request.chat_id), &e);
    }

    // The turn's one way out (see picortex_run::relay): in a network of its own, the agent's API
    // and proxy are a relay on its loopback to picortex-egress.
    if let Err(e) =
        picortex_run::relay::check_private_network().and_then(|()| picortex_run::relay::start())
    {
        return refuse(channel, turn.as_str(), Some(&request.chat_id), &e);
    }

    // Last of our own setup: from here on this process and the agent it starts are a Landlock
    // domain of their own, unable to reach other chats' abstract sockets or signal their
    // processes (see picortex_run::scope for why a kernel without it refuses the turn).
    if let Err(e) = scope::enter_turn_domain() {
        return refuse(channel, turn.as_str(), Some(&request.chat_id), &e);
    }
    let result = run_turn(&config, &request, &identity);
    let mut result = picortex_run::diskfull::reclassify(result, &identity.home);
    result.outbox = picortex_run::outbox::has_files(&identity.home);
    if !write_result(channel, &result) {
        return ExitCode::from(EXIT_NO_RESULT);
    }
    match result.outcome {
        Outcome::Ok => ExitCode::from(EXIT_OK),
        Outcome::Refused => ExitCode::from(EXIT_REFUSED),
        Outcome::NoRequest => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_TURN_FAILED),
    }
}

/// The turn's sandbox is no longer what the helper built: told to the gateway, which runs the
/// turn again in a fresh unit (`Outcome::StaleSandbox`).
fn stale_sandbox(channel: ResultChannel, turn: &str, chat: Option<&str>, why: &str) -> ExitCode {
    tracing::warn!(
        turn,
        chat,
        "{why}; the gateway runs the turn again in a fresh unit"
    );
    let r = TurnResult::failure(turn, Outcome::StaleSandbox, why);
    if write_result(channel, &r) {
        ExitCode::from(EXIT_TURN_FAILED)
    } else {
        ExitCode::from(EXIT_NO_RESULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(a: &[&str]) -> Result<Cli, String> {
        parse_cli(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn only_turn_and_config() {
        let c = cli(&["--turn", "ab"]).unwrap();
        assert_eq!((c.turn.as_str(), c.config), ("ab", None));
        let c = cli(&["--config", "/x.toml", "--turn", "ab"]).unwrap();
        assert_eq!(c.config, Some(PathBuf::from("/x.toml")));
        assert!(cli(&[]).is_err());
        assert!(cli(&["--turn"]).is_err());
        assert!(cli(&["--turn", "a", "--turn", "b"]).is_err());
        assert!(cli(&["--turn", "a", "extra"]).is_err());
        assert!(cli(&["--turn=a"]).is_err());
    }
}
