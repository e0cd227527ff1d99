//! Faults from outside picortex (issue: keep it closed): the bus daemon restarted, journald
//! restarted, the state directory full. Each time nothing accepted is lost and nothing is
//! answered twice, and the gateway heals without anyone restarting it.

use std::time::Duration;

use picortex_integration::{tally_replies, Expected, Machine};

const OWNER: &str = "+15550002000";
const T: Duration = Duration::from_secs(60);

fn expect(r: &serde_json::Value, text: &str) -> Expected {
    Expected {
        chat_id: r["chat_id"].as_str().unwrap().to_owned(),
        message_id: r["message_id"].as_str().unwrap().to_owned(),
        text: text.to_owned(),
    }
}

#[test]
fn the_gateway_rides_out_a_restart_of_the_bus_daemon() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();
    // A turn runs while the bus daemon goes away and comes back.
    let slow = sim.text(OWNER, None, "#sleep=3 across the restart");
    let chat = slow["chat_id"].as_str().unwrap().to_owned();
    m.wait_running_turn(None, T);
    let gw = m.gateway_invocation();
    m.ok("systemctl restart dbus.service");
    let mut want = vec![expect(&slow, "#sleep=3 across the restart")];
    m.wait_replies(&chat, 1, T);
    // Turns after it go through the helper over a new connection.
    let after = sim.text(OWNER, Some(&chat), "after the restart");
    want.push(expect(&after, "after the restart"));
    m.wait_replies(&chat, 2, T);
    m.wait_settled(T);
    let t = tally_replies(&sim, &want[..]);
    assert!(t.lost == 0 && t.duplicated == 0, "{t:?}");
    assert_eq!(
        m.sql_n("SELECT COUNT(*) FROM turns WHERE outcome != 'ok'"),
        0,
        "a turn failed: {}",
        m.sql("SELECT outcome, error FROM turns WHERE outcome != 'ok'")
    );
    assert_eq!(
        m.gateway_invocation(),
        gw,
        "the gateway had to be restarted"
    );
}

#[test]
fn the_gateway_rides_out_a_restart_of_journald() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();
    let slow = sim.text(OWNER, None, "#sleep=2 while journald restarts");
    let chat = slow["chat_id"].as_str().unwrap().to_owned();
    m.wait_running_turn(None, T);
    m.ok("systemctl restart systemd-journald.service");
    m.wait_replies(&chat, 1, T);
    let after = sim.text(OWNER, Some(&chat), "and after it");
    m.wait_replies(&chat, 2, T);
    m.wait_settled(T);
    let t = tally_replies(
        &sim,
        &[
            expect(&slow, "#sleep=2 while journald restarts"),
            expect(&after, "and after it"),
        ],
    );
    assert!(t.clean(), "{t:?}");
    assert!(
        m.journal("-u picortexd.service").contains("reply sent"),
        "the gateway's lines after the restart are not in the journal"
    );
}

#[test]
fn a_full_state_directory_answers_503_and_loses_nothing() {
    let m = Machine::boot();
    // The gateway's state on a small filesystem of its own, so it can be filled.
    m.ok("mount -t tmpfs -o size=24m,mode=0711 picortex-state /var/lib/picortex && systemd-tmpfiles --create /usr/lib/tmpfiles.d/picortex.conf");
    m.start_picortex();
    let sim = m.sim();
    sim.config(serde_json::json!({ "retry_base_ms": 200 }));
    let first = sim.text(OWNER, None, "before the disk fills");
    let chat = first["chat_id"].as_str().unwrap().to_owned();
    m.wait_replies(&chat, 1, T);
    m.wait_settled(T);
    m.sh("fallocate -l 64m /var/lib/picortex/filler || dd if=/dev/zero of=/var/lib/picortex/filler bs=1M count=64 status=none");
    let full = sim.text(OWNER, Some(&chat), "while the disk is full");
    let id = full["event_id"].as_str().unwrap().to_owned();
    m.wait_for("a 503 for the event while the disk is full", T, || {
        let d = sim.get(&format!("/control/deliveries?event_id={id}"));
        let refused = d
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|d| d["attempts"].as_array().cloned().unwrap_or_default())
            .any(|a| a["status"] == 503);
        refused.then_some(())
    });
    assert_eq!(
        m.ok("systemctl is-active picortexd.service").trim(),
        "active",
        "the gateway died of a full disk"
    );
    m.ok("rm -f /var/lib/picortex/filler");
    m.wait_replies(&chat, 2, T);
    m.wait_settled(T);
    let t = tally_replies(
        &sim,
        &[
            expect(&first, "before the disk fills"),
            expect(&full, "while the disk is full"),
        ],
    );
    assert!(t.clean(), "{t:?}");
}

