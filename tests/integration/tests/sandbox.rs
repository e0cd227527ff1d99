//! Issue "Chats that cannot reach each other" (SPEC P2, T1): a hostile agent attacks from inside
//! real turns (the stand-in's `#attack`), a memory bomb takes down only its own turn, and the
//! turn unit's sandbox is what systemd says it is.

use std::time::Duration;

use picortex_integration::{chat_tag, json, Machine};
use serde_json::Value;

const OWNER: &str = "+15550002000";
const FRIEND: &str = "+15550003000";
const T: Duration = Duration::from_secs(90);
/// The test configuration's memory_max (tests/harness/stage-extras.sh).
const MEMORY_MAX: u64 = 256 << 20;

/// Attacks whose fix is outside the turn unit's properties, with what fixes it. They are
/// reported loudly but do not fail the test; once fixed they must stay blocked like the rest.
const KNOWN_OPEN: &[(&str, &str)] = &[];

/// Every kind of attack the issue asks for, by the stand-in's names (tests/claude-standin/src/attack.rs).
const REQUIRED: &[&str] = &[
    "read_other_home",
    "read_other_view",
    "list_chats",
    "read_database",
    "read_gateway_credentials",
    "read_turn_credentials",
    "see_processes",
    "ptrace_foreign",
    "write_outside_home",
    "setuid_exec",
    "chmod_suid",
    "fork_bomb",
    "connect_gateway",
    "connect_linq_sim",
    "connect_loopback",
    "system_bus_set_unit_properties",
    "cgroup_limits",
    "io_uring",
    "userfaultfd",
    "kernel_keyring",
    "abstract_unix",
    "connect_host_address",
    "read_config",
    "other_chat_in_run",
    "other_chat_in_cgroupfs",
    "other_chat_in_proc_net",
    "other_chat_in_etc",
    "other_chat_in_var_tmp",
    "foreign_sockets_in_proc_net",
    "egress_to_the_host",
];

/// Addresses of the test machine that are neither loopback nor private, as a host's public
/// ones would be (documentation ranges), with a root service listening on each.
const HOST_V4: &str = "192.0.2.10";
const HOST_V6: &str = "2001:db8::10";
const HOST_PORT: u16 = 8471;

/// Give the machine (its own network namespace) an interface with `HOST_V4` and `HOST_V6`,
/// and a root HTTP server on each.
fn host_addresses_with_listeners(m: &Machine) {
    m.ok(&format!(
        "ip link add pc0 type bridge && ip addr add {HOST_V4}/24 dev pc0 && \
         ip -6 addr add {HOST_V6}/64 dev pc0 nodad && ip link set pc0 up"
    ));
    for (unit, addr) in [("host-listener4", HOST_V4), ("host-listener6", HOST_V6)] {
        m.ok(&format!(
            "systemd-run -q -u {unit} -p Type=exec /usr/bin/python3 -m http.server --bind {addr} {HOST_PORT}"
        ));
    }
    m.wait_for("the host listeners", T, || {
        let n = m
            .sh(&format!("ss -Hltn 'sport = :{HOST_PORT}' | wc -l"))
            .stdout;
        (n.trim() == "2").then_some(())
    });
}

/// A group with the owner and a friend, opened by a message that mentions the bot.
fn open_group(m: &Machine, text: &str) -> String {
    let r = m.sim().post("/control/inbound", json!({"from": OWNER, "group": true, "participants": [FRIEND], "mentions_me": true, "text": text}));
    r["chat_id"].as_str().expect("chat_id").to_owned()
}

fn group_text(m: &Machine, chat: &str, text: &str) {
    m.sim().post(
        "/control/inbound",
        json!({"from": OWNER, "chat_id": chat, "mentions_me": true, "text": text}),
    );
}

