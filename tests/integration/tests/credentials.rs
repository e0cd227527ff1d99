//! SPEC T2: the agent's API key reaches the turn as a systemd credential and nowhere else: not a
//! chat home, not a unit's environment, not any process's environment.

use std::time::Duration;

use picortex_integration::Machine;

const KEY: &str = "sk-ant-test-7f3a9c1e5b2d4680aa11";

#[test]
fn the_api_key_is_a_credential_of_the_turn_and_nothing_else() {
    let m = Machine::boot();
    std::fs::write(m.path("/etc/picortex/credentials/anthropic-api-key"), KEY).unwrap();
    m.ok("chmod 600 /etc/picortex/credentials/anthropic-api-key");
    m.start_picortex();
    let sim = m.sim();

    // The agent gets the key (through its apiKeyHelper) and answers.
    let r = sim.text("+15550002000", None, "#auth hello");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    let reply = m.wait_for("the authenticated reply", Duration::from_secs(30), || {
        sim.sent(&chat).first().cloned()
    });
    let text = reply["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("auth=apiKeyHelper:…{}", &KEY[KEY.len() - 4..])),
        "{text}"
    );

    // While a turn runs, nothing outside its credentials directory holds the key.
    sim.text("+15550002000", Some(&chat), "#auth #sleep=4 a long one");
    let unit = m.wait_for("a running turn unit", Duration::from_secs(20), || {
        let u = m
            .sh("systemctl list-units --no-legend --plain --state=running 'picortex-turn-*' | awk '{print $1}'")
            .stdout;
        let u = u.trim().to_owned();
        (!u.is_empty()).then_some(u)
    });
    // Give the agent inside the sleeping turn time to start, so that its environment is searched.
    std::thread::sleep(Duration::from_millis(500));
    // The searches read the key from a file, so that their own command lines do not contain it.
    std::fs::write(m.path("/root/needle"), KEY).unwrap();
    let env_hits = m
        .sh("grep -l -a -F -f /root/needle /proc/[0-9]*/environ 2>/dev/null || true")
        .stdout;
    assert!(
        env_hits.trim().is_empty(),
        "key in process environments: {env_hits}"
    );
    let home_hits = m
        .sh("grep -r -l -a -F -f /root/needle /var/lib/picortex /home /tmp 2>/dev/null || true")
        .stdout;
    assert!(home_hits.trim().is_empty(), "key in files: {home_hits}");
    // Every turn unit running now (the sleeping turn, and perhaps a spare: both hold the
    // credential; a finished unit may be released before it is looked at) has the key only as
    // a credential.
    let mut checked = 0;
    for unit in unit.split_whitespace() {
        let props = m.sh(&format!("systemctl show {unit}")).stdout;
        assert!(!props.contains(KEY), "key in the properties of {unit}");
        let Some(path) = m
            .sh(&format!("busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager GetUnit s {unit} | cut -d'\"' -f2"))
            .stdout
            .lines()
            .next()
            .map(|l| l.trim().to_owned())
            .filter(|l| l.starts_with('/'))
        else {
            continue; // released in the meantime
        };
        let lc = m.sh(&format!("busctl get-property org.freedesktop.systemd1 {path} org.freedesktop.systemd1.Service LoadCredential")).stdout;
        assert!(
            lc.contains("\"anthropic-api-key\" \"/etc/picortex/credentials/anthropic-api-key\""),
            "no LoadCredential on {unit}: {lc}"
        );
        checked += 1;
    }
    assert!(checked >= 1, "no turn unit left to check");
    let cmdlines = m
        .sh("grep -l -a -F -f /root/needle /proc/[0-9]*/cmdline 2>/dev/null || true")
        .stdout;
    assert!(
        cmdlines.trim().is_empty(),
        "key in a command line: {cmdlines}"
    );
    // The gateway itself never has it.
    assert!(!m
        .ok("systemctl show picortexd.service")
        .contains("anthropic-api-key"));
    m.wait_for("the second reply", Duration::from_secs(30), || {
        (sim.sent(&chat).len() >= 2).then_some(())
    });
}
