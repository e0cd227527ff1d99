//! SPEC P1, P4, P5 through the real helper on the real bus (as root, whom polkit allows): users
//! and homes are idempotent, collisions and foreign users are never adopted, half-done
//! provisioning is repaired, and chats archive, restore on the next message, and are removed.

use std::time::Duration;

use picortex_integration::{chat_tag, Machine};

fn ensure(m: &Machine, chat: &str) -> String {
    m.ok(&format!("busctl call org.picortex.Provision1 /org/picortex/Provision1 org.picortex.Provision1 EnsureChat s {chat}"))
}

fn home_state(m: &Machine, home: &str) -> String {
    m.ok(&format!("stat -c '%a %U' {home}")).trim().to_owned()
}

#[test]
fn users_and_homes_are_idempotent_collision_free_and_repaired() {
    let m = Machine::boot();
    let a = "aaaaaaaa-0000-4000-8000-000000000001";
    let first = ensure(&m, a);
    assert_eq!(ensure(&m, a), first, "EnsureChat is not idempotent");
    let tag = chat_tag(a);
    assert!(first.contains(&format!("\"chat-{tag}\"")), "{first}");
    // Issue 7, item 4: chats take ids from their own range, never the shared system range.
    let ids = m.ok(&format!("id -u chat-{tag}; id -g chat-{tag}"));
    for id in ids.split_whitespace() {
        let id: u32 = id.parse().unwrap();
        assert!(
            (1_900_000_000..=1_900_999_999).contains(&id),
            "chat user id {id} outside the chats' range"
        );
    }
    let lastlog: u64 = m
        .ok("stat -c %s /var/log/lastlog 2>/dev/null || echo 0")
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        lastlog < 1 << 30,
        "a chat user's lastlog record made a huge sparse file ({lastlog} bytes)"
    );

    // A tag already registered to another chat: resolved with a longer tag.
    let b = "bbbbbbbb-0000-4000-8000-000000000002";
    let tb = chat_tag(b);
    m.ok(&format!(
        "echo someone-else > /var/lib/picortex-provision/chats/{tb}"
    ));
    let out = ensure(&m, b);
    let long_b = &hex_of(b)[..9];
    assert!(
        out.contains(&format!("\"chat-{long_b}\"")),
        "collision not resolved: {out}"
    );
    assert_eq!(
        home_state(&m, &format!("/var/lib/picortex/chats/{long_b}")),
        format!("700 chat-{long_b}")
    );

    // A chat-<tag> user that picortex never registered is not adopted.
    let c = "cccccccc-0000-4000-8000-000000000003";
    let tc = chat_tag(c);
    m.ok(&format!("useradd --system --no-create-home chat-{tc}"));
    let out = ensure(&m, c);
    assert!(
        out.contains(&format!("\"chat-{}\"", &hex_of(c)[..9])),
        "foreign user adopted: {out}"
    );

    // Half-done provisioning (home gone, user gone) is repaired by the next call.
    let home = format!("/var/lib/picortex/chats/{tag}");
    m.ok(&format!("rm -rf {home}"));
    ensure(&m, a);
    assert_eq!(home_state(&m, &home), format!("700 chat-{tag}"));
    // The user's records gone (chat users are records of /etc/userdb, see the helper's userdb).
    m.ok(&format!(
        "rm /etc/userdb/chat-{tag}.user /etc/userdb/chat-{tag}.group && find /etc/userdb -xtype l -delete"
    ));
    assert_ne!(m.sh(&format!("getent passwd chat-{tag}")).code, 0);
    ensure(&m, a);
    assert!(
        m.sh(&format!("getent passwd chat-{tag}")).code == 0,
        "user not recreated"
    );
    assert_eq!(
        home_state(&m, &home),
        format!("700 chat-{tag}"),
        "home not re-owned by the new user"
    );

    let audit = m.journal(
        "SYSLOG_IDENTIFIER=picortex-provision PICORTEX_OP=EnsureChat PICORTEX_OUTCOME=ok | wc -l",
    );
    assert!(
        audit.trim().parse::<u32>().unwrap_or(0) >= 6,
        "EnsureChat calls not audited: {audit}"
    );
}

