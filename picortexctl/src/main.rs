//! picortexctl: the administrator's command for the picortex gateway, in the manner of
//! `resolvectl`/`timedatectl` — a thin client of `org.picortex.Gateway1` on the system bus.
//! Every decision (who may, what a value may be) is the gateway's; this program only asks, and
//! prints the answer as a table or as JSON. `picortexctl --help` lists the exit codes.

mod cli;
mod render;

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use picortex_proto::gateway::Gateway1Proxy;
use serde_json::{json, Value};

use cli::{Cli, Cmd, Generate};
use render::{cell, clip, own, pairs, records, size, table, usd, when};

/// Exit codes (documented in `cli::EXIT_CODES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Failed = 1,
    Usage = 2,
    NotFound = 3,
    Denied = 4,
    Unreachable = 5,
}

struct Fail(Exit, String);

impl From<zbus::Error> for Fail {
    fn from(e: zbus::Error) -> Self {
        use zbus::fdo::Error as F;
        match e {
            zbus::Error::FDO(f) => match *f {
                F::AccessDenied(m) | F::AuthFailed(m) | F::InteractiveAuthorizationRequired(m) => {
                    Fail(Exit::Denied, m)
                }
                F::InvalidArgs(m) => Fail(Exit::Usage, m),
                F::UnknownObject(m) => Fail(Exit::NotFound, m),
                F::ServiceUnknown(m) | F::NameHasNoOwner(m) | F::NoReply(m) => Fail(
                    Exit::Unreachable,
                    format!("the gateway is not running ({m}); try: systemctl start picortexd"),
                ),
                F::Failed(m) => Fail(Exit::Failed, m),
                other => Fail(Exit::Failed, other.to_string()),
            },
            zbus::Error::InputOutput(_) | zbus::Error::Address(_) | zbus::Error::Handshake(_) => {
                Fail(
                    Exit::Unreachable,
                    format!("cannot reach the system bus: {e}"),
                )
            }
            other => Fail(Exit::Failed, other.to_string()),
        }
    }
}

type R<T> = Result<T, Fail>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Generate { ref what } => generate(what),
        Cmd::CheckConfig { ref config } => check_config(config.as_deref()),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Fail(Exit::Failed, e.to_string()))
            .and_then(|rt| rt.block_on(run(&cli))),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("picortexctl: {msg}");
            ExitCode::from(code as u8)
        }
    }
}