/// The attack report among the bot's messages from index `from` on; a long reply may have been
/// split into several messages.
fn attack_report(m: &Machine, chat: &str, from: usize) -> Vec<Value> {
    let sim = m.sim();
    m.wait_for(&format!("an attack report in chat {chat}"), T, || {
        let sent = sim.sent(chat);
        let texts: Vec<&str> = sent
            .iter()
            .skip(from)
            .filter_map(|s| s["text"].as_str())
            .collect();
        [texts.concat(), texts.join(" ")].iter().find_map(|all| {
            let json = all.split_once("standin: attack report ")?.1;
            match serde_json::from_str::<Value>(json.trim()) {
                Ok(Value::Array(a)) => Some(a),
                _ => None,
            }
        })
    })
}

/// Asserts every attack was blocked (bar the known-open ones, which are printed) and that the
/// report has every required attack and at least 12 in all. Returns the report by name.
fn assert_all_blocked(who: &str, report: &[Value]) -> std::collections::HashMap<String, Value> {
    assert_blocked_but(who, report, &[])
}

/// As `assert_all_blocked`, with `open` more attacks that may get through in this report, with why.
fn assert_blocked_but(
    who: &str,
    report: &[Value],
    open_here: &[(&str, &str)],
) -> std::collections::HashMap<String, Value> {
    eprintln!("---- attack report of {who} ----");
    for a in report {
        eprintln!(
            "{:5} {:32} {}",
            a["blocked"],
            a["name"].as_str().unwrap_or("?"),
            a["detail"].as_str().unwrap_or("")
        );
    }
    let by_name: std::collections::HashMap<String, Value> = report
        .iter()
        .filter_map(|a| Some((a["name"].as_str()?.to_owned(), a.clone())))
        .collect();
    assert!(
        report.len() >= 12,
        "{who}: only {} attacks reported",
        report.len()
    );
    for r in REQUIRED {
        assert!(
            by_name.contains_key(*r),
            "{who}: no {r} attack in the report"
        );
    }
    let mut open = Vec::new();
    for a in report {
        let name = a["name"].as_str().unwrap_or("?");
        assert!(
            a["blocked"].is_boolean() && a["detail"].is_string(),
            "{who}: malformed entry {a}"
        );
        if a["blocked"] == true {
            continue;
        }
        match KNOWN_OPEN.iter().chain(open_here).find(|(n, _)| *n == name) {
            Some((_, why)) => eprintln!(
                "WARNING: {who}: {name} is not blocked ({}): {why}",
                a["detail"]
            ),
            None => open.push(format!("{name}: {}", a["detail"])),
        }
    }
    assert!(
        open.is_empty(),
        "{who}: attacks that got through:\n{}",
        open.join("\n")
    );
    by_name
}

