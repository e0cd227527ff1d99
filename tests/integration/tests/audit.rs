//! Issue 7, item 5 (SPEC P6): a turn cannot forge the audit trail as the README reads it. A turn
//! writes an entry posing as the helper's record of a refused call (the stand-in's
//! `#journal_forge`); the README's query for refused privileged calls matches on a field journald
//! stamps itself, so it shows the genuine refusal and not the forgery; and the forgery is not in
//! the system journal at all, but in the turns' own (`LogNamespace=picortex-turns`).

use std::path::Path;
use std::time::Duration;

use picortex_integration::Machine;

const OWNER: &str = "+15550002000";

/// The journalctl command the README documents for refused privileged calls.
fn documented_query() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let line = readme
        .lines()
        .find(|l| l.contains("# refused privileged calls"))
        .expect("the README documents a query for refused privileged calls");
    let cmd = line.split('#').next().unwrap_or("").trim().to_owned();
    assert!(cmd.starts_with("journalctl "), "{cmd}");
    cmd
}

#[test]
fn a_turn_cannot_forge_what_the_documented_audit_query_shows() {
    let m = Machine::boot();
    m.start_picortex();
    let query = documented_query();

    // A genuine refusal, for the query to find.
    let o = m.sh("runuser -u nobody -- busctl call org.picortex.Provision1 /org/picortex/Provision1 org.picortex.Provision1 EnsureChat s abc");
    assert_ne!(o.code, 0, "nobody was allowed to call EnsureChat");

    // The forgery, from inside a turn.
    let marker = format!("FORGED-AUDIT-{}", std::process::id());
    let mut chat = None;
    let reply = m.exchange(OWNER, &mut chat, &format!("#journal_forge={marker} hi"));
    assert!(reply.contains("journal_forge=sent"), "{reply}");
    // It is in the turns' own journal (LogNamespace=picortex-turns), where a query on the
    // fields a turn can set would show it as the helper's own refusal...
    m.wait_for("the forged entry in the journal", Duration::from_secs(20), || {
        m.sh(&format!(
            "journalctl --namespace=picortex-turns --no-pager -o cat SYSLOG_IDENTIFIER=picortex-provision PICORTEX_OUTCOME=refused | grep -F {marker}"
        ))
        .stdout
        .contains(&marker)
        .then_some(())
    });
    // ...but nowhere in the system journal, whatever the query...
    let system = m
        .sh("journalctl --no-pager -o cat SYSLOG_IDENTIFIER=picortex-provision")
        .stdout;
    assert!(
        !system.contains(&marker),
        "a turn wrote into the system journal:\n{system}"
    );
    // ...and the documented one shows the genuine refusal and not the forgery.
    let shown = m.wait_for(
        "the genuine refusal in the documented query",
        Duration::from_secs(20),
        || {
            let out = m.sh(&format!("{query} --no-pager -o export")).stdout;
            out.contains("PICORTEX_CALLER_UID=65534").then_some(out)
        },
    );
    assert!(
        !shown.contains(&marker),
        "`{query}` shows the turn's forged entry:\n{shown}"
    );
    assert!(shown.contains("PICORTEX_OP=EnsureChat"), "{shown}");
}
