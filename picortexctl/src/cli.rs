//! picortexctl's command line, defined once: the parser, `--help`, the man page and the shell
//! completions all come from here.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub const EXIT_CODES: &str = "\
Exit status:
  0  done
  1  the gateway could not do it (the message says why)
  2  bad usage, or a value the gateway refused (the message names the key and the valid range)
  3  no such chat or message
  4  not authorised by polkit (org.picortex.gateway.read/.manage): use root or the picortex-admin group
  5  the gateway is not reachable (picortexd not running, or no system bus)";

const AFTER: &str = "\
A chat is named by its Linq id, or while it waits for a decision by its number (3 or #3).

Examples:
  picortexctl chats
  picortexctl set 3f2a…c1 attention=always memory=512M budget=5
  picortexctl allow 2
  picortexctl why 6b0d…e9
  picortexctl logs 3f2a…c1 -f
  picortexctl --json chats | jq '.[] | select(.access == \"pending\")'";

#[derive(Debug, Parser)]
#[command(
    name = "picortexctl",
    version,
    about = "Control the picortex gateway (org.picortex.Gateway1 on the system bus)",
    long_about = "Control the picortex gateway: list chats and what they cost, look at one chat's \
                  decisions and turns, answer the quarantine, change a chat's attention, memory \
                  limit, budget and permission mode, archive or remove a chat. A thin client of \
                  org.picortex.Gateway1; reading needs polkit's org.picortex.gateway.read, \
                  changing org.picortex.gateway.manage.",
    after_help = AFTER,
    after_long_help = format!("{AFTER}\n\n{EXIT_CODES}"),
)]
pub struct Cli {
    /// Print JSON (one document) instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// The gateway's state: chats by access, turns queued and running, replies waiting, today's
    /// cost.
    Status,
    /// Every chat: access, attention, memory limit, budget, today's cost, last activity.
    Chats,
    /// One chat in detail, with its recent gate decisions and turns.
    Chat {
        /// Chat id, or a waiting chat's number.
        chat: String,
    },
    /// Change a chat's settings: attention=MODE memory=SIZE budget=USD permission=MODE (each
    /// also takes "default"). Each value is checked by the same rule as the configuration file.
    Set {
        /// Chat id, or a waiting chat's number.
        chat: String,
        /// KEY=VALUE, one or more: attention (always, mentions-only, discriminate,
        /// discriminate-quiet, silent), memory (32M..64G), budget (USD a day, 0..10000, or off),
        /// permission (default, acceptEdits, plan, auto, dontAsk, bypassPermissions).
        #[arg(required = true, value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Chats waiting for the owner's decision (quarantine).
    Pending,
    /// Allow a chat: its waiting messages are answered.
    Allow {
        /// Chat id, or a waiting chat's number.
        chat: String,
    },
    /// Block a chat: nothing runs for it; its messages stay in the log.
    Block {
        /// Chat id, or a waiting chat's number.
        chat: String,
    },
    /// Requests of chats' agents for something of the owner's, waiting for an answer.
    Requests,
    /// Say yes to a request: the asking message runs again once with the file (or the import
    /// is carried out), as the owner's "yes N" would.
    Approve {
        /// The request's number (see `picortexctl requests`).
        number: i64,
        /// A standing grant: later turns of the chat get it too, until revoked.
        #[arg(long)]
        always: bool,
    },
    /// Say no to a request: the chat is told politely, nothing is shared.
    Deny {
        /// The request's number (see `picortexctl requests`).
        number: i64,
    },
    /// Archive a chat now (home tarred away, user locked; its next message restores it).
    Archive {
        /// Chat id.
        chat: String,
    },
    /// Remove a chat's user (its home archived first) and block the chat.
    Remove {
        /// Chat id.
        chat: String,
    },
    /// Start a fresh agent session for a chat.
    New {
        /// Chat id.
        chat: String,
    },
    /// Cost per chat.
    Cost {
        /// From when: today (UTC, the default), all, 7d, 12h, or a date like 2026-11-01.
        #[arg(long, default_value = "today")]
        since: String,
    },
    /// Why a message was (or was not) answered: the gate's decision, the turn, its outcome, the
    /// reply.
    Why {
        /// Linq's message id (as in the webhook, or `picortexctl chat`).
        message: String,
    },
    /// The chat's journal: the gateway's, the helper's and its turns' lines (runs journalctl;
    /// further arguments, e.g. -f or --since, are passed on).
    Logs {
        /// Chat id, or a waiting chat's number.
        chat: String,
        /// Passed to journalctl.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        journalctl_args: Vec<String>,
    },
    /// Check the configuration file (runs `picortexd --check-config`).
    CheckConfig {
        /// The file to check (default: picortexd's, /etc/picortex/picortexd.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write the man page or shell completions generated from this definition (packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

#[derive(Debug, Subcommand)]
pub enum Generate {
    /// picortexctl.1 into DIR.
    Man { dir: PathBuf },
    /// The completion script for SHELL on stdout.
    Completions { shell: clap_complete::Shell },
}