#[test]
fn attacks_from_inside_a_turn_are_all_blocked() {
    let m = Machine::boot();
    // Turns get the agent's key, so there is something of another chat's to steal.
    std::fs::write(
        m.path("/etc/picortex/credentials/anthropic-api-key"),
        "sk-ant-test-sandbox-0000",
    )
    .unwrap();
    m.ok("chmod 600 /etc/picortex/credentials/anthropic-api-key");
    host_addresses_with_listeners(&m);
    m.start_picortex();

    // Chat A (the owner's DM) exists; chat B (a group) attacks first, A's home among its
    // targets, and leaves markers in every place files could be shared through, which A's
    // attack then looks for.
    let a_first = m.sim().text(OWNER, None, "hello");
    let a = a_first["chat_id"].as_str().expect("chat_id").to_owned();
    let tag_a = chat_tag(&a);
    let home_a = format!("/var/lib/picortex/chats/{tag_a}");
    m.wait_replies(&a, 1, T);
    // A's spare runs (its sandbox, with its view of the user database, built) before B's user
    // is created: the case where a rename of /etc/passwd (useradd's) would detach that view.
    let spare_a = m.wait_spare(Some(&tag_a), T);
    let hosts = format!("hosts={HOST_V4},{HOST_V6}");
    let b = open_group(
        &m,
        &format!("Cortex #attack other={home_a} seek={a} {hosts}"),
    );
    let tag_b = chat_tag(&b);
    assert_ne!(tag_a, tag_b);
    let rb = assert_all_blocked("chat B", &attack_report(&m, &b, 0));
    let home_b = format!("/var/lib/picortex/chats/{tag_b}");
    assert_eq!(
        m.ok(&format!("stat -c %a {home_a} {home_b}")).trim(),
        "700\n700"
    );

    // B keeps a turn running (with its credential's placeholder in its view) while A attacks,
    // listening on an abstract Unix socket and on loopback, and with a file in its /dev/shm.
    const HOLD: &str = "picortex-hold-b";
    let busy = format!("Cortex #sleep=12 #hold={HOLD} busy");
    group_text(&m, &b, &busy);
    let unit_b = m.wait_running_turn(Some(&tag_b), T);
    let turn_b = unit_b
        .trim_start_matches("picortex-turn-")
        .trim_end_matches(".service")
        .to_owned();
    m.ok(&format!(
        "test -f /var/lib/picortex-provision/views/{tag_b}/etc/anthropic-api-key"
    ));
    // B's listeners are in its own network namespace: seen through its process, not the host's.
    // (Any of B's processes: the busy turn may have gone to B's spare, and a new spare started.)
    m.wait_for("B's abstract and TCP listeners", T, || {
        m.sh(&format!(
            "for p in $(pgrep -u chat-{tag_b}); do grep -q ' @{HOLD}$' /proc/$p/net/unix && \
               grep -q ':BB7F 00000000:0000 0A' /proc/$p/net/tcp && exit 0; done; exit 1"
        ))
        .code
        .eq(&0)
        .then_some(())
    });
    assert_ne!(
        m.sh(&format!("grep -q ' @{HOLD}$' /proc/net/unix")).code,
        0,
        "B's abstract socket is in the host's network namespace"
    );
    let before = m.sim().sent(&b).len();

    m.sim().text(
        OWNER,
        Some(&a),
        &format!("#attack other={home_b} abstract={HOLD} seek={b},{turn_b} {hosts}"),
    );
    // A's spare started before B's user existed, and A's attack runs in it: B's user is a
    // record of /etc/userdb (hidden in turns), so creating it replaced nothing mounted in A's
    // sandbox, and A, running since before B existed, sees none of B (B's own attack above, from
    // a turn started after both chats existed, saw nothing either). With chat users in
    // /etc/passwd, useradd's rename detached the spare's view and the real file showed through.
    let ra = assert_blocked_but("chat A", &attack_report(&m, &a, 1), &[]);
    let handed_back = m.journal(&format!(
        "SYSLOG_IDENTIFIER=picortexd PICORTEX_CHAT={a} | grep -c 'no longer had its own view of the user database' || true"
    ));
    assert_eq!(handed_back.trim(), "0", "A's spare lost its view");
    let ran = m.journal(&format!(
        "_SYSTEMD_UNIT={spare_a} | grep -c 'turn started' || true"
    ));
    assert_eq!(
        ran.trim(),
        "1",
        "A's attack did not run in its spare {spare_a}"
    );
    assert!(!m.read("/etc/passwd").contains("chat-"));
    // The probes met what they looked for: B's listener (not in A's network namespace at all;
    // were it, Landlock's scope would refuse it, EPERM) and the host's own addresses.
    let abs = ra["abstract_unix"]["detail"].as_str().unwrap_or("");
    assert!(
        abs.starts_with(&format!("@{HOLD}: ECONNREFUSED"))
            || abs.starts_with(&format!("@{HOLD}: EPERM")),
        "{abs}"
    );
    // The way out was there and said no (403), not merely missing.
    let via = ra["egress_to_the_host"]["detail"].as_str().unwrap_or("");
    assert!(via.contains(": 403") && !via.contains("relay"), "{via}");
    // A's socket tables held A's own sockets only (the relay's, at least), none of B's.
    let own = ra["foreign_sockets_in_proc_net"]["detail"]
        .as_str()
        .unwrap_or("");
    assert!(!own.starts_with("0 sockets"), "{own}");
    let host = ra["connect_host_address"]["detail"].as_str().unwrap_or("");
    assert!(
        host.contains(HOST_V4) && host.contains(HOST_V6),
        "not tried: {host}"
    );

    // The attacks really ran inside A's turn, in A's slice, under A's TasksMax.
    let bus = ra["system_bus_set_unit_properties"]["detail"]
        .as_str()
        .unwrap_or("");
    assert!(
        bus.contains(&format!("picortex-chat-{tag_a}.slice")),
        "not in A's slice: {bus}"
    );
    // (The slice's pids.max is not in the turn's view of the cgroup tree: the fork count
    // tells the limit, TasksMax=256 less the turn's own processes.)
    let fork = ra["fork_bomb"]["detail"].as_str().unwrap_or("");
    let forks: u32 = fork
        .strip_prefix("EAGAIN after ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no EAGAIN: {fork}"));
    assert!((200..256).contains(&forks), "{fork}");
    let b_bus = rb["system_bus_set_unit_properties"]["detail"]
        .as_str()
        .unwrap_or("");
    assert!(
        b_bus.contains(&format!("picortex-chat-{tag_b}.slice")),
        "not in B's slice: {b_bus}"
    );

    // B's turn was not disturbed, and the gateway and the simulator still answer.
    let replies = m.wait_replies(&b, before + 1, T);
    let last = replies
        .last()
        .and_then(|r| r["text"].as_str())
        .unwrap_or("");
    assert!(
        last.starts_with("standin: you said") && last.contains(&format!("{busy}\" (turn")),
        "B's turn: {last}"
    );
    // B really held its socket and its /dev/shm file while A attacked; nobody got in.
    assert!(
        last.contains(&format!(
            "listener @{HOLD} ok, tcp 127.0.0.1:47999 ok, marker /dev/shm/picortex-drop-uid"
        )) && last.ends_with(", 0 connections"),
        "B's hold: {last}"
    );
    assert_eq!(
        m.ok("systemctl is-active picortexd.service").trim(),
        "active"
    );
    let health = m.ok("curl -s http://127.0.0.1:8470/health");
    assert!(health.contains("\"db_ok\":true"), "{health}");
    // And nothing was left outside the homes by the attacks.
    let stray = m.sh("ls -d /etc/.picortex-attack-* /var/tmp/.picortex-attack-* /run/lock/picortex-drop-* /var/tmp/picortex-drop-* 2>/dev/null").stdout;
    assert!(
        stray.trim().is_empty(),
        "attack leftovers outside the homes: {stray}"
    );
}

