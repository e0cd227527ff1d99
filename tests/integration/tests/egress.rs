//! SPEC T1, issue 7 (items 2, 3 and 8): a turn has a network namespace of its own with nothing
//! but loopback, and one way out, picortex-egress, through the relay picortex-run keeps on that
//! loopback. The agent's API requests are forwarded with the real key, which no turn holds (its
//! view has a placeholder); a `CONNECT` opens only where the operator's `[sandbox]` policy says,
//! checked against the address the proxy resolved itself; nobody but a chat user is served.
//! The test host is the Messages API stand-in at 198.51.100.1 (a network namespace of its own);
//! no traffic leaves the machine.

use std::time::Duration;

use picortex_integration::{chat_tag, Machine};

const KEY: &str = "sk-ant-api03-egress-test-7f3a0c";
const OWNER: &str = "+15550002000";
const T: Duration = Duration::from_secs(40);

/// The `#egress=` probes of the stand-in agent in one real turn: target → status or error.
fn probe(m: &Machine, chat: &mut Option<String>, targets: &[&str]) -> Vec<(String, String)> {
    let reply = m.exchange(OWNER, chat, &format!("#egress={}", targets.join(",")));
    let list = reply
        .rsplit_once(" | egress: ")
        .unwrap_or_else(|| panic!("no egress report: {reply}"))
        .1;
    let got: Vec<(String, String)> = list
        .split(',')
        .filter_map(|kv| kv.rsplit_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(got.len(), targets.len(), "{reply}");
    got
}

fn expect(got: &[(String, String)], want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(got, want.as_slice());
}

/// A new `[sandbox]` policy, applied: picortex-egress reads it when it starts.
fn policy(m: &Machine, egress: &str, allow: &str) {
    m.set_config("sandbox", "egress", &format!("{egress:?}"));
    m.set_config("sandbox", "egress_allow", allow);
    m.ok("systemctl restart picortex-egress.service");
}

#[test]
fn a_turn_reaches_out_only_through_egress_as_the_policy_says() {
    let m = Machine::boot();
    std::fs::write(m.path("/etc/picortex/credentials/anthropic-api-key"), KEY).unwrap();
    m.ok("chmod 600 /etc/picortex/credentials/anthropic-api-key");
    m.set_config(
        "agent",
        "env",
        "{ ANTHROPIC_BASE_URL = \"http://198.51.100.1\" }",
    );
    // Names the proxy resolves (getaddrinfo reads /etc/hosts): two for the test host, one for
    // an address of the LAN.
    m.ok("printf '198.51.100.1 api.test.example other.test.example\\n10.9.9.9 lan.test.example\\n' >> /etc/hosts");
    m.ok("systemctl start anthropic-standin.service");
    m.start_picortex();
    let mut chat = None;

    // The default: the agent's API, and nothing else. A direct connection has no route at all.
    let got = probe(
        &m,
        &mut chat,
        &[
            "/v1/egress-probe",
            "198.51.100.1:80",
            "api.test.example:80",
            "tcp:198.51.100.1:80",
            "127.0.0.1:8470",
            "169.254.169.254:80",
        ],
    );
    expect(
        &got,
        &[
            ("/v1/egress-probe", "404"),
            ("198.51.100.1:80", "403"),
            ("api.test.example:80", "403"),
            ("tcp:198.51.100.1:80", "ENETUNREACH"),
            ("127.0.0.1:8470", "403"),
            ("169.254.169.254:80", "403"),
        ],
    );
    // The API got the operator's key, though the agent sent what its view holds: the
    // placeholder, which is all any file of the turn has.
    let req = m
        .api_requests()
        .into_iter()
        .find(|r| r["path"] == "/v1/egress-probe")
        .expect("the stand-in saw the forwarded request");
    assert_eq!(req["headers"]["x-api-key"], KEY, "{req}");
    let tag = chat_tag(chat.as_deref().unwrap());
    let view = m.read(&format!(
        "/var/lib/picortex-provision/views/{tag}/etc/anthropic-api-key"
    ));
    assert_eq!(view, picortex_proto::egress::PLACEHOLDER_API_KEY);
    let hits = m.files_holding(
        KEY,
        "--exclude-dir=anthropic-standin /var/lib/picortex /var/lib/picortex-provision /run /tmp /var/tmp",
    );
    assert!(
        hits.is_empty(),
        "the key outside /etc/picortex/credentials: {hits:?}"
    );
    // Each refusal is in the turns' journal, with who asked and why.
    let log = m.journal("SYSLOG_IDENTIFIER=picortex-egress");
    assert!(
        log.contains("CONNECT refused: 198.51.100.1 is not in [sandbox] egress_allow"),
        "{log}"
    );
    assert!(log.contains("API request forwarded"), "{log}");

    // An allowlist of names: a listed name is opened (at the address the proxy resolved), an
    // unlisted one is refused without a lookup, and a listed name resolving into the LAN is
    // refused (DNS rebinding); an address literal needs a range.
    policy(
        &m,
        "allowlist",
        "[\"api.test.example\", \"lan.test.example\"]",
    );
    let got = probe(
        &m,
        &mut chat,
        &[
            "api.test.example:80",
            "other.test.example:80",
            "lan.test.example:80",
            "198.51.100.1:80",
        ],
    );
    expect(
        &got,
        &[
            ("api.test.example:80", "200"),
            ("other.test.example:80", "403"),
            ("lan.test.example:80", "403"),
            ("198.51.100.1:80", "403"),
        ],
    );
    policy(&m, "allowlist", "[\"198.51.100.0/24\"]");
    let got = probe(&m, &mut chat, &["198.51.100.1:80", "api.test.example:80"]);
    expect(
        &got,
        &[("198.51.100.1:80", "200"), ("api.test.example:80", "403")],
    );

    // "internet": anything public, never the host, link-local or the LAN.
    policy(&m, "internet", "[]");
    let got = probe(
        &m,
        &mut chat,
        &[
            "198.51.100.1:80",
            "other.test.example:80",
            "lan.test.example:80",
            "10.9.9.9:80",
            "198.51.100.2:80",
            "[::1]:8470",
        ],
    );
    expect(
        &got,
        &[
            ("198.51.100.1:80", "200"),
            ("other.test.example:80", "200"),
            ("lan.test.example:80", "403"),
            ("10.9.9.9:80", "403"),
            // The machine's own end of the test host's link is the host.
            ("198.51.100.2:80", "403"),
            ("[::1]:8470", "403"),
        ],
    );

    // Nobody but a chat user is served: root's and nobody's connections are closed unanswered.
    for who in ["root", "nobody"] {
        let out = m.sh(&format!(
            "runuser -u {who} -- curl -s -o /dev/null -w '%{{http_code}}' --unix-socket {} http://x/v1/models",
            picortex_proto::egress::SOCKET
        ));
        assert_eq!(out.stdout.trim(), "000", "{who} was served: {}", out.stderr);
    }
    let log = m.journal("SYSLOG_IDENTIFIER=picortex-egress");
    assert!(log.contains("uid 65534 is not a chat user"), "{log}");
    assert!(log.contains("uid 0 is not a chat user"), "{log}");
}

#[test]
fn a_bad_policy_is_refused_not_half_applied() {
    let m = Machine::boot();
    m.start_picortex();
    m.ok("systemctl start picortexd.service");
    // Changed under a running gateway (which would refuse to start with it): the helper reads
    // the table at each turn start.
    m.set_config("sandbox", "egress", "\"allowlist\"");
    m.set_config("sandbox", "egress_allow", "[\"127.0.0.1/32\"]");
    let sim = m.sim();
    let r = sim.text(OWNER, None, "let me at the host");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    let reply = m.wait_for("a refusal", T, || sim.sent(&chat).first().cloned());
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
    // And picortex-egress itself will not serve under it: it says why, and exits.
    m.sh("systemctl restart picortex-egress.service");
    m.wait_for("picortex-egress's refusal", T, || {
        m.journal("SYSLOG_IDENTIFIER=picortex-egress")
            .contains("would open the host")
            .then_some(())
    });
}