fn generate(what: &Generate) -> R<()> {
    let io = |e: std::io::Error| Fail(Exit::Failed, e.to_string());
    match what {
        Generate::Man { dir } => {
            std::fs::create_dir_all(dir).map_err(io)?;
            let man = clap_mangen::Man::new(Cli::command());
            let mut buf = Vec::new();
            // The exit codes are in the long help, which the page carries.
            man.render(&mut buf).map_err(io)?;
            std::fs::write(dir.join("picortexctl.1"), buf).map_err(io)
        }
        Generate::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "picortexctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

/// `picortexd --check-config`: the gateway's own parser is the only judge of its file.
fn check_config(config: Option<&std::path::Path>) -> R<()> {
    let bin = std::env::var_os("PICORTEXD").unwrap_or_else(|| "picortexd".into());
    let mut c = std::process::Command::new(&bin);
    c.arg("--check-config");
    if let Some(p) = config {
        c.arg("--config").arg(p);
    }
    let e = c.exec();
    Err(Fail(
        Exit::Failed,
        format!("cannot run {}: {e}", bin.to_string_lossy()),
    ))
}

async fn run(cli: &Cli) -> R<()> {
    let conn = zbus::Connection::system().await?;
    let gw = Gateway1Proxy::new(&conn).await?;
    let out = |human: String, json: Value| {
        if cli.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
        } else if !human.is_empty() {
            println!("{human}");
        }
    };
    match &cli.command {
        Cmd::Status => {
            let s = render::record(&gw.stats().await?);
            let n = |k: &str| cell(&s, k);
            out(
                pairs(&[
                    ("Gateway", format!("picortexd {}", n("version"))),
                    (
                        "Chats",
                        format!(
                            "{} ({} allowed, {} waiting, {} blocked, {} archived)",
                            n("chats"),
                            n("chats_allowed"),
                            n("chats_pending"),
                            n("chats_blocked"),
                            n("chats_archived")
                        ),
                    ),
                    (
                        "Turns",
                        format!(
                            "{} running, {} queued, {} held for approval",
                            n("turns_running"),
                            n("turns_queued"),
                            n("turns_held")
                        ),
                    ),
                    (
                        "Today (UTC)",
                        format!(
                            "{} turns, {} failed, {}",
                            n("turns_today"),
                            n("turns_failed_today"),
                            usd(&s, "cost_today_usd")
                        ),
                    ),
                    ("Replies waiting", n("replies_pending")),
                ]),
                s,
            );
        }
        Cmd::Chats => {
            let v = records(&gw.list_chats().await?);
            let rows: Vec<Vec<String>> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    vec![
                        cell(c, "id"),
                        cell(c, "kind"),
                        match c.get("pending_no").and_then(Value::as_i64) {
                            Some(n) if cell(c, "access") == "pending" => format!("pending #{n}"),
                            _ => cell(c, "access"),
                        },
                        own(cell(c, "attention"), c, "attention_own"),
                        own(size(c, "memory_max"), c, "memory_max_own"),
                        own(usd(c, "daily_budget_usd"), c, "daily_budget_own"),
                        usd(c, "cost_today_usd"),
                        when(c, "last_activity_ms"),
                        clip(&cell(c, "name"), 30),
                    ]
                })
                .collect();
            let n = rows.len();
            out(
                format!(
                    "{}\n\n{n} chat{}; * = the chat's own setting (else the default).",
                    table(
                        &[
                            "CHAT",
                            "KIND",
                            "ACCESS",
                            "ATTENTION",
                            "MEMORY",
                            "BUDGET",
                            "TODAY",
                            "LAST ACTIVITY",
                            "NAME"
                        ],
                        &rows
                    ),
                    if n == 1 { "" } else { "s" }
                ),
                v,
            );
        }
        Cmd::Chat { chat } => {
            let (c, ds, ts) = gw.get_chat(chat).await?;
            let (c, ds, ts) = (render::record(&c), records(&ds), records(&ts));
            let mut human = pairs(&[
                ("Chat", cell(&c, "id")),
                ("Kind", cell(&c, "kind")),
                ("Name", cell(&c, "name")),
                (
                    "Access",
                    format!("{} ({})", cell(&c, "access"), cell(&c, "access_reason")),
                ),
                ("Attention", own(cell(&c, "attention"), &c, "attention_own")),
                (
                    "Memory limit",
                    own(size(&c, "memory_max"), &c, "memory_max_own"),
                ),
                (
                    "Permission mode",
                    own(cell(&c, "permission_mode"), &c, "permission_mode_own"),
                ),
                (
                    "Daily budget",
                    own(usd(&c, "daily_budget_usd"), &c, "daily_budget_own"),
                ),
                ("Spent today", usd(&c, "cost_today_usd")),
                (
                    "Turns",
                    format!(
                        "{} running, {} queued, {} held",
                        cell(&c, "turns_running"),
                        cell(&c, "turns_queued"),
                        cell(&c, "turns_held")
                    ),
                ),
                ("User", cell(&c, "unix_user")),
                ("Archived", cell(&c, "archived")),
                ("Session", cell(&c, "session_id")),
                ("Last activity", when(&c, "last_activity_ms")),
            ]);
            human.push_str("\n\nRecent decisions:\n");
            human.push_str(&decisions_table(&ds));
            human.push_str("\n\nRecent turns:\n");
            human.push_str(&turns_table(&ts));
            out(human, json!({"chat": c, "decisions": ds, "turns": ts}));
        }
        Cmd::Set { chat, settings } => {
            let mut done = Vec::new();
            // All keys are checked for spelling before any is applied.
            let parsed = settings
                .iter()
                .map(|kv| parse_setting(kv))
                .collect::<Result<Vec<_>, _>>()?;
            for (key, value) in parsed {
                let r = match key {
                    Key::Attention => gw.set_attention(chat, &value).await,
                    Key::Memory => gw.set_memory_max(chat, &value).await,
                    Key::Budget => gw.set_budget(chat, &value).await,
                    Key::Permission => gw.set_permission_mode(chat, &value).await,
                };
                match r {
                    Ok(m) => done.push(m),
                    Err(e) => {
                        let Fail(code, m) = Fail::from(e);
                        for d in &done {
                            println!("{d}");
                        }
                        return Err(Fail(code, format!("{}={value}: {m}", key.name())));
                    }
                }
            }
            out(done.join("\n"), json!({"chat": chat, "results": done}));
        }
        Cmd::Pending => {
            let v = records(&gw.list_pending().await?);
            let rows: Vec<Vec<String>> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    vec![
                        format!("#{}", cell(p, "number")),
                        cell(p, "chat"),
                        cell(p, "kind"),
                        cell(p, "turns_held"),
                        when(p, "waiting_since_ms"),
                        clip(&cell(p, "members"), 40),
                        clip(&cell(p, "first_message"), 50),
                    ]
                })
                .collect();
            let human = if rows.is_empty() {
                "Nothing is waiting for a decision.".to_owned()
            } else {
                format!(
                    "{}\n\nAnswer with: picortexctl allow|block <number>",
                    table(
                        &[
                            "NO",
                            "CHAT",
                            "KIND",
                            "HELD",
                            "WAITING SINCE",
                            "MEMBERS",
                            "FIRST MESSAGE"
                        ],
                        &rows
                    )
                )
            };
            out(human, v);
        }
        Cmd::Allow { chat } => {
            let m = gw.allow(chat).await?;
            out(m.clone(), json!({"chat": chat, "result": m}));
        }
        Cmd::Block { chat } => {
            let m = gw.block(chat).await?;
            out(m.clone(), json!({"chat": chat, "result": m}));
        }
        Cmd::Requests => {
            let v = records(&gw.list_requests().await?);
            let rows: Vec<Vec<String>> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    vec![
                        format!("#{}", cell(r, "number")),
                        cell(r, "chat"),
                        cell(r, "kind"),
                        clip(&cell(r, "path"), 40),
                        cell(r, "asked_by"),
                        when(r, "expires_ms"),
                        clip(&cell(r, "why"), 50),
                    ]
                })
                .collect();
            let human = if rows.is_empty() {
                "No request is waiting for an answer.".to_owned()
            } else {
                format!(
                    "{}\n\nAnswer with: picortexctl approve [--always] <number> | deny <number>",
                    table(
                        &["NO", "CHAT", "KIND", "PATH", "ASKED BY", "EXPIRES", "WHY"],
                        &rows
                    )
                )
            };
            out(human, v);
        }
        Cmd::Approve { number, always } => {
            let answer = if *always { "always" } else { "yes" };
            let m = gw.answer_request(*number, answer).await?;
            out(
                m.clone(),
                json!({"request": number, "answer": answer, "result": m}),
            );
        }
        Cmd::Deny { number } => {
            let m = gw.answer_request(*number, "no").await?;
            out(
                m.clone(),
                json!({"request": number, "answer": "no", "result": m}),
            );
        }
        Cmd::Archive { chat } => {
            let p = gw.archive(chat).await?;
            out(
                format!("Archived {chat} to {p}."),
                json!({"chat": chat, "archive": p}),
            );
        }
        Cmd::Remove { chat } => {
            let p = gw.remove(chat).await?;
            let kept = if p.is_empty() {
                "nothing to keep".to_owned()
            } else {
                format!("home archived to {p}")
            };
            out(
                format!("Removed {chat}'s user ({kept}); the chat is blocked."),
                json!({"chat": chat, "archive": p}),
            );
        }
        Cmd::New { chat } => {
            let m = gw.new_session(chat).await?;
            out(m.clone(), json!({"chat": chat, "result": m}));
        }
        Cmd::Cost { since } => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
            let from = render::since_ms(since, now).map_err(|e| Fail(Exit::Usage, e))?;
            let v = records(&gw.cost(from).await?);
            let list: Vec<&Value> = v.as_array().into_iter().flatten().collect();
            let total: f64 = list
                .iter()
                .filter_map(|c| c.get("cost_usd").and_then(Value::as_f64))
                .sum();
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    vec![
                        cell(c, "chat"),
                        cell(c, "turns"),
                        usd(c, "cost_usd"),
                        clip(&cell(c, "name"), 30),
                    ]
                })
                .collect();
            out(
                format!(
                    "{}\n\nTotal since {}: ${total:.4}",
                    table(&["CHAT", "TURNS", "COST", "NAME"], &rows),
                    render::time_ms(from)
                ),
                json!({"since_ms": from, "total_usd": total, "chats": v}),
            );
        }
        Cmd::Why { message } => {
            let (m, ds, ts, replies) = gw.why(message).await?;
            let (m, ds, ts) = (render::record(&m), records(&ds), records(&ts));
            let mut human = pairs(&[
                ("Message", cell(&m, "id")),
                ("Chat", cell(&m, "chat")),
                (
                    "From",
                    format!("{} ({})", cell(&m, "sender"), cell(&m, "direction")),
                ),
                ("At", when(&m, "at_ms")),
                ("Text", clip(&cell(&m, "text"), 100)),
            ]);
            human.push_str("\n\nGate:\n");
            human.push_str(&decisions_table(&ds));
            human.push_str("\n\nTurns:\n");
            human.push_str(&turns_table(&ts));
            human.push_str("\n\nReply:\n");
            if replies.is_empty() {
                human.push_str("(none)");
            } else {
                human.push_str(&replies.join("\n"));
            }
            out(
                human,
                json!({"message": m, "decisions": ds, "turns": ts, "replies": replies}),
            );
        }
        Cmd::Logs {
            chat,
            journalctl_args,
        } => {
            // A number names a waiting chat: ask the gateway which.
            let id = if chat
                .trim_start_matches('#')
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                let (c, _, _) = gw.get_chat(chat).await?;
                cell(&render::record(&c), "id")
            } else {
                chat.clone()
            };
            // Every journal: the system's (gateway, helper) and the turns' own (LogNamespace=).
            let e = std::process::Command::new("journalctl")
                .arg("--namespace=*")
                .arg(format!("PICORTEX_CHAT={id}"))
                .args(journalctl_args)
                .exec();
            return Err(Fail(Exit::Failed, format!("cannot run journalctl: {e}")));
        }
        Cmd::CheckConfig { .. } | Cmd::Generate { .. } => unreachable!("handled before the bus"),
    }
    Ok(())
}

