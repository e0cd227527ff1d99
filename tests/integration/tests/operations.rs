//! Issue 9 ("Operated like a systemd component"), the operations half: a wrong configuration
//! or a missing credential stops the gateway with one clear line and leaves its socket
//! listening (done-when 2); `systemctl reload` applies what it can and refuses a wrong file;
//! work resumes after a stop without any new webhook (done-when 4); a second gateway on the
//! same state directory refuses to start and the live turns finish (done-when 5).

use std::time::Duration;

use picortex_integration::{json, Machine};

const T: Duration = Duration::from_secs(60);
const CONFIG: &str = "/etc/picortex/picortexd.toml";

fn prop(m: &Machine, unit: &str, p: &str) -> String {
    m.ok(&format!("systemctl show -P {p} {unit}"))
        .trim()
        .to_owned()
}

/// Start picortexd (it fails), and wait until systemd has recorded that.
fn start_fails(m: &Machine) {
    let o = m.sh("systemctl start picortexd.service");
    assert_ne!(o.code, 0, "picortexd started with a bad configuration");
    m.wait_for("picortexd failed", T, || {
        (prop(m, "picortexd.service", "ActiveState") == "failed").then_some(())
    });
}

/// After a refused start: exit 78 and no restart; the reason is picortexd's last line in
/// `systemctl status` (only systemd's own notes of the exit follow it) and its Status: line;
/// and picortexd.socket still listens (a connection is accepted).
fn assert_refused_with(m: &Machine, needle: &str) {
    assert_eq!(prop(m, "picortexd.service", "ExecMainStatus"), "78");
    assert_eq!(prop(m, "picortexd.service", "NRestarts"), "0");
    // journald takes in picortexd's stderr stream and systemd's notes of the exit through
    // different sockets: the refusal can reach the journal after the unit has failed.
    let status = m.wait_for("picortexd's own line in systemctl status", T, || {
        let s = m
            .sh("systemctl status --no-pager -l -n 30 picortexd.service")
            .stdout;
        s.lines().any(|l| l.contains(" picortexd[")).then_some(s)
    });
    let lines: Vec<&str> = status.lines().collect();
    let last_own = lines
        .iter()
        .rposition(|l| l.contains(" picortexd["))
        .expect("waited for above");
    assert!(
        lines[last_own].contains(needle),
        "picortexd's last line is not about {needle:?}:\n{status}"
    );
    assert!(
        lines[last_own + 1..]
            .iter()
            .all(|l| l.contains(" systemd[1]: ")),
        "something other than systemd's exit notes follows:\n{status}"
    );
    let status_line = lines
        .iter()
        .find(|l| l.trim_start().starts_with("Status:"))
        .unwrap_or_else(|| panic!("no Status: line in:\n{status}"));
    assert!(status_line.contains(needle), "{status_line}");
    assert_eq!(prop(m, "picortexd.socket", "ActiveState"), "active");
    // The socket accepts (systemd tries the service again, which fails the same way).
    m.ok("exec 3<>/dev/tcp/127.0.0.1/8470 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3; timeout 5 cat <&3 >/dev/null; true");
    m.wait_for("the triggered start to fail too", T, || {
        (prop(m, "picortexd.service", "ActiveState") == "failed").then_some(())
    });
    assert_eq!(prop(m, "picortexd.socket", "ActiveState"), "active");
}