#[test]
fn a_memory_bomb_kills_only_its_own_turn() {
    let m = Machine::boot();
    m.start_picortex();
    // Both chats exist first, so the two turns below start close together.
    let b = open_group(&m, "Cortex hello");
    let tag_b = chat_tag(&b);
    m.wait_replies(&b, 1, T);
    let a = m.sim().text(OWNER, None, "hello")["chat_id"]
        .as_str()
        .expect("chat_id")
        .to_owned();
    let tag_a = chat_tag(&a);
    m.wait_replies(&a, 1, T);
    let gateway_pid = m
        .ok("systemctl show -P MainPID picortexd.service")
        .trim()
        .to_owned();
    assert_ne!(gateway_pid, "0");

    // B runs a long turn; meanwhile A allocates more than its chat's MemoryMax.
    group_text(&m, &b, "Cortex #sleep=5 a long one");
    m.wait_running_turn(Some(&tag_b), T);
    let eat = (MEMORY_MAX >> 20) + 144;
    m.sim().text(OWNER, Some(&a), &format!("#eatmem={eat}"));

    let ra = m.wait_replies(&a, 2, T);
    let oom_reply = ra[1]["text"].as_str().unwrap_or("");
    eprintln!("A's reply: {oom_reply}");
    assert!(
        oom_reply.to_lowercase().contains("ran out of memory"),
        "A's reply does not say it ran out of memory: {oom_reply}"
    );
    let rb = m.wait_replies(&b, 2, T);
    let long_reply = rb[1]["text"].as_str().unwrap_or("");
    assert!(
        long_reply.starts_with("standin: you said")
            && long_reply.contains("Cortex #sleep=5 a long one\" (turn"),
        "B's long turn: {long_reply}"
    );

    // The gateway lived through it, same process.
    assert_eq!(
        m.ok("systemctl show -P MainPID picortexd.service").trim(),
        gateway_pid,
        "picortexd was restarted"
    );
    assert_eq!(
        m.ok("systemctl is-active picortexd.service").trim(),
        "active"
    );

    // What the machine saw: the kernel's OOM kill in A's slice, and picortex-run's verdict.
    // (The kernel log is the host's, shared by every machine: only this machine's lines.)
    let kernel = m.journal(&format!("-k | grep -E 'oom_memcg=/{}/' || true", m.name));
    eprintln!("kernel:\n{kernel}");
    assert!(
        kernel.contains(&format!("picortex-chat-{tag_a}.slice")),
        "no OOM kill in A's slice:\n{kernel}"
    );
    assert!(
        !kernel.contains(&format!("picortex-chat-{tag_b}.slice")),
        "B's slice saw an OOM kill:\n{kernel}"
    );
    let run = m.journal(&format!(
        "SYSLOG_IDENTIFIER=picortex-run PICORTEX_CHAT={a} | grep out_of_memory || true"
    ));
    eprintln!("picortex-run:\n{run}");
    assert!(
        !run.trim().is_empty(),
        "picortex-run did not report out_of_memory"
    );
    let unit_end = m.journal("-o short -u 'picortex-turn-*' | grep -E 'Failed with result|Main process exited|Deactivated' || true");
    eprintln!("turn units:\n{unit_end}");
}

