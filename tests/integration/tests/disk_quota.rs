//! Disk space per chat (SPEC P7): chat homes live on a filesystem of their own
//! (var-lib-picortex-chats.mount, a btrfs image), each home a subvolume with the operator's
//! `[sandbox] disk_quota`. A chat that writes past its quota gets EDQUOT on its own writes;
//! other chats' turns, the gateway, its database and the turn result files carry on.

use std::time::Duration;

use picortex_integration::{chat_tag, Machine};

const OWNER_A: &str = "+15550003000";
const OWNER_B: &str = "+15550003001";
const T: Duration = Duration::from_secs(60);

fn reply_n(m: &Machine, chat: &str, n: usize) -> String {
    m.wait_replies(chat, n, T)[n - 1]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// "fill: wrote <n> MiB of <asked>, …" out of a stand-in reply.
fn filled(reply: &str) -> (u64, String) {
    let at = reply
        .find("fill: wrote ")
        .unwrap_or_else(|| panic!("no fill report in {reply:?}"));
    let rest = &reply[at + "fill: wrote ".len()..];
    let n = rest.split(' ').next().unwrap().parse().unwrap();
    (n, rest.to_owned())
}

#[test]
fn a_chat_at_its_quota_fails_only_its_own_writes() {
    let m = Machine::boot();
    m.set_config("sandbox", "disk_quota", "\"32M\"");
    m.start_picortex();
    let sim = m.sim();

    let a = sim.text(OWNER_A, None, "hello from A")["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = sim.text(OWNER_B, None, "hello from B")["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reply_n(&m, &a, 1).contains("you said \"hello from A\""));
    assert!(reply_n(&m, &b, 1).contains("you said \"hello from B\""));
    let home_a = format!("/var/lib/picortex/chats/{}", chat_tag(&a));

    // Homes are on a filesystem of their own, not the database's, each a subvolume with its
    // quota group limited to the configured 32M.
    assert_eq!(
        m.ok("findmnt -n -o FSTYPE --mountpoint /var/lib/picortex/chats")
            .trim(),
        "btrfs"
    );
    let db_fs = m.ok("findmnt -n -o TARGET --target /var/lib/picortex/picortex.db");
    assert_ne!(db_fs.trim(), "/var/lib/picortex/chats");
    let qgroups = m.ok("btrfs qgroup show -re --raw /var/lib/picortex/chats");
    for tag in [chat_tag(&a), chat_tag(&b)] {
        let line = qgroups
            .lines()
            .find(|l| l.trim_end().ends_with(&tag))
            .unwrap_or_else(|| panic!("no quota group for {tag}:\n{qgroups}"));
        assert!(
            line.contains(&(32u64 << 20).to_string()),
            "home {tag} is not limited to 32M: {line}"
        );
    }
    assert!(m
        .journal("_SYSTEMD_UNIT=picortex-provision.service PICORTEX_OP=EnsureChat")
        .contains("disk_quota 32M"));

    // A writes twice its quota and keeps its turn open, at its quota, while B talks.
    let messages_before = m.sql_n("SELECT count(*) FROM messages");
    sim.text(OWNER_A, Some(&a), "#fill=64 #sleep=12 fill it up");
    let fill = format!("{home_a}/fill.bin");
    m.wait_for("A's file at its quota", T, || {
        let size: u64 = m
            .sh(&format!("stat -c %s {fill}"))
            .stdout
            .trim()
            .parse()
            .ok()?;
        (size >= 24 << 20).then_some(())
    });
    sim.text(OWNER_B, Some(&b), "#fill=8 B carries on");
    let rb = reply_n(&m, &b, 2);
    assert!(rb.contains("you said \"#fill=8 B carries on\""), "{rb}");
    assert_eq!(filled(&rb).1, "8 MiB of 8, no error", "{rb}");
    // B answered while A's turn still held its full home: a fact, not a guess about timing.
    assert_eq!(
        m.wait_replies(&a, 1, T).len(),
        1,
        "A's fill turn ended before B's turn ran; the overlap this test needs did not happen"
    );
    // The gateway still takes webhooks into its database.
    assert!(m.sql_n("SELECT count(*) FROM messages") >= messages_before + 2);
    assert_eq!(
        m.ok("curl -s http://127.0.0.1:8470/health | grep -o '\"db_ok\":true'")
            .trim(),
        "\"db_ok\":true"
    );

    let ra = reply_n(&m, &a, 2);
    let (n, how) = filled(&ra);
    assert!(
        how.contains("Disk quota exceeded"),
        "A's writes past its quota did not fail with EDQUOT: {ra}"
    );
    assert!((16..=32).contains(&n), "A wrote {n} MiB with a 32M quota");

    // While A's home is full, the agent cannot even start; A is told why, in so many words, and
    // the operator finds the cause in the journal.
    sim.text(OWNER_A, Some(&a), "while full");
    let ra = reply_n(&m, &a, 3);
    assert!(ra.contains("storage is full"), "{ra}");
    m.wait_chat_settled(&a, T);
    assert_eq!(
        m.sql(&format!(
            "SELECT outcome FROM turns WHERE chat_id = '{a}' ORDER BY created_at DESC, rowid DESC LIMIT 1"
        ))
        .trim(),
        "disk_full"
    );
    assert!(m
        .journal(&format!(
            "_SYSTEMD_UNIT=picortexd.service PICORTEX_CHAT={a} PICORTEX_OUTCOME=disk_full -o verbose"
        ))
        .contains("PICORTEX_ERROR=the chat's home is at its disk quota"));

    // Once the file is gone (an operator or the owner removes it), A's turns and writes work.
    m.ok(&format!("rm {fill}"));
    sim.text(OWNER_A, Some(&a), "#fill=8 after cleanup");
    let ra = reply_n(&m, &a, 4);
    assert!(ra.contains("you said \"#fill=8 after cleanup\""), "{ra}");
    assert_eq!(filled(&ra).1, "8 MiB of 8, no error", "{ra}");

    // No other turn of either chat failed: A's writes failed inside its own turns, and only
    // the turn that found its home full ended otherwise than ok.
    m.wait_settled(T);
    assert_eq!(
        m.sql("SELECT group_concat(outcome) FROM turns WHERE status = 'done' AND outcome != 'ok'")
            .trim(),
        "disk_full"
    );
}

#[test]
fn without_a_quota_filesystem_the_helper_refuses_to_provision_and_says_why() {
    let m = Machine::boot();
    // An operator's own filesystem at /var/lib/picortex/chats that cannot hold quotas.
    m.ok(
        "mkdir -p /etc/systemd/system/var-lib-picortex-chats.mount.d && \
          printf '[Mount]\\nWhat=tmpfs\\nType=tmpfs\\nOptions=mode=0711,nosuid,nodev\\n' \
            > /etc/systemd/system/var-lib-picortex-chats.mount.d/tmpfs.conf && \
          systemctl daemon-reload",
    );
    let out = m.sh(
        "busctl call org.picortex.Provision1 /org/picortex/Provision1 \
                    org.picortex.Provision1 EnsureChat s chat-no-quota",
    );
    assert_ne!(out.code, 0, "provisioned without a quota: {}", out.stdout);
    assert!(
        out.stderr.contains("not on a btrfs with quotas")
            && out.stderr.contains("var-lib-picortex-chats.mount"),
        "{}",
        out.stderr
    );
    // Nothing was created, and the refusal is audited.
    assert!(!m.read("/etc/passwd").contains("picortex chat"));
    assert!(m.ok("ls -A /var/lib/picortex/chats").trim().is_empty());
    assert!(m
        .journal("_SYSTEMD_UNIT=picortex-provision.service PICORTEX_OP=EnsureChat PICORTEX_OUTCOME=failed")
        .contains("not on a btrfs with quotas"));
}

#[test]
fn a_turn_cannot_make_subvolumes_whose_space_would_escape_its_quota() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();
    let a = sim.text(OWNER_A, None, "#subvol escape")["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = reply_n(&m, &a, 1);
    assert!(r.contains("| subvol: create="), "{r}");
    assert!(
        !r.contains("create=ok") && !r.contains("snapshot=ok"),
        "a turn made a subvolume or snapshot of its own: {r}"
    );
    assert!(r.contains("Operation_not_permitted"), "{r}");
    // The chats filesystem holds A's home and nothing else.
    let list = m.ok("btrfs subvolume list /var/lib/picortex/chats");
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(list.trim_end().ends_with(&chat_tag(&a)), "{list}");
}

#[test]
fn chats_on_another_subvolume_of_the_gateways_btrfs_are_refused() {
    let m = Machine::boot();
    m.ok(
        "busctl call org.picortex.Provision1 /org/picortex/Provision1 \
          org.picortex.Provision1 EnsureChat s chat-first >/dev/null",
    );
    // The operator's mistake, built from the chats filesystem itself: /var/lib/picortex becomes
    // one of its subvolumes, and the chats directory its top. The statfs ids of the two differ
    // (btrfs gives each subvolume its own); the filesystem does not.
    m.ok("systemctl stop picortex-provision && \
          src=$(findmnt -n -o SOURCE --mountpoint /var/lib/picortex/chats) && \
          btrfs subvolume create /var/lib/picortex/chats/gw >/dev/null && \
          cp -a /var/lib/picortex/turns /var/lib/picortex/chats/gw/ && \
          mkdir /var/lib/picortex/chats/gw/chats && \
          mount --bind /var/lib/picortex/chats/gw /var/lib/picortex && \
          mount -o subvolid=5 \"$src\" /var/lib/picortex/chats");
    let out = m.sh(
        "busctl call org.picortex.Provision1 /org/picortex/Provision1 \
                    org.picortex.Provision1 EnsureChat s chat-second",
    );
    assert_ne!(
        out.code, 0,
        "provisioned beside the database: {}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("is on the same filesystem as /var/lib/picortex"),
        "{}",
        out.stderr
    );
}