fn hex_of(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[test]
fn a_chat_archives_restores_on_the_next_message_and_is_removed() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();
    let r = sim.text("+15550002000", None, "remember the word quince");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    m.wait_for("the first reply", Duration::from_secs(30), || {
        (!sim.sent(&chat).is_empty()).then_some(())
    });
    let tag = chat_tag(&chat);
    let (user, home) = (
        format!("chat-{tag}"),
        format!("/var/lib/picortex/chats/{tag}"),
    );
    m.ok(&format!(
        "echo notes > {home}/notes.txt && chown {user}: {home}/notes.txt"
    ));
    // The gateway starts the chat's next unit (a spare) after the answer. Called directly, the
    // helper stops it with the chat's other units; a StartTurn still on its way would come
    // after the archive and restore the home, as any turn does (picortexctl's archive lets the
    // gateway drop its spare first). So the spare is running before the archive.
    m.wait_running_turn(Some(&tag), Duration::from_secs(30));

    let out = m.ok(&format!("busctl call org.picortex.Provision1 /org/picortex/Provision1 org.picortex.Provision1 ArchiveChat s {chat}"));
    assert!(
        out.contains(&format!("/var/lib/picortex-provision/archives/{tag}-")),
        "{out}"
    );
    assert_ne!(
        m.sh(&format!("test -e {home}")).code,
        0,
        "home still there after archiving"
    );
    // Locked: password disabled and the account expired (shadow field 8 = day 1). A chat user
    // is a record of /etc/userdb, locked for good: no login, archived or not.
    let expire = |m: &Machine| {
        m.ok(&format!("getent shadow {user} | cut -d: -f8"))
            .trim()
            .to_owned()
    };
    assert_eq!(expire(&m), "1", "user not locked");
    assert!(
        m.ok(&format!(
            "systemctl show -P MemoryMax picortex-chat-{tag}.slice"
        ))
        .trim()
            != "infinity",
        "slice limits dropped"
    );

    // The next message restores it, transparently, and the agent remembers.
    sim.text("+15550002000", Some(&chat), "what was the word?");
    let sent = m.wait_for("the reply after restore", Duration::from_secs(30), || {
        let s = sim.sent(&chat);
        (s.len() >= 2).then_some(s)
    });
    let text = sent[1]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("before that you said \"remember the word quince\""),
        "session not restored: {text}"
    );
    assert_eq!(home_state(&m, &home), format!("700 {user}"));
    assert_eq!(m.ok(&format!("cat {home}/notes.txt")).trim(), "notes");
    assert_eq!(m.ok(&format!("stat -c %U {home}/notes.txt")).trim(), user);
    assert_eq!(expire(&m), "1", "a chat user's record is locked for good");
    assert!(m.path(&format!("/etc/userdb/{user}.user")).is_file());

    // Removal archives first, then deletes the user and home.
    let out = m.ok(&format!("busctl call org.picortex.Provision1 /org/picortex/Provision1 org.picortex.Provision1 RemoveChat s {chat}"));
    assert!(out.contains(".tar.removed"), "{out}");
    assert_ne!(
        m.sh(&format!("getent passwd {user}")).code,
        0,
        "user not deleted"
    );
    assert_ne!(m.sh(&format!("test -e {home}")).code, 0, "home not deleted");
    let audit = m.journal("SYSLOG_IDENTIFIER=picortex-provision PICORTEX_OUTCOME=ok -o verbose | grep -E '^ *PICORTEX_OP=(ArchiveChat|RemoveChat)$' | sort | uniq -c");
    assert!(
        audit.contains("ArchiveChat") && audit.contains("RemoveChat"),
        "lifecycle not audited: {audit}"
    );
}

#[test]
fn the_helper_exits_when_idle_and_the_bus_starts_it_again() {
    let m = Machine::boot();
    // A short idle period for the test (the shipped unit uses the 30-second default).
    m.ok("mkdir -p /etc/systemd/system/picortex-provision.service.d && printf '[Service]\\nExecStart=\\nExecStart=/usr/libexec/picortex/picortex-provision --idle-timeout 2\\n' > /etc/systemd/system/picortex-provision.service.d/idle.conf && systemctl daemon-reload");
    let active = |m: &Machine| {
        m.sh("systemctl is-active picortex-provision.service")
            .stdout
            .trim()
            .to_owned()
    };
    assert_eq!(active(&m), "inactive");
    ensure(&m, "dddddddd-0000-4000-8000-000000000004");
    let first = m
        .ok("systemctl show -P InvocationID picortex-provision.service")
        .trim()
        .to_owned();
    m.wait_for(
        "the helper to exit when idle",
        Duration::from_secs(15),
        || (active(&m) == "inactive").then_some(()),
    );
    assert!(m
        .journal("SYSLOG_IDENTIFIER=picortex-provision")
        .contains("idle, exiting"));
    ensure(&m, "dddddddd-0000-4000-8000-000000000004");
    let second = m
        .ok("systemctl show -P InvocationID picortex-provision.service")
        .trim()
        .to_owned();
    assert_ne!(first, second, "the helper was not started again by the bus");
}

