//! Issue 7, item 13: test machines are apart from the host and from each other. The harness
//! binds the host's /dev into each machine; shared memory must not come with it, or one
//! machine's (or the host's) /dev/shm files would show up in every other one.

use std::path::Path;

use picortex_integration::Machine;

#[test]
fn each_machine_has_its_own_dev_shm() {
    let a = Machine::boot();
    let b = Machine::boot();
    let name = format!("picortex-harness-{}-{}", std::process::id(), a.name);
    let host_name = format!("{name}-host");
    let host_file = Path::new("/dev/shm").join(&host_name);
    std::fs::write(&host_file, "host").expect("write the host's /dev/shm");
    struct Cleanup<'a>(&'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _cleanup = Cleanup(&host_file);

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
