//! Issue 7, item 13: test machines are apart from the host and from each other. The harness
//! binds the host's /dev into each machine; shared memory must not come with it, or one
//! machine's (or the host's) /dev/shm files would show up in every other one.

use std::path::{Path, PathBuf};

use picortex_integration::Machine;

#[test]
fn each_machine_has_its_own_dev_shm() {
    let a = Machine::boot();
    let b = Machine::boot();
    let name = format!("picortex-harness-{}-{}", std::process::id(), a.name);
    let host_name = format!("{name}-host");
    let host_file = Path::new("/dev/shm").join(&host_name);
    // Both files go from the host when the test ends, the machine's too should it leak there.
    struct Cleanup(Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let _cleanup = Cleanup(vec![host_file.clone(), Path::new("/dev/shm").join(&name)]);
    std::fs::write(&host_file, "host").expect("write the host's /dev/shm");

    a.ok(&format!(
        "echo a > /dev/shm/{name} && test -s /dev/shm/{name}"
    ));
    // It is A's own: the file is there, in A, and nowhere else.
    assert_eq!(a.ok(&format!("cat /dev/shm/{name}")).trim(), "a");
    assert!(
        !Path::new("/dev/shm").join(&name).exists(),
        "machine A's /dev/shm file is on the host"
    );
    assert_eq!(
        b.sh(&format!("test -e /dev/shm/{name}")).code,
        1,
        "machine A's /dev/shm file is in machine B"
    );
    // And neither machine sees the host's.
    for m in [&a, &b] {
        assert_eq!(
            m.sh(&format!("test -e /dev/shm/{host_name}")).code,
            1,
            "the host's /dev/shm file is in {}",
            m.name
        );
    }
    // Still a working /dev/shm: world-writable and sticky, as the machine's services expect.
    assert_eq!(a.ok("stat -c %a /dev/shm").trim(), "1777");
}

/// A machine's chats filesystem is a loop device of the host's kernel (the harness binds the
/// host's /dev): it must be gone with the machine, and its mount never seen on the host.
#[test]
fn a_machines_chats_loop_device_goes_with_it() {
    let m = Machine::boot();
    m.ok(
        "busctl call org.picortex.Provision1 /org/picortex/Provision1 \
          org.picortex.Provision1 EnsureChat s harness-loop-check >/dev/null",
    );
    let dev = m
        .ok("findmnt -n -o SOURCE --mountpoint /var/lib/picortex/chats")
        .trim()
        .to_owned();
    assert!(
        dev.starts_with("/dev/loop"),
        "chats not on a loop device: {dev}"
    );
    let back = m
        .ok(&format!("losetup -n -O BACK-INO,BACK-MAJ:MIN {dev}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts.contains(&m.name) && !host_mounts.contains("/var/lib/picortex/chats"),
        "the machine's mounts are visible on the host"
    );
    let name = m.name.clone();
    drop(m);
    let now = std::process::Command::new("losetup")
        .args(["-n", "-O", "BACK-INO,BACK-MAJ:MIN", &dev])
        .output()
        .unwrap();
    let now = String::from_utf8_lossy(&now.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert_ne!(
        now, back,
        "{dev} still holds the stopped machine's chats image"
    );
    assert!(!Path::new("/run/picortex-machines").join(&name).exists());
}