fn decisions_table(ds: &Value) -> String {
    let rows: Vec<Vec<String>> = ds
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            vec![
                when(d, "at_ms"),
                cell(d, "message"),
                cell(d, "verdict"),
                cell(d, "rule"),
                cell(d, "mode"),
                clip(&cell(d, "reason"), 70),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "(none)".into();
    }
    table(
        &["AT", "MESSAGE", "VERDICT", "RULE", "MODE", "REASON"],
        &rows,
    )
}

fn turns_table(ts: &Value) -> String {
    let rows: Vec<Vec<String>> = ts
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            vec![
                when(t, "created_ms"),
                cell(t, "id"),
                cell(t, "kind"),
                cell(t, "status"),
                cell(t, "outcome"),
                usd(t, "cost_usd"),
                clip(&cell(t, "error"), 60),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "(none)".into();
    }
    table(
        &[
            "CREATED", "TURN", "KIND", "STATUS", "OUTCOME", "COST", "ERROR",
        ],
        &rows,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Attention,
    Memory,
    Budget,
    Permission,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Attention => "attention",
            Key::Memory => "memory",
            Key::Budget => "budget",
            Key::Permission => "permission",
        }
    }
}

/// `key=value` for `set`; the value itself is the gateway's to judge.
fn parse_setting(kv: &str) -> R<(Key, String)> {
    let usage = || {
        Fail(
            Exit::Usage,
            format!("{kv:?}: use KEY=VALUE with KEY one of attention, memory, budget, permission"),
        )
    };
    let (k, v) = kv.split_once('=').ok_or_else(usage)?;
    let key = match k.trim().to_ascii_lowercase().as_str() {
        "attention" => Key::Attention,
        "memory" | "memory_max" | "memorymax" => Key::Memory,
        "budget" | "daily_budget" | "daily_budget_usd" => Key::Budget,
        "permission" | "permission_mode" => Key::Permission,
        _ => return Err(usage()),
    };
    Ok((key, v.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_key_value() {
        assert_eq!(
            parse_setting("memory=512M").ok().map(|x| x.0),
            Some(Key::Memory)
        );
        assert_eq!(
            parse_setting("Attention = always").ok(),
            Some((Key::Attention, "always".into()))
        );
        assert!(parse_setting("colour=blue").is_err());
        assert!(parse_setting("memory").is_err());
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
