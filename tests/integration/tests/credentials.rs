//! SPEC T2, issue 7 item 8: the agent's API key never enters a turn. The turn's
//! `/etc/picortex` holds a placeholder of it (the helper's view, readable by the chat's user),
//! which the agent presents; picortex-egress puts the real key in each request it forwards
//! (tests/egress.rs and real_cli.rs see the API receive it). The key is in no file but the
//! operator's: not a chat home, not the view, not a unit's properties or environment, not any
//! process's environment or command line, not the gateway.

use std::time::Duration;

use picortex_integration::Machine;

const KEY: &str = "sk-ant-test-7f3a9c1e5b2d4680aa11";

#[test]
fn a_turn_holds_a_placeholder_of_the_api_key_never_the_key() {
    let m = Machine::boot();
    std::fs::write(m.path("/etc/picortex/credentials/anthropic-api-key"), KEY).unwrap();
    m.ok("chmod 600 /etc/picortex/credentials/anthropic-api-key");
    m.start_picortex();
    let sim = m.sim();

    // The agent gets a key through its apiKeyHelper, and answers: the placeholder.
    let r = sim.text("+15550002000", None, "#auth hello");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    let reply = m.wait_for("the authenticated reply", Duration::from_secs(30), || {
        sim.sent(&chat).first().cloned()
    });
    let text = reply["text"].as_str().unwrap_or_default();
    let placeholder = picortex_proto::egress::PLACEHOLDER_API_KEY;
    assert!(
        text.contains(&format!(
            "auth=apiKeyHelper:…{}",
            &placeholder[placeholder.len() - 4..]
        )),
        "{text}"
    );
    assert!(!text.contains(&KEY[KEY.len() - 4..]), "{text}");

    // While a turn runs, nothing but the operator's file holds the key.
    sim.text("+15550002000", Some(&chat), "#auth #sleep=4 a long one");
    let unit = m.wait_for("a running turn unit", Duration::from_secs(20), || {
        let u = m
            .sh("systemctl list-units --no-legend --plain --state=running 'picortex-turn-*' | awk '{print $1}'")
            .stdout;
        let u = u.trim().to_owned();
        (!u.is_empty()).then_some(u)
    });
    let tag = picortex_integration::chat_tag(&chat);
    // Every turn unit running now (the sleeping turn, and perhaps a spare; a finished unit may
    // be released before it is looked at) has the chat's view as its /etc/picortex, and the key
    // in none of its properties: no systemd credential, whose mount every unit start pays for.
    let mut checked = 0;
    for unit in unit.split_whitespace() {
        let props = m.sh(&format!("systemctl show {unit}")).stdout;
        if !props.contains("LoadState=loaded") {
            continue; // released in the meantime
        }
        assert!(!props.contains(KEY), "key in the properties of {unit}");
        assert!(
            props.contains(&format!(
                "/var/lib/picortex-provision/views/{tag}/etc:/etc/picortex"
            )),
            "no view of /etc/picortex in {unit}"
        );
        for p in ["LoadCredential=", "SetCredential="] {
            assert!(
                props.lines().any(|l| l == p) || !props.contains(p),
                "{p} set on {unit}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 1, "no turn unit left to check");
    // Give the agent inside the sleeping turn time to start, so that its environment is searched.
    std::thread::sleep(Duration::from_millis(500));
    let env_hits = m.files_holding(KEY, "/proc/[0-9]*/environ");
    assert!(
        env_hits.is_empty(),
        "key in process environments: {env_hits:?}"
    );
    let copy = format!("/var/lib/picortex-provision/views/{tag}/etc/anthropic-api-key");
    // The operator's file is the only file with the key; the view has the placeholder.
    let files = m.files_holding(KEY, "/etc /var/lib /run /tmp /home");
    assert_eq!(
        files,
        ["/etc/picortex/credentials/anthropic-api-key".to_owned()],
        "key in files"
    );
    assert_eq!(m.read(&copy), placeholder);
    assert_eq!(
        m.ok(&format!(
            "stat -c '%U %a' {copy}; stat -c '%U %a' /var/lib/picortex-provision"
        )),
        format!("chat-{tag} 400\nroot 700\n")
    );
    let cmdlines = m.files_holding(KEY, "/proc/[0-9]*/cmdline");
    assert!(cmdlines.is_empty(), "key in a command line: {cmdlines:?}");
    // The gateway itself never has it.
    assert!(!m
        .ok("systemctl show picortexd.service")
        .contains("anthropic-api-key"));
    m.wait_for("the second reply", Duration::from_secs(30), || {
        (sim.sent(&chat).len() >= 2).then_some(())
    });
}
