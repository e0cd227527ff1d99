//! SPEC O6: the `systemd-analyze security` gate (tests/harness/security-gate.sh) on the
//! installed gateway, helper and egress units and on a real turn unit while it runs.

use std::path::Path;

use picortex_integration::Machine;

#[test]
fn exposure_scores_stay_in_the_ok_band() {
    let m = Machine::boot();
    m.start_picortex();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../harness/security-gate.sh");
    std::fs::copy(&script, m.path("/tmp/security-gate.sh"))
        .expect("copy security-gate.sh into the machine");
    // The script starts a `#sleep=5` turn through the simulator and scores it while it runs.
    let o = m.sh("bash /tmp/security-gate.sh");
    eprintln!("{}{}", o.stdout, o.stderr);
    assert_eq!(o.code, 0, "security gate failed:\n{}{}", o.stdout, o.stderr);
    let scored: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| l.starts_with("SECURITY "))
        .collect();
    assert_eq!(
        scored.len(),
        4,
        "expected gateway, helper, egress and turn scores:\n{}",
        o.stdout
    );
    assert!(
        scored.iter().any(|l| l.contains("picortex-turn-")),
        "no turn unit scored:\n{}",
        o.stdout
    );
}