/// Issue 7, item 5: polkit decides before the arguments are even parsed, so a local user's
/// malformed calls leave one `refused` record each and nothing of what they sent.
#[test]
fn an_unauthorised_malformed_call_leaves_only_a_refusal() {
    let m = Machine::boot();
    let marker = "ATTACKER-CHOSEN-7f3a";
    let calls = [
        ("EnsureChat", format!("'x/{marker} PICORTEX_OUTCOME=ok'")),
        ("ArchiveChat", format!("'../{marker}'")),
        ("RemoveChat", format!("'{marker}.x'")),
        ("ReleaseTurn", format!("'{marker}'")),
    ];
    for (op, arg) in &calls {
        let o = m.sh(&format!("runuser -u nobody -- busctl call org.picortex.Provision1 /org/picortex/Provision1 org.picortex.Provision1 {op} s {arg}"));
        assert_ne!(o.code, 0, "nobody's {op} succeeded");
        assert!(
            o.stderr.to_lowercase().contains("access denied"),
            "{op} was not refused by polkit: {}",
            o.stderr
        );
    }
    let entries = |filter: &str| -> Vec<serde_json::Value> {
        m.sh(&format!(
            "journalctl --no-pager -o json SYSLOG_IDENTIFIER=picortex-provision {filter}"
        ))
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
    };
    let refused = m.wait_for("a refusal for each call", Duration::from_secs(20), || {
        let r = entries("PICORTEX_OUTCOME=refused PICORTEX_CALLER_UID=65534");
        (r.len() >= calls.len()).then_some(r)
    });
    let mut ops: Vec<&str> = refused
        .iter()
        .filter_map(|e| e["PICORTEX_OP"].as_str())
        .collect();
    ops.sort_unstable();
    assert_eq!(
        ops,
        ["ArchiveChat", "EnsureChat", "ReleaseTurn", "RemoveChat"]
    );
    // Nothing else of nobody's, and nothing it chose, anywhere in the helper's journal.
    let by_nobody = entries("PICORTEX_CALLER_UID=65534");
    assert_eq!(by_nobody.len(), calls.len(), "{by_nobody:#?}");
    let all = m
        .sh("journalctl --no-pager -o export SYSLOG_IDENTIFIER=picortex-provision")
        .stdout;
    assert!(
        !all.contains(marker),
        "the caller's arguments reached the audit trail:\n{all}"
    );
}

/// The newest ok audit record of `op` for `chat`, as journald timestamped it (µs).
fn audited_at(m: &Machine, op: &str, chat: &str) -> Option<u64> {
    let out = m.journal(&format!(
        "_SYSTEMD_UNIT=picortex-provision.service PICORTEX_OP={op} PICORTEX_CHAT={chat} PICORTEX_OUTCOME=ok -o json -n 1"
    ));
    let v: serde_json::Value = serde_json::from_str(out.lines().last()?).ok()?;
    v["__REALTIME_TIMESTAMP"].as_str()?.parse().ok()
}

/// Issue 7, item 10: the helper does one thing at a time per chat. A turn asked for while its
/// chat is being archived starts only once the archive is done (in the restored home, nothing
/// lost); after RemoveChat, a turn does not bring the user back.
#[test]
fn a_turn_waits_for_its_chats_archive_and_never_revives_a_removed_chat() {
    let m = Machine::boot();
    m.without_spares();
    m.start_picortex();
    let sim = m.sim();
    let mut chat = None;
    m.exchange("+15550002000", &mut chat, "hello");
    let chat = chat.unwrap();
    let tag = chat_tag(&chat);
    let (user, home) = (
        format!("chat-{tag}"),
        format!("/var/lib/picortex/chats/{tag}"),
    );
    // Enough in the home that archiving takes a while.
    m.ok(&format!(
        "dd if=/dev/zero of={home}/big bs=1M count=600 status=none && chown {user}: {home}/big"
    ));
    m.ok(&format!("(busctl call org.picortex.Provision1 /org/picortex/Provision1 org.picortex.Provision1 ArchiveChat s {chat} > /tmp/archive.out 2>&1; echo $? > /tmp/archive.rc) >/dev/null 2>&1 &"));
    m.wait_for("the archive under way", Duration::from_secs(20), || {
        (m.sh("pgrep -x tar").code == 0).then_some(())
    });
    sim.text("+15550002000", Some(&chat), "are you there?");
    m.wait_reply_containing(&chat, "are you there?", Duration::from_secs(60));
    assert_eq!(
        m.ok("cat /tmp/archive.rc").trim(),
        "0",
        "{}",
        m.read("/tmp/archive.out")
    );
    let (archived, started) = (
        audited_at(&m, "ArchiveChat", &chat).expect("ArchiveChat audited"),
        audited_at(&m, "StartTurn", &chat).expect("StartTurn audited"),
    );
    assert!(
        started > archived,
        "the turn started while its home was being archived"
    );
    assert_eq!(
        m.ok(&format!("stat -c %s {home}/big")).trim(),
        (600u64 << 20).to_string(),
        "the home lost a file to the race"
    );

    // Removed: a later message does not bring the user back.
    m.ok(&format!("busctl call org.picortex.Provision1 /org/picortex/Provision1 org.picortex.Provision1 RemoveChat s {chat}"));
    sim.text("+15550002000", Some(&chat), "still there?");
    m.wait_reply_containing(&chat, "couldn't start the agent", Duration::from_secs(30));
    assert_ne!(
        m.sh(&format!("getent passwd {user}")).code,
        0,
        "a turn re-created the removed chat's user"
    );
    assert!(m
        .journal(&format!("_SYSTEMD_UNIT=picortex-provision.service PICORTEX_OP=StartTurn PICORTEX_CHAT={chat} PICORTEX_OUTCOME=failed"))
        .contains("was removed"));
    // An explicit EnsureChat brings it back.
    ensure(&m, &chat);
    assert_eq!(m.sh(&format!("getent passwd {user}")).code, 0);
}

