//! Issue 9, done-when 3: the Debian package (`make deb`) installs with `apt-get install ./…deb`
//! into a machine that has no picortex, serves a message end to end, upgrades over itself while a
//! turn runs (configuration, data and the running chat kept), and `apt-get purge` removes what it
//! installed but leaves the chat homes.
//!
//! Needs `make deb PROFILE=dev` (build/picortex_<version>_<arch>.deb, or PICORTEX_DEB) and the test
//! stand-ins of `make stage PROFILE=dev` in target/debug.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use picortex_integration::Machine;

const T: Duration = Duration::from_secs(60);
const OWNER: &str = "+15550002000";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deb() -> PathBuf {
    if let Some(p) = std::env::var_os("PICORTEX_DEB") {
        return PathBuf::from(p);
    }
    std::fs::read_dir(repo().join("build"))
        .expect("build/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("picortex_") && n.ends_with(".deb"))
        })
        .expect("no build/picortex_*.deb: run `make deb PROFILE=dev`")
}

/// A stage with only the tests' own parts (simulator, stand-in agent, their configuration and
/// credentials) and the package in /root: picortex itself comes from the .deb.
fn stage_without_picortex() -> PathBuf {
    let dir = repo().join(format!("build/pkgstage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let st = Command::new(repo().join("tests/harness/stage-extras.sh"))
        .arg(&dir)
        .arg(repo().join("target/debug"))
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::copy(deb(), dir.join("root/picortex.deb")).unwrap();
    dir
}

#[test]
fn the_deb_installs_serves_upgrades_over_itself_and_purges() {
    let stage = stage_without_picortex();
    let m = Machine::boot_stage(&stage);
    let _ = std::fs::remove_dir_all(&stage);
    assert!(!m.path("/usr/bin/picortexd").exists());

    let install = "cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y -o Dpkg::Options::=--force-confold ./picortex.deb";
    m.ok(install);
    assert_eq!(
        m.ok("dpkg-query -W -f '${Status}' picortex"),
        "install ok installed"
    );
    assert_eq!(
        m.sh("systemctl is-enabled picortexd.socket").stdout.trim(),
        "enabled"
    );
    assert_eq!(
        m.sh("systemctl is-enabled picortexd.service").stdout.trim(),
        "enabled"
    );
    assert_eq!(
        m.sh("systemctl is-active picortexd.socket").stdout.trim(),
        "active"
    );
    // The turns' way out comes with it (picortexd.socket's Also=).
    assert_eq!(
        m.sh("systemctl is-enabled picortex-egress.socket")
            .stdout
            .trim(),
        "enabled"
    );
    assert!(m.ok("id picortex").contains("picortex"));
    assert!(m.ok("id picortex-egress").contains("picortex-egress"));
    m.ok("picortexd --check-config && man -w picortexd && /usr/libexec/picortex/picortex-provision --help");
    // The polkit action and the bus policy are where the daemons read them.
    m.ok("test -f /usr/share/polkit-1/actions/org.picortex.provision.policy && test -f /usr/share/dbus-1/system.d/org.picortex.Provision1.conf");

    // End to end.
    m.ok("systemctl start linq-sim.service");
    let sim = m.sim();
    let r = sim.text(OWNER, None, "hello from the package");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    m.wait_reply_containing(&chat, "hello from the package", T);
    let home = m.sql(&format!("SELECT home FROM chats WHERE id = '{chat}'"));
    assert!(home.starts_with("/var/lib/picortex/chats/"), "{home}");

    // Upgrade over itself while a turn runs: it finishes and is answered; config and data stay.
    sim.text(OWNER, Some(&chat), "#sleep=6 during the upgrade");
    m.wait_for("the turn running", T, || {
        (m.sql_n("SELECT COUNT(*) FROM turns WHERE status = 'running'") > 0).then_some(())
    });
    let before = m.ok("systemctl show -P InvocationID picortexd.service");
    m.ok(&install.replace("install -y", "install -y --reinstall"));
    assert_ne!(
        m.ok("systemctl show -P InvocationID picortexd.service"),
        before,
        "the upgrade did not restart the gateway"
    );
    m.wait_reply_containing(&chat, "during the upgrade", T);
    assert!(m
        .read("/etc/picortex/picortexd.toml")
        .contains("Test configuration"));
    m.wait_settled(T);
    assert_eq!(
        m.sql(&format!(
            "SELECT COUNT(*), SUM(outcome = 'ok') FROM turns WHERE chat_id = '{chat}'"
        )),
        "2|2"
    );

    // Purge: what it installed goes, the chat homes stay.
    m.ok("DEBIAN_FRONTEND=noninteractive apt-get purge -y picortex");
    for gone in [
        "/usr/bin/picortexd",
        "/usr/libexec/picortex/picortex-provision",
        "/usr/libexec/picortex/picortex-egress",
        "/usr/lib/systemd/system/picortexd.service",
        "/usr/lib/systemd/system/picortex-egress.socket",
        "/usr/share/polkit-1/actions/org.picortex.provision.policy",
        "/usr/share/dbus-1/system.d/org.picortex.Provision1.conf",
        "/etc/picortex/picortexd.toml",
        "/var/lib/picortex/picortex.db",
    ] {
        assert!(!m.path(gone).exists(), "{gone} left after purge");
    }
    assert_ne!(
        m.sh("systemctl is-active picortexd.socket").stdout.trim(),
        "active"
    );
    assert!(m.path(&home).is_dir(), "the chat home {home} was removed");
    assert!(m.path("/var/lib/picortex-provision").is_dir());
}