#[test]
fn a_bad_configuration_says_where_and_leaves_the_socket_listening() {
    let m = Machine::boot();
    m.start_picortex();
    let good = m.read(CONFIG);
    let sim = m.sim();
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "turns",
            "memory_max",
            "\"lots\"",
            ": turns.memory_max: \"lots\" is not a size: must be between 32M and 64G",
        ),
        (
            "agent",
            "comand",
            "\"claude\"",
            ": [agent] unknown field `comand`, expected one of `command`",
        ),
        (
            "sandbox",
            "egres",
            "\"allowlist\"",
            ": [sandbox] unknown field `egres`, expected one of `egress`",
        ),
        (
            "turns",
            "permission_mode",
            "\"yolo\"",
            ": turns.permission_mode: \"yolo\" is not a permission mode: use one of default",
        ),
    ];
    for (section, key, value, msg) in cases {
        std::fs::write(m.path(CONFIG), &good).unwrap();
        m.set_config(section, key, value);
        // Its line in the file, as the message must give it.
        let text = m.read(CONFIG);
        let line = text
            .lines()
            .position(|l| l.starts_with(&format!("{key} = {value}")))
            .expect("the line just written")
            + 1;
        m.sh("systemctl stop picortexd.service; systemctl reset-failed picortexd.service");
        start_fails(&m);
        assert_refused_with(&m, &format!("{CONFIG}:{line}:"));
        assert_refused_with(&m, msg);
        // --check-config says the same, and exits 78.
        let o = m.sh(&format!("picortexd --check-config --config {CONFIG}"));
        assert_eq!(o.code, 78, "{}{}", o.stdout, o.stderr);
        assert!(
            o.stderr.contains(&format!("{CONFIG}:{line}:")) && o.stderr.contains(msg),
            "{}",
            o.stderr
        );
    }

    // A missing credential is named.
    std::fs::write(m.path(CONFIG), &good).unwrap();
    m.ok("mv /etc/picortex/credentials/linq-token /root/linq-token");
    m.sh("systemctl reset-failed picortexd.service");
    start_fails(&m);
    assert_refused_with(
        &m,
        "credential linq-token is missing: /etc/picortex/credentials/linq-token",
    );

    // `journalctl -x` explains it (the catalog `make install` ships).
    m.ok("journalctl --update-catalog");
    let x = m.sh("journalctl -x --no-pager SYSLOG_IDENTIFIER=picortexd MESSAGE_ID=5a0b2f8e7c3d4b6a9e1f0c2d3b4a5968").stdout;
    assert!(
        x.contains("Subject: picortex: the configuration or a credential is wrong")
            && x.contains("credential linq-token is missing"),
        "{x}"
    );

    // Put right, it starts and answers.
    m.ok("mv /root/linq-token /etc/picortex/credentials/linq-token && picortexd --check-config");
    m.ok("systemctl reset-failed picortexd.service; systemctl start picortexd.service");
    let r = sim.text("+15550009001", None, "hello after the fix");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    m.wait_replies(&chat, 1, T);
}

#[test]
fn reload_applies_what_it_can_and_refuses_a_wrong_file() {
    let m = Machine::boot();
    m.start_picortex();
    m.ok("systemctl start picortexd.service");
    let pid = prop(&m, "picortexd.service", "MainPID");
    let good = m.read(CONFIG);

    // A wrong file: the reload is refused with the reason, the service runs on unchanged.
    m.set_config("turns", "memory_max", "\"lots\"");
    let o = m.sh("systemctl reload picortexd.service");
    assert_ne!(o.code, 0);
    assert_eq!(prop(&m, "picortexd.service", "ActiveState"), "active");
    assert_eq!(prop(&m, "picortexd.service", "MainPID"), pid);
    let j = m.journal("-u picortexd.service");
    assert!(
        j.contains("turns.memory_max: \"lots\" is not a size"),
        "{j}"
    );

    // A good one: live keys apply, restart-only keys are named.
    std::fs::write(m.path(CONFIG), &good).unwrap();
    m.set_config("turns", "memory_max", "\"512M\"");
    m.set_config("owner", "handles", "[\"+15550009999\"]");
    m.ok("systemctl reload picortexd.service");
    m.wait_for("the reload logged", T, || {
        m.journal("-u picortexd.service")
            .lines()
            .find(|l| l.contains("configuration reloaded"))
            .map(str::to_owned)
    });
    let j = m.journal("-u picortexd.service");
    assert!(
        j.contains("apply only after `systemctl restart picortexd`: owner.handles"),
        "{j}"
    );
    assert_eq!(prop(&m, "picortexd.service", "MainPID"), pid);
    // The new memory limit is what the next turn's slice gets.
    let sim = m.sim();
    let r = sim.text("+15550009002", None, "#sleep=3 after the reload");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    let tag = picortex_integration::chat_tag(&chat);
    let mem = m.wait_for("the chat's slice", T, || {
        let v = m
            .sh(&format!(
                "systemctl show -P MemoryMax picortex-chat-{tag}.slice"
            ))
            .stdout
            .trim()
            .to_owned();
        (v == (512u64 << 20).to_string()).then_some(v)
    });
    assert_eq!(mem, (512u64 << 20).to_string());
    m.wait_replies(&chat, 1, T);
}