/// The systemctl show value of `key` (empty when it is not set).
fn prop<'a>(show: &'a str, key: &str) -> &'a str {
    show.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or("")
}

#[test]
fn the_turn_unit_is_sandboxed_as_systemd_reports_it() {
    let m = Machine::boot();
    m.start_picortex();
    let r = m.sim().text(OWNER, None, "#sleep=3 show me your sandbox");
    let chat = r["chat_id"].as_str().expect("chat_id").to_owned();
    let tag = chat_tag(&chat);
    let home = format!("/var/lib/picortex/chats/{tag}");
    let unit = m.wait_running_turn(Some(&tag), T);
    let show = m.ok(&format!("systemctl show {unit}"));
    let slice = m.ok(&format!("systemctl show picortex-chat-{tag}.slice"));

    // A network of its own, with only loopback (its relay to picortex-egress), and an
    // address fence that lets nothing else through should it ever have more. (The attack test
    // tries the host, link-local and the LAN for real, directly and through picortex-egress.)
    assert_eq!(prop(&show, "PrivateNetwork"), "yes");
    let mut deny: Vec<&str> = prop(&show, "IPAddressDeny").split_whitespace().collect();
    deny.sort_unstable();
    assert_eq!(deny, ["0.0.0.0/0", "::/0"]);
    let mut allow: Vec<&str> = prop(&show, "IPAddressAllow").split_whitespace().collect();
    allow.sort_unstable();
    assert_eq!(allow, ["127.0.0.0/8", "::1/128"]);
    let pid = prop(&show, "MainPID");
    let dev = m.ok(&format!("cat /proc/{pid}/net/dev"));
    let ifs: Vec<&str> = dev
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, _)| n.trim())
        .collect();
    assert_eq!(ifs, ["lo"], "{dev}");
    for (k, v) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictNamespaces", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictRealtime", "yes"),
        ("UMask", "0077"),
        ("ReadWritePaths", home.as_str()),
        // The agent's JavaScript engine needs a JIT.
        ("MemoryDenyWriteExecute", "no"),
        ("User", &format!("chat-{tag}")),
        ("Slice", &format!("picortex-chat-{tag}.slice")),
        // Only its own home of /var/lib/picortex, no /tmp to write to (~/.tmp instead).
        ("BindPaths", &format!("{home}:{home}:rbind")),
        ("ReadOnlyPaths", "/tmp /var/tmp"),
    ] {
        assert_eq!(prop(&show, k), v, "{unit}: {k}");
    }
    // … a /dev/shm of its own, an empty read-only /run (no system bus, none of systemd's
    // records of other chats' units) with journald's sockets bound back, and no chat's cgroups:
    // a skeleton over the whole tree, the chat's own slice bound back into it.
    let own = if m.sh("test -f /sys/fs/cgroup/cgroup.controllers").code == 0 {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/memory"
    };
    assert_eq!(
        prop(&show, "TemporaryFileSystem"),
        "/var/lib/picortex:ro /dev/shm:mode=1777,nosuid,nodev,noexec,size=64M /run:ro /sys/fs:ro"
    );
    let binds = prop(&show, "BindReadOnlyPaths");
    for b in [
        format!("/var/lib/picortex-provision/views/{tag}/cgroup:/sys/fs/cgroup "),
        format!("{own}/picortex.slice/picortex-chat.slice/picortex-chat-{tag}.slice"),
    ] {
        assert!(binds.contains(&b), "{b} not in {binds}");
    }
    // journald's sockets in /run are those of the turns' own journal, which systemd binds.
    assert!(!binds.contains("/run/systemd/journal"), "{binds}");
    assert_eq!(prop(&show, "LogNamespace"), "picortex-turns");
    // /etc/picortex is the helper's view (the [agent] table alone), not the operator's.
    let etc = format!("/var/lib/picortex-provision/views/{tag}/etc:/etc/picortex");
    assert!(binds.contains(&etc), "{etc} not in {binds}");
    assert_eq!(
        prop(&show, "InaccessiblePaths"),
        "-/etc/passwd- -/etc/group- -/etc/userdb"
    );
    // No credential of the helper's making (the test machine has no API key): each unit's
    // credentials are a mount in the host's namespace while it runs.
    assert_eq!(prop(&show, "SetCredential"), "", "{unit}");
    assert_eq!(prop(&show, "LoadCredential"), "", "{unit}");
    let filter = prop(&show, "SystemCallFilter");
    assert!(
        !filter.is_empty() && !filter.starts_with('~'),
        "no system call allow-list: {filter}"
    );
    for call in [
        "mount",
        "bpf",
        "kexec_load",
        "init_module",
        "reboot",
        "swapon",
        "ptrace",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "userfaultfd",
        "add_key",
        "request_key",
        "keyctl",
    ] {
        assert!(
            !filter.split_whitespace().any(|c| c == call),
            "{call} is allowed"
        );
    }
    assert_eq!(prop(&show, "SystemCallArchitectures"), "native");
    let mut families: Vec<&str> = prop(&show, "RestrictAddressFamilies")
        .split_whitespace()
        .collect();
    families.sort_unstable();
    assert_eq!(families, ["AF_INET", "AF_INET6", "AF_UNIX"]);

    // The chat's limits are on its slice, and the turns' device policy with them.
    assert_eq!(prop(&slice, "MemoryMax"), MEMORY_MAX.to_string());
    assert_eq!(prop(&slice, "DevicePolicy"), "closed");
    let allowed: Vec<&str> = slice
        .lines()
        .filter_map(|l| l.strip_prefix("DeviceAllow="))
        .collect();
    assert_eq!(
        allowed.join(", "),
        "/dev/null rwm, /dev/zero rwm, /dev/full rwm, /dev/random rwm, /dev/urandom rwm, \
/dev/tty rwm, /dev/ptmx rwm, char-pts rw, char-rtc r"
    );
    let tasks: u64 = prop(&slice, "TasksMax")
        .parse()
        .unwrap_or_else(|_| panic!("TasksMax is not a number: {}", prop(&slice, "TasksMax")));
    assert!((1..=4096).contains(&tasks), "TasksMax={tasks}");
    // CPU and disk shares, and the CPU cap, of the test configuration (tests/harness/stage-extras.sh).
    assert_eq!(prop(&slice, "CPUQuotaPerSecUSec"), "500ms");
    assert_eq!(prop(&slice, "IOWeight"), "50");
    assert_eq!(prop(&slice, "CPUWeight"), "100");

    // And in that sandbox the agent still works: its config dir and transcript are written.
    let reply = m.wait_replies(&chat, 1, T);
    assert!(
        reply[0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("standin: you said"),
        "{}",
        reply[0]
    );
    m.ok(&format!(
        "test -s {home}/.claude/.claude.json && ls {home}/.claude/projects/*/*.jsonl"
    ));
}