#[test]
fn a_webhook_that_kills_the_gateway_every_time_is_quarantined_not_crash_looped() {
    let m = Machine::boot();
    // picortexd SIGKILLs itself on every webhook whose text says #poison (a test crash point).
    m.arm_failpoint("webhook-poison");
    m.start_picortex();
    let sim = m.sim();
    sim.config(serde_json::json!({ "retry_base_ms": 300 }));
    let mut chat = None;
    m.exchange(OWNER, &mut chat, "before the poison");
    let chat = chat.unwrap();
    let poison = sim.text(OWNER, Some(&chat), "#poison this kills it");
    let id = poison["event_id"].as_str().unwrap().to_owned();
    let last = m.wait_for("the poison webhook answered at last", T, || {
        let d = sim.get(&format!("/control/deliveries?event_id={id}"));
        let d = d.as_array()?.first()?.clone();
        (d["state"] == "delivered").then_some(d)
    });
    let attempts = last["attempts"].as_array().unwrap();
    // Three deliveries killed it (picortexd's poison::STRIKES), the next was quarantined.
    assert!(attempts.len() > 3, "{attempts:?}");
    let restarts: u32 = m
        .ok("systemctl show -P NRestarts picortexd.service")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(restarts, 3, "the gateway died {restarts} times, not 3");
    assert_eq!(
        m.ok("systemctl is-active picortexd.socket picortexd.service")
            .trim(),
        "active\nactive"
    );
    assert!(m
        .journal("-u picortexd.service")
        .contains("crashed the gateway 3 times"));
    assert_eq!(
        m.sql_n(&format!(
            "SELECT COUNT(*) FROM events WHERE event_id = '{id}'"
        )),
        1,
        "the quarantined webhook is not kept for the operator"
    );
    assert_eq!(
        m.sql_n("SELECT COUNT(*) FROM messages WHERE text LIKE '%#poison%'"),
        0,
        "the quarantined webhook was processed"
    );
    // Everything else goes on.
    let mut c = Some(chat);
    let r = m.exchange(OWNER, &mut c, "after the poison");
    assert!(r.contains("after the poison"), "{r}");
}

/// Arm crash point `point` of the helper: it SIGKILLs itself the first time it gets there.
fn arm_helper(m: &Machine, point: &str) {
    m.ok(&format!(
        "mkdir -p /run/systemd/system/picortex-provision.service.d && printf '[Service]\\nEnvironment=PICORTEX_PROVISION_FAILPOINT={point}\\n' > /run/systemd/system/picortex-provision.service.d/50-failpoint.conf && systemctl daemon-reload && systemctl stop picortex-provision.service && rm -f /var/lib/picortex-provision/failpoint.fired"
    ));
}

fn helper_fired(m: &Machine) -> bool {
    m.path("/var/lib/picortex-provision/failpoint.fired")
        .exists()
}

