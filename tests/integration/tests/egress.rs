//! SPEC T1 network fence, strict mode: with `[sandbox] egress = "allowlist"` (read by the root
//! helper, not the gateway), a turn may reach only the listed ranges; by default it may reach
//! anything public but never the host, link-local or the LAN. (No traffic leaves this machine:
//! the ranges are checked on the unit as systemd holds them.)

use std::time::Duration;

use picortex_integration::Machine;

fn running_turn_ip(m: &Machine, prompt_chat: &str) -> (String, String) {
    m.wait_for("no turn units left", Duration::from_secs(30), || {
        m.loaded_turn_units().is_empty().then_some(())
    });
    let sim = m.sim();
    sim.text(prompt_chat, None, "#sleep=3 fenced");
    let unit = m.wait_for("a running turn", Duration::from_secs(20), || {
        let u = m
            .sh("systemctl list-units --no-legend --plain 'picortex-turn-*' | awk '{print $1}'")
            .stdout
            .trim()
            .to_owned();
        (!u.is_empty()).then_some(u)
    });
    let deny = m
        .ok(&format!("systemctl show -P IPAddressDeny {unit}"))
        .trim()
        .to_owned();
    let allow = m
        .ok(&format!("systemctl show -P IPAddressAllow {unit}"))
        .trim()
        .to_owned();
    (deny, allow)
}

#[test]
fn the_default_fence_and_the_strict_allowlist() {
    let m = Machine::boot();
    let cfg = m.read("/etc/picortex/picortexd.toml");
    // The fence is read when a unit starts: no spare started under the previous configuration.
    m.without_spares();
    m.start_picortex();
    let (deny, allow) = running_turn_ip(&m, "+15550002000");
    for r in [
        "127.0.0.0/8",
        "169.254.0.0/16",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::1/128",
        "fe80::/10",
        "fc00::/7",
    ] {
        assert!(
            deny.split_whitespace().any(|d| d == r),
            "default fence lacks {r}: {deny}"
        );
    }
    assert!(
        allow.is_empty(),
        "default mode allow-lists something: {allow}"
    );

    // Strict mode, configured by the operator; a bad list is refused, not half-applied.
    let strict = format!("{cfg}\n[sandbox]\negress = \"allowlist\"\negress_allow = [\"160.79.104.0/23\", \"2607:6bc0::/48\"]\n");
    std::fs::write(m.path("/etc/picortex/picortexd.toml"), strict).unwrap();
    let (deny, allow) = running_turn_ip(&m, "+15550002001");
    let mut denied: Vec<&str> = deny.split_whitespace().collect();
    denied.sort_unstable();
    assert_eq!(denied, vec!["0.0.0.0/0", "::/0"], "{deny}");
    let mut allowed: Vec<&str> = allow.split_whitespace().collect();
    allowed.sort_unstable();
    assert_eq!(
        allowed,
        vec!["160.79.104.0/23", "2607:6bc0::/48"],
        "{allow}"
    );

    let bad =
        format!("{cfg}\n[sandbox]\negress = \"allowlist\"\negress_allow = [\"127.0.0.1/32\"]\n");
    std::fs::write(m.path("/etc/picortex/picortexd.toml"), bad).unwrap();
    let sim = m.sim();
    let r = sim.text("+15550002002", None, "let me at the host");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    let reply = m.wait_for("a refusal", Duration::from_secs(30), || {
        sim.sent(&chat).first().cloned()
    });
    assert!(
        reply["text"]
            .as_str()
            .unwrap_or_default()
            .contains("couldn't start"),
        "{reply}"
    );
    let audit = m.journal(
        "SYSLOG_IDENTIFIER=picortex-provision PICORTEX_OP=StartTurn PICORTEX_OUTCOME=failed",
    );
    assert!(
        audit.contains("would open the host"),
        "refusal not explained in the journal: {audit}"
    );
}