/// The helper's audit lines of chat `chat` (`MESSAGE`s), oldest first: from the system journal,
/// where the helper writes and no turn can.
fn audit_lines(m: &Machine, chat: &str) -> Vec<String> {
    m.sh(&format!(
        "journalctl --no-pager -o cat _SYSTEMD_UNIT=picortex-provision.service PICORTEX_AUDIT=true PICORTEX_CHAT={chat}"
    ))
    .stdout
    .lines()
    .map(str::to_owned)
    .collect()
}

#[test]
fn a_journal_flood_from_a_turn_leaves_the_helpers_audit_entries() {
    let m = Machine::boot();
    // A system journal the size of a small machine's, in memory, so a flood could rotate it away.
    m.ok("mkdir -p /etc/systemd/journald.conf.d && printf '[Journal]\\nStorage=volatile\\nRuntimeMaxUse=8M\\nRuntimeMaxFileSize=1M\\n' > /etc/systemd/journald.conf.d/small.conf && systemctl restart systemd-journald");
    m.start_picortex();
    let r = m.sim().text(OWNER, None, "hello");
    let chat = r["chat_id"].as_str().expect("chat_id").to_owned();
    m.wait_replies(&chat, 1, T);
    let before = audit_lines(&m, &chat);
    assert!(
        before.iter().any(|l| l.starts_with("StartTurn")),
        "no StartTurn audit yet: {before:?}"
    );

    // A flood of entries and one of bytes: 20000 distinct 400-byte lines, then 1500 of 32 KB,
    // hardly compressible; each to journald's socket and to stderr: about 110 MB, fourteen
    // times the system journal's whole size. journald's rate limit counts entries, not bytes:
    // what passes it of the large ones alone is more than that journal holds.
    m.sim()
        .text(OWNER, Some(&chat), "#flood=20000 flooding with entries");
    let replies = m.wait_replies(&chat, 2, T);
    assert!(
        replies[1]["text"]
            .as_str()
            .unwrap_or("")
            .contains("| flood: 20000 of 20000 sent"),
        "{}",
        replies[1]
    );
    m.sim().text(
        OWNER,
        Some(&chat),
        "#flood=1500 #flood_bytes=32000 flooding with bytes",
    );
    let replies = m.wait_replies(&chat, 3, T);
    assert!(
        replies[2]["text"]
            .as_str()
            .unwrap_or("")
            .contains("| flood: 1500 of 1500 sent"),
        "{}",
        replies[2]
    );
    m.wait_chat_settled(&chat, T);
    m.ok("journalctl --sync");
    // The audit of the chat's turns from before and during the flood is all still there.
    let after = audit_lines(&m, &chat);
    for l in &before {
        assert!(
            after.contains(l),
            "audit entry lost to the flood: {l}\nnow: {after:?}"
        );
    }
    assert!(
        after.len() > before.len(),
        "the flood turns' own audit is missing: {after:?}"
    );
    // Because the flood went to the turns' own journal (LogNamespace=picortex-turns), not the
    // system's...
    let system: u64 = m
        .sh("journalctl --no-pager -o cat SYSLOG_IDENTIFIER=standin-flood | grep -c '^flood ' || true")
        .stdout
        .trim()
        .parse()
        .unwrap_or(u64::MAX);
    assert_eq!(system, 0, "flood entries in the system journal");
    // ...where journald held the turn back: most of it was dropped, not stored.
    let kept: u64 = m
        .sh("journalctl --namespace=picortex-turns --no-pager -o cat SYSLOG_IDENTIFIER=standin-flood | grep -c '^flood ' || true")
        .stdout
        .trim()
        .parse()
        .unwrap_or(u64::MAX);
    assert!(
        (1..20_000).contains(&kept),
        "{kept} of 21500 flood entries stored in the turns' journal"
    );
}