#[test]
fn the_helper_killed_while_provisioning_loses_nothing() {
    let m = Machine::boot();
    // Killed after it registered the chat's tag, before the user exists.
    arm_helper(&m, "ensure-after-claim");
    m.start_picortex();
    let sim = m.sim();
    let first = sim.text(OWNER, None, "my first message");
    let chat = first["chat_id"].as_str().unwrap().to_owned();
    m.wait_replies(&chat, 1, T);
    m.wait_settled(T);
    assert!(helper_fired(&m), "the crash point was never reached");
    let t = tally_replies(&sim, &[expect(&first, "my first message")]);
    assert!(t.clean(), "{t:?}");
    let tag = picortex_integration::chat_tag(&chat);
    assert_eq!(
        m.ok(&format!("stat -c '%a %U' /var/lib/picortex/chats/{tag}"))
            .trim(),
        format!("700 chat-{tag}")
    );
}

#[test]
fn the_helper_killed_while_archiving_loses_no_file() {
    let m = Machine::boot();
    m.without_spares();
    m.start_picortex();
    let mut chat = None;
    m.exchange(OWNER, &mut chat, "remember this");
    let chat = chat.unwrap();
    let tag = picortex_integration::chat_tag(&chat);
    let home = format!("/var/lib/picortex/chats/{tag}");
    m.ok(&format!(
        "echo precious > {home}/notes.txt && chown chat-{tag}: {home}/notes.txt"
    ));
    // Killed with the archive complete and the home emptied, before the home is removed.
    arm_helper(&m, "archive-after-empty");
    let out = m.sh(&format!("busctl call org.picortex.Provision1 /org/picortex/Provision1 org.picortex.Provision1 ArchiveChat s {chat}"));
    assert_ne!(
        out.code, 0,
        "the archive was not interrupted: {}",
        out.stdout
    );
    assert!(helper_fired(&m), "the crash point was never reached");
    assert_eq!(
        m.sh(&format!("test -e {home}/notes.txt")).code,
        1,
        "the crash point is past emptying the home"
    );
    // The next message finds the home as it was, from the archive, and the session too.
    let r = m.exchange(OWNER, &mut Some(chat.clone()), "what did I say?");
    assert!(r.contains("before that you said \"remember this\""), "{r}");
    assert_eq!(m.ok(&format!("cat {home}/notes.txt")).trim(), "precious");
    assert_eq!(
        m.ok(&format!("stat -c '%a %U' {home}")).trim(),
        format!("700 chat-{tag}")
    );
}

#[test]
fn a_reply_put_off_for_a_retry_is_sent_when_linq_is_back_even_after_the_clock_jumped_back() {
    let m = Machine::boot();
    // picortexd's wall clock comes from libfaketime, with an offset read from a file the test
    // moves (timers stay on the real monotonic clock, as they are).
    m.ok("echo '+0' > /run/picortex-faketime && chmod 644 /run/picortex-faketime");
    m.gateway_dropin(
        "60-faketime",
        "Environment=LD_PRELOAD=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 FAKETIME_TIMESTAMP_FILE=/run/picortex-faketime FAKETIME_NO_CACHE=1 FAKETIME_DONT_FAKE_MONOTONIC=1",
    );
    m.start_picortex();
    let sim = m.sim();
    let hello = sim.text(OWNER, None, "hello");
    let chat = hello["chat_id"].as_str().unwrap().to_owned();
    m.wait_replies(&chat, 1, T);
    // Linq's API goes down: the reply is put off for a retry.
    sim.faults(serde_json::json!({ "api_down": true }));
    let r = sim.text(OWNER, Some(&chat), "while Linq is down");
    m.wait_for("the reply waiting for a retry", T, || {
        (m.sql_n("SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND attempts >= 1") == 1)
            .then_some(())
    });
    // The gateway's clock jumps back two hours; then Linq comes back.
    m.ok("echo '-2h' > /run/picortex-faketime");
    sim.clear_faults();
    m.wait_reply_containing(&chat, "while Linq is down", T);
    m.wait_chat_settled(&chat, T);
    let t = tally_replies(
        &sim,
        &[expect(&hello, "hello"), expect(&r, "while Linq is down")],
    );
    assert!(t.clean(), "{t:?}");
}