/// A home of sparse files (issue 7 item 4): archived as it is on disk, not by its apparent
/// size; and one whose files add up to more than the helper archives is refused, untouched.
#[test]
fn archiving_writes_what_a_sparse_home_holds_and_refuses_a_hostile_one() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();
    let r = sim.text("+15550002000", None, "hello");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    m.wait_replies(&chat, 1, Duration::from_secs(30));
    let tag = chat_tag(&chat);
    let (user, home) = (
        format!("chat-{tag}"),
        format!("/var/lib/picortex/chats/{tag}"),
    );
    // The chat's spare is up before the helper is asked directly (behind the gateway's back) to
    // archive it: a spare start still in flight would restore the archive as it starts.
    m.wait_running_turn(Some(&tag), Duration::from_secs(30));
    let archive = |m: &Machine| {
        m.sh(&format!("busctl call org.picortex.Provision1 /org/picortex/Provision1 org.picortex.Provision1 ArchiveChat s {chat}"))
    };

    // 2 GiB apparent, one byte of data.
    m.ok(&format!(
        "runuser -u {user} -- truncate -s 2G {home}/sparse && \
         printf x | runuser -u {user} -- dd of={home}/sparse bs=1 seek=1000 conv=notrunc status=none"
    ));
    let out = archive(&m);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let path = out
        .stdout
        .split('"')
        .nth(1)
        .unwrap_or_else(|| panic!("no archive path in {}", out.stdout))
        .to_owned();
    let size: u64 = m.ok(&format!("stat -c %s {path}")).trim().parse().unwrap();
    assert!(
        size < 16 << 20,
        "archive of a 2 GiB sparse file is {size} bytes"
    );

    // It comes back on the next message, still 2 GiB apparent and sparse.
    sim.text("+15550002000", Some(&chat), "back again");
    m.wait_replies(&chat, 2, Duration::from_secs(30));
    let st = m.ok(&format!("stat -c '%s %b %B' {home}/sparse"));
    let v: Vec<u64> = st.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(v[0], 2 << 30, "{st}");
    assert!(v[1] * v[2] < 16 << 20, "restored file is not sparse: {st}");
    assert_eq!(
        m.ok(&format!(
            "dd if={home}/sparse bs=1 skip=1000 count=1 status=none"
        )),
        "x"
    );

    // 100 GiB apparent: refused with the reason, the home and its files untouched.
    m.wait_chat_settled(&chat, Duration::from_secs(30));
    m.ok(&format!(
        "runuser -u {user} -- truncate -s 100G {home}/huge"
    ));
    let out = archive(&m);
    assert_ne!(
        out.code, 0,
        "a 100 GiB sparse home was archived: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("apparent sizes") && out.stderr.contains("nothing removed"),
        "{}",
        out.stderr
    );
    m.ok(&format!("test -f {home}/huge && test -f {home}/sparse"));
    let audit = m.journal(&format!(
        "SYSLOG_IDENTIFIER=picortex-provision PICORTEX_CHAT={chat} PICORTEX_OUTCOME=failed"
    ));
    assert!(
        audit.contains("ArchiveChat"),
        "no audit of the refusal: {audit}"
    );
}