/// Done-when 4: a reply pending when picortexd stops goes out, exactly once, when it starts
/// again the way it does at boot (multi-user.target wants it), with no new webhook.
#[test]
fn a_pending_reply_goes_out_after_a_stop_without_any_webhook() {
    let m = Machine::boot();
    m.without_spares();
    m.start_picortex();
    let sim = m.sim();
    assert_eq!(
        m.sh("systemctl is-enabled picortexd.service").stdout.trim(),
        "enabled",
        "enabling the socket must enable the service for boot"
    );
    sim.faults(json!({ "api_down": true }));
    let r = sim.text("+15550009003", None, "answer me after the outage");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    m.wait_for("a reply waiting in the outbox", T, || {
        (m.sql_n("SELECT COUNT(*) FROM outbox WHERE status = 'pending'") > 0).then_some(())
    });
    m.ok("systemctl stop picortexd.service");
    assert!(sim.sent(&chat).is_empty());
    sim.clear_faults();
    // Webhooks of new messages (not Linq's status events about the bot's own sends).
    let inbound = || {
        sim.get("/control/deliveries").as_array().map(|d| {
            d.iter()
                .filter(|d| d["event_type"] == "message.received")
                .count()
        })
    };
    let deliveries = inbound();
    // Boot, as far as picortexd is concerned: multi-user.target pulls it in again.
    m.ok("systemctl start multi-user.target");
    let sent = m.wait_replies(&chat, 1, T);
    assert!(
        sent[0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("answer me after the outage"),
        "{sent:?}"
    );
    m.wait_settled(T);
    assert_eq!(
        sim.sent(&chat).len(),
        1,
        "the reply went out more than once"
    );
    assert_eq!(inbound(), deliveries, "a webhook was delivered meanwhile");
}

/// Done-when 5: a second picortexd on the live state directory (the README's development
/// command, as the gateway's user) refuses to start, saying why, and the live turn finishes.
#[test]
fn a_second_instance_refuses_and_the_live_turn_finishes() {
    let m = Machine::boot();
    m.without_spares();
    m.start_picortex();
    let sim = m.sim();
    let r = sim.text("+15550009000", None, "#sleep=6 a long one");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    m.wait_for("the turn running", T, || {
        (m.sql_n("SELECT COUNT(*) FROM turns WHERE status = 'running'") > 0).then_some(())
    });
    m.ok("mkdir -p /root/creds && cp /etc/picortex/credentials/linq-* /root/creds/ && chown -R picortex /root/creds && chmod 755 /root");
    let o = m.sh("setpriv --reuid=picortex --regid=picortex --clear-groups env -u INVOCATION_ID -u JOURNAL_STREAM timeout 20 /usr/bin/picortexd --listen 127.0.0.1:8479 --credentials-dir /root/creds --state-dir /var/lib/picortex");
    assert_ne!(
        o.code, 0,
        "the second instance ran: {}{}",
        o.stdout, o.stderr
    );
    assert_ne!(
        o.code, 124,
        "the second instance ran until killed: {}",
        o.stderr
    );
    assert!(
        o.stderr.contains("another picortexd (pid")
            && o.stderr.contains("is running on /var/lib/picortex"),
        "{}",
        o.stderr
    );
    let sent = m.wait_replies(&chat, 1, T);
    assert!(
        !sent[0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted"),
        "{sent:?}"
    );
    m.wait_settled(T);
    assert_eq!(
        m.sql(&format!(
            "SELECT status || ' ' || outcome FROM turns WHERE chat_id = '{chat}'"
        )),
        "done ok"
    );
}

/// `picortexd --backup DIR` as root while the service runs: the log (with the chat), the
/// helper's registry entry and the chat user's record, and a RESTORE.txt.
#[test]
fn a_backup_while_running_holds_what_a_restore_needs() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();
    let r = sim.text("+15550009001", None, "remember me");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    m.wait_replies(&chat, 1, T);
    let tag = picortex_integration::chat_tag(&chat);
    let out = m.ok("picortexd --backup /root/bk");
    assert!(out.contains("provision-registry/ (1 chats"), "{out}");
    let dir = m.ok("ls -d /root/bk/picortex-backup-*").trim().to_owned();
    assert_eq!(
        m.ok(&format!(
            "sqlite3 {dir}/picortex.db \"SELECT COUNT(*) FROM chats WHERE id = '{chat}'\""
        ))
        .trim(),
        "1"
    );
    assert!(m.path(&format!("{dir}/provision-registry/{tag}")).is_file());
    // The chat's user is a record of /etc/userdb (not a line of /etc/passwd), and so is its copy.
    let record = m.read(&format!("{dir}/userdb/chat-{tag}.user"));
    assert!(
        record.contains(&format!("\"userName\":\"chat-{tag}\"")),
        "{record}"
    );
    assert!(!m.read("/etc/passwd").contains(&format!("chat-{tag}")));
    assert!(m
        .read(&format!("{dir}/RESTORE.txt"))
        .contains("/var/lib/picortex/chats"));
    // The service ran on undisturbed.
    assert_eq!(prop(&m, "picortexd.service", "ActiveState"), "active");
}
