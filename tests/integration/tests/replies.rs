//! SPEC L4, P7: a huge or hostile reply reaches the phone cleaned and bounded — no escape
//! sequences, NUL or bidi overrides, and a few messages with a note, not hundreds.

use std::time::Duration;

use picortex_integration::Machine;

const OWNER: &str = "+15550002000";

#[test]
fn a_hostile_reply_is_cleaned_and_cut() {
    let m = Machine::boot();
    m.start_picortex();
    let sim = m.sim();
    let chat = sim.text(OWNER, None, "#hostile")["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();
    m.wait_for(
        "the reply sent and nothing left pending",
        Duration::from_secs(60),
        || {
            let done = m.sql_n("SELECT COUNT(*) FROM turns WHERE status != 'done'") == 0
                && m.sql_n("SELECT COUNT(*) FROM outbox WHERE status = 'pending'") == 0
                && !sim.sent(&chat).is_empty();
            done.then_some(())
        },
    );
    let sent = sim.sent(&chat);
    assert!(
        (2..=5).contains(&sent.len()),
        "a 200 kB reply became {} messages",
        sent.len()
    );
    let all: String = sent
        .iter()
        .map(|s| s["text"].as_str().unwrap_or_default())
        .collect();
    assert!(all.starts_with("ALERT nul"), "{}", &all[..80]);
    for bad in ['\u{1b}', '\u{0}', '\u{7}', '\u{202E}', '\u{202C}'] {
        assert!(!all.contains(bad), "{bad:?} reached the phone");
    }
    assert!(all.contains("more characters"), "no note about the cut");
    assert!(all.chars().count() <= 16_200, "{}", all.chars().count());
}
