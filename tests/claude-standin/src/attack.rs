//! `#attack`: what a hostile agent would try from inside its turn unit, to prove (SPEC P2) that a
//! chat cannot reach another chat, the gateway, or the machine. Each attack reports
//! `{name, blocked, detail}`; `blocked` is true only when every attempt of the attack failed in
//! the way a working sandbox makes it fail. Nothing here is destructive: files it manages to
//! create outside its home are removed again, a `ptrace` attach that succeeds is detached, a
//! writable cgroup file is only opened, never written, and the fork bomb's children are killed.
//!
//! The attacks run on the main thread, in order; the network probes (the only threads) come
//! last, after the fork bomb, which needs a single-threaded process.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::sys::wait::waitpid;
use nix::unistd::{getppid, getuid, Pid};
use serde_json::{json, Value};

/// Set in the environment of the children the attacks spawn of this binary.
const CHILD_ENV: &str = "STANDIN_ATTACK_CHILD";
const DETAIL_MAX: usize = 110;
const CHATS_DIR: &str = "/var/lib/picortex/chats";
const BUSCTL: &str = "/usr/bin/busctl";
const BUS_SOCKET: &str = "/run/dbus/system_bus_socket";

pub struct Finding {
    pub name: &'static str,
    pub blocked: bool,
    pub detail: String,
}

impl Finding {
    fn new(name: &'static str, blocked: bool, detail: impl Into<String>) -> Self {
        let mut detail: String = detail.into();
        if detail.chars().count() > DETAIL_MAX {
            detail = detail.chars().take(DETAIL_MAX - 1).collect::<String>() + "…";
        }
        Finding {
            name,
            blocked,
            detail,
        }
    }
}

/// The report as the reply carries it: one JSON array, compact.
pub fn report(findings: &[Finding]) -> String {
    let v: Vec<Value> = findings
        .iter()
        .map(|f| json!({"name": f.name, "blocked": f.blocked, "detail": f.detail}))
        .collect();
    Value::Array(v).to_string()
}

/// `EACCES`, `ENOENT`, … or the error's text.
fn en(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(c) => format!("{:?}", Errno::from_raw(c)),
        None if e.kind() == io::ErrorKind::TimedOut => "timeout".into(),
        None => e.to_string(),
    }
}

/// Where this process runs: its unit and slice, from the systemd line of `/proc/self/cgroup`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CgroupInfo {
    pub unit: Option<String>,
    pub slice: Option<String>,
    /// (mount point of the hierarchy, path of this process's cgroup inside it)
    pub dirs: Vec<(PathBuf, String)>,
}

pub fn parse_cgroup(text: &str, root: &Path) -> CgroupInfo {
    let mut info = CgroupInfo::default();
    let unified_mounted = root.join("unified").exists();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if path.split('/').any(|c| c == "..") {
            continue;
        }
        if ctrl.is_empty() || ctrl == "name=systemd" {
            let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
            if let Some(u) = comps.last().filter(|u| u.ends_with(".service")) {
                info.unit = Some((*u).to_owned());
                info.slice = comps
                    .iter()
                    .rev()
                    .nth(1)
                    .filter(|s| s.ends_with(".slice"))
                    .map(|s| (*s).to_owned());
            }
        }
        let mount = match ctrl {
            "" if unified_mounted => root.join("unified"),
            "" => root.to_owned(),
            c => root.join(
                c.strip_prefix("name=")
                    .unwrap_or(c)
                    .split(',')
                    .next()
                    .unwrap_or(c),
            ),
        };
        info.dirs.push((mount, path.to_owned()));
    }
    info
}

fn cgroup_info() -> CgroupInfo {
    parse_cgroup(
        &fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        Path::new("/sys/fs/cgroup"),
    )
}

/// The slice's `pids.max` (the chat's TasksMax), wherever the pids controller is.
fn tasks_max(cg: &CgroupInfo) -> Option<u64> {
    cg.dirs.iter().find_map(|(mount, path)| {
        let dir = mount.join(path.trim_start_matches('/'));
        let slice = dir.parent()?;
        fs::read_to_string(slice.join("pids.max"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

/// Runs the child side of an attack when this process was started as one; see [`CHILD_ENV`].
pub fn child_main() -> Option<ExitCode> {
    let what = std::env::var(CHILD_ENV).ok()?;
    use nix::sched::{unshare, CloneFlags};
    let flags = match what.as_str() {
        "user" => CloneFlags::CLONE_NEWUSER,
        "user+mnt" => CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS,
        "user+net" => CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET,
        "mnt" => CloneFlags::CLONE_NEWNS,
        "net" => CloneFlags::CLONE_NEWNET,
        "pid" => CloneFlags::CLONE_NEWPID,
        "ipc" => CloneFlags::CLONE_NEWIPC,
        "uts" => CloneFlags::CLONE_NEWUTS,
        "cgroup" => CloneFlags::CLONE_NEWCGROUP,
        _ => return Some(ExitCode::from(2)),
    };
    match unshare(flags) {
        Ok(()) => Some(ExitCode::SUCCESS),
        Err(e) => {
            print!("{e:?}");
            Some(ExitCode::from(1))
        }
    }
}

/// What the test tells an attack about another chat (all from the prompt, see main.rs).
pub struct Targets<'a> {
    /// Another chat's home (`other=<path>`).
    pub other: Option<&'a str>,
    /// Another chat's abstract Unix socket (`abstract=<name>`), listening while this runs.
    pub abstract_name: Option<&'a str>,
    /// Another chat's Linq chat id, turn id… (`seek=`), looked for wherever a turn can read.
    pub seek: &'a [String],
    /// The machine's own addresses (`hosts=`), besides those the turn can list itself.
    pub hosts: &'a [String],
}

/// The loopback port a `#hold` listens on too (another chat's TCP listener to reach).
pub const HOLD_TCP_PORT: u16 = 47999;
/// picortex-run's relay to picortex-egress in a turn (picortex_proto::egress::RELAY_PORT).
const RELAY: &str = "127.0.0.1:3128";

/// Every attack, in order.
pub fn run_all(t: &Targets<'_>) -> Vec<Finding> {
    let me = getuid().as_raw();
    let cg = cgroup_info();
    let mut f = vec![
        capabilities(),
        namespaces(),
        mount_filesystem(),
        fork_bomb(&cg),
    ];
    if let Some(o) = t.other {
        f.push(read_other_home(o));
        f.push(read_other_view(o));
    }
    f.extend([
        list_chats(),
        read_database(),
        read_gateway_credentials(),
        read_turn_credentials(&cg),
        read_system_secrets(),
        read_journal(me),
        read_config(),
    ]);
    f.extend(traces(&needles(t)));
    let scan = scan_pids(me);
    f.extend([
        see_processes(&scan),
        signal_processes(&scan),
        ptrace_foreign(&scan),
        wrapper_memory(),
        write_outside_home(),
        shared_drop(me),
        abstract_unix(t.abstract_name),
        chmod_suid(),
        setuid_exec(),
        cgroup_limits(&cg),
        system_bus(&cg),
        enumerate_chats(&cg),
        systemd_start_unit(),
        provision_helper(me),
    ]);
    f.extend(kernel_surface());
    f.push(foreign_sockets(me, t.abstract_name));
    f.extend(network(t.hosts));
    f
}

/// `#flood=<n>`: `n` distinct entries of `size` bytes (`#flood_bytes=`, 400 unless set) straight
/// to journald's native socket (what any process of a turn can do), and as many lines to stderr,
/// which the unit sends to the journal too. Distinct, because journald stores a repeated field
/// value once; past 400 bytes the rest is pseudo-random hex, which journald's compression cannot
/// shrink much, so the bytes stored are about the bytes sent.
pub fn flood_journal(n: u64, size: usize) -> String {
    let sock = std::os::unix::net::UnixDatagram::unbound();
    let mut err = io::BufWriter::with_capacity(1 << 16, io::stderr().lock());
    let mut sent = 0u64;
    let mut first_err = None;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..n {
        let head = format!(
            "flood {i:012} {:016x} ",
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        );
        let mut line = head;
        if size <= 400 {
            line.push_str(&"f".repeat(400usize.saturating_sub(line.len())));
        } else {
            while line.len() < size {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                line.push_str(&format!("{x:016x}"));
            }
            line.truncate(size);
        }
        let _ = writeln!(err, "{line}");
        if let Ok(s) = &sock {
            let entry = format!("SYSLOG_IDENTIFIER=standin-flood\nPRIORITY=6\nMESSAGE={line}\n");
            match s.send_to(entry.as_bytes(), "/run/systemd/journal/socket") {
                Ok(_) => sent += 1,
                Err(e) => {
                    first_err.get_or_insert_with(|| en(&e));
                }
            }
        }
    }
    let _ = err.flush();
    format!(
        "{sent} of {n} sent{}",
        first_err.map(|e| format!(" ({e})")).unwrap_or_default()
    )
}

/// `#hold=<name>`: what a chat leaves open for another chat to find while its turn runs: a
/// listener on the abstract Unix socket `@<name>` and a world-readable file in `/dev/shm`.
pub struct Hold {
    name: String,
    listener: Result<(), String>,
    tcp: Result<(), String>,
    marker: Result<PathBuf, String>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Hold {
    pub fn start(name: &str) -> Hold {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
        use std::sync::atomic::{AtomicUsize, Ordering};
        // The marker first: a listener seen from outside means both are there.
        let marker = Path::new("/dev/shm").join(format!("picortex-drop-uid{}-hold", getuid()));
        let marker = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&marker)
            .and_then(|mut f| f.write_all(b"x"))
            .and_then(|_| fs::set_permissions(&marker, fs::Permissions::from_mode(0o644)))
            .map(|_| marker)
            .map_err(|e| en(&e));
        let connections = std::sync::Arc::new(AtomicUsize::new(0));
        // Every connection, on either listener, is counted and handed a secret.
        fn answer<C: Write>(
            conns: impl Iterator<Item = io::Result<C>> + Send + 'static,
            n: std::sync::Arc<AtomicUsize>,
        ) {
            std::thread::spawn(move || {
                for mut c in conns.flatten() {
                    n.fetch_add(1, Ordering::SeqCst);
                    let _ = c.write_all(b"secret of the holding chat\n");
                }
            });
        }
        let listener = UnixAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| UnixListener::bind_addr(&a))
            .map(|l| {
                answer(
                    std::iter::repeat_with(move || l.accept().map(|(c, _)| c)),
                    connections.clone(),
                )
            })
            .map_err(|e| en(&e));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", HOLD_TCP_PORT))
            .map(|l| {
                answer(
                    std::iter::repeat_with(move || l.accept().map(|(c, _)| c)),
                    connections.clone(),
                )
            })
            .map_err(|e| en(&e));
        Hold {
            name: name.to_owned(),
            listener,
            tcp,
            marker,
            connections,
        }
    }

    /// Take the marker away again; say what was set up and how many connected.
    pub fn finish(self) -> String {
        if let Ok(p) = &self.marker {
            let _ = fs::remove_file(p);
        }
        format!(
            "listener @{} {}, tcp 127.0.0.1:{HOLD_TCP_PORT} {}, marker {}, {} connections",
            self.name,
            self.listener
                .as_ref()
                .map_or_else(|e| e.clone(), |_| "ok".into()),
            self.tcp
                .as_ref()
                .map_or_else(|e| e.clone(), |_| "ok".into()),
            self.marker
                .as_ref()
                .map_or_else(|e| e.clone(), |p| p.display().to_string()),
            self.connections.load(std::sync::atomic::Ordering::SeqCst)
        )
    }
}

/// Connect to another chat's abstract Unix socket (named by the test), and to every other
/// abstract socket `/proc/self/net/unix` names: any connection made is a way out of the turn.
fn abstract_unix(named: Option<&str>) -> Finding {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr as UnixAddr;
    let mut names: Vec<String> = named.map(str::to_owned).into_iter().collect();
    let listed = fs::read_to_string("/proc/self/net/unix").unwrap_or_default();
    for l in listed.lines().skip(1) {
        if let Some(n) = l
            .split_whitespace()
            .nth(7)
            .and_then(|p| p.strip_prefix('@'))
        {
            if !names.iter().any(|x| x == n) && names.len() < 40 {
                names.push(n.to_owned());
            }
        }
    }
    let mut connected = Vec::new();
    let mut errs = BTreeSet::new();
    let mut first = String::new();
    for (i, n) in names.iter().enumerate() {
        let r =
            UnixAddr::from_abstract_name(n.as_bytes()).and_then(|a| UnixStream::connect_addr(&a));
        let r = match r {
            Ok(_) => {
                connected.push(format!("@{n}"));
                "connected".to_owned()
            }
            Err(e) => {
                errs.insert(en(&e));
                en(&e)
            }
        };
        if i == 0 {
            first = format!("@{n}: {r}");
        }
    }
    if connected.is_empty() {
        Finding::new(
            "abstract_unix",
            true,
            format!(
                "{first}; {} abstract sockets in all: {}",
                names.len(),
                errs.into_iter().collect::<Vec<_>>().join(",")
            ),
        )
    } else {
        Finding::new(
            "abstract_unix",
            false,
            format!("connected to {}", connected.join(",")),
        )
    }
}

/// The operator's configuration names the owner's handles: no turn may read it.
fn read_config() -> Finding {
    match try_read(Path::new("/etc/picortex/picortexd.toml")) {
        Ok(t) => Finding::new(
            "read_config",
            false,
            format!("read /etc/picortex/picortexd.toml ({} bytes)", t.len()),
        ),
        Err(e) => Finding::new("read_config", true, format!("picortexd.toml: {e}")),
    }
}

/// The strings that would give another chat away: its Linq chat id and turn ids as given,
/// and its tag in the forms picortex writes it (user `chat-<tag>`, home `chats/<tag>`).
fn needles(t: &Targets<'_>) -> Vec<String> {
    let mut v: Vec<String> = t.seek.iter().filter(|s| s.len() >= 8).cloned().collect();
    if let Some(tag) = t
        .other
        .and_then(|o| Path::new(o).file_name())
        .map(|n| n.to_string_lossy().into_owned())
    {
        v.push(format!("chat-{tag}"));
        v.push(format!("chats/{tag}"));
    }
    v
}

/// Walk `roots` (names, symlink targets and the start of each readable file) looking for
/// `needles`; Err(where found) or Ok((entries seen, files read)).
fn walk_for(roots: &[&str], needles: &[String], contents: bool) -> Result<(usize, usize), String> {
    const SKIP: &[&str] = &[
        "/var/lib/dpkg",
        "/var/lib/apt",
        "/var/cache",
        "/proc/self/net/stat",
    ];
    // This chat's own home holds the prompt, which names the other chat.
    let home = std::env::var("HOME").unwrap_or_else(|_| "/nonexistent".into());
    let mut stack: Vec<(PathBuf, usize)> = roots.iter().map(|r| (PathBuf::from(r), 0)).collect();
    let (mut seen, mut read) = (0usize, 0usize);
    let mut found = Vec::new();
    let hit = |s: &str| needles.iter().find(|n| s.contains(n.as_str())).cloned();
    while let Some((p, depth)) = stack.pop() {
        if seen > 60_000 || found.len() > 3 {
            break;
        }
        seen += 1;
        let ps = p.to_string_lossy().into_owned();
        if SKIP.iter().any(|s| ps.starts_with(s)) || ps.starts_with(&home) {
            continue;
        }
        if let Some(n) = hit(&ps) {
            found.push(format!("{ps} (name has {n})"));
            continue;
        }
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if md.file_type().is_symlink() {
            if let Some(n) = fs::read_link(&p)
                .ok()
                .and_then(|t| hit(&t.to_string_lossy()))
            {
                found.push(format!("{ps} -> {n}"));
            }
        } else if md.is_dir() {
            if depth < 12 {
                if let Ok(rd) = fs::read_dir(&p) {
                    stack.extend(rd.flatten().map(|e| (e.path(), depth + 1)));
                }
            }
        } else if contents && md.is_file() {
            let mut buf = Vec::new();
            if File::open(&p)
                .and_then(|f| f.take(64 << 10).read_to_end(&mut buf))
                .is_ok()
            {
                read += 1;
                if let Some(n) = hit(&String::from_utf8_lossy(&buf)) {
                    found.push(format!("{ps} (has {n})"));
                }
            }
        }
    }
    if found.is_empty() {
        Ok((seen, read))
    } else {
        Err(found.join("; "))
    }
}

/// Another chat's traces where a turn can read: systemd's runtime state (transient unit files,
/// per-unit log fields), the cgroup tree (its slice and turns, with their limits), the netns's
/// socket tables, the user database, and the rest of /var and /run.
fn traces(needles: &[String]) -> Vec<Finding> {
    let places: [(&'static str, &[&str], bool); 5] = [
        ("other_chat_in_run", &["/run"], true),
        ("other_chat_in_cgroupfs", &["/sys/fs/cgroup"], false),
        (
            "other_chat_in_proc_net",
            &["/proc/self/net", "/proc/net"],
            true,
        ),
        ("other_chat_in_etc", &["/etc"], true),
        ("other_chat_in_var_tmp", &["/var", "/tmp", "/dev/shm"], true),
    ];
    places
        .into_iter()
        .map(|(name, roots, contents)| {
            if needles.is_empty() {
                return Finding::new(name, true, "no other chat named (seek=, other=)");
            }
            let mut r = walk_for(roots, needles, contents);
            // The user database as NSS answers it (files, and systemd-userdbd if configured).
            if name == "other_chat_in_etc" {
                for db in ["passwd", "group"] {
                    let out = Command::new("getent").arg(db).stdin(Stdio::null()).output();
                    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                    if let Some(n) = needles
                        .iter()
                        .find(|n| text.as_deref().unwrap_or("").contains(n.as_str()))
                    {
                        let prev = r.err().map(|e| format!("{e}; ")).unwrap_or_default();
                        r = Err(format!("{prev}getent {db} (has {n})"));
                    }
                }
            }
            match r {
                Ok((seen, read)) => Finding::new(
                    name,
                    true,
                    format!(
                        "{seen} entries, {read} files of {} read: nothing of the other chat",
                        roots.join(",")
                    ),
                ),
                Err(found) => Finding::new(name, false, found),
            }
        })
        .collect()
}

/// `#journal_forge=<marker>`: the agent writes a journal entry dressed as the helper's audit
/// record of a refused call (`SYSLOG_IDENTIFIER=picortex-provision`, `PICORTEX_*` fields,
/// `<marker>` in its message) straight to journald's native socket. Returns "sent" or the error.
pub fn forge_journal(marker: &str) -> String {
    let entry = format!(
        "SYSLOG_IDENTIFIER=picortex-provision\nPRIORITY=4\nPICORTEX_AUDIT=true\nPICORTEX_OP=EnsureChat\n\
         PICORTEX_CALLER=:1.1\nPICORTEX_CALLER_UID=0\nPICORTEX_OUTCOME=refused\n\
         MESSAGE=EnsureChat by uid 0 (:1.1): refused: {marker}\n"
    );
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return en(&e),
    };
    match sock.send_to(entry.as_bytes(), "/run/systemd/journal/socket") {
        Ok(_) => "sent".to_owned(),
        Err(e) => en(&e),
    }
}

/// A raw system call's outcome: its non-negative return, or the errno it set.
fn sys(r: nix::libc::c_long) -> Result<nix::libc::c_long, Errno> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

/// One group of calls the turn's seccomp filter must refuse: blocked only if every call failed
/// with EPERM (`SystemCallErrorNumber=`) or ENOSYS. The arguments work on an open kernel, so any
/// other answer means the call got through.
fn refused(name: &'static str, calls: &[(&str, Result<nix::libc::c_long, Errno>)]) -> Finding {
    let blocked = calls
        .iter()
        .all(|(_, r)| matches!(r, Err(Errno::EPERM | Errno::ENOSYS)));
    let detail = calls
        .iter()
        .map(|(c, r)| match r {
            Ok(v) => format!("{c}={v}"),
            Err(e) => format!("{c}:{e:?}"),
        })
        .collect::<Vec<_>>()
        .join(" ");
    Finding::new(name, blocked, detail)
}

/// Kernel surface no agent needs and kernel exploits favour (issue 7, item 6): io_uring,
/// userfaultfd and the kernel keyrings. Nothing persists: a ring or userfaultfd that opens is
/// closed at once, a key added goes to this process's own keyring, which dies with it.
#[allow(unsafe_code)]
fn kernel_surface() -> Vec<Finding> {
    use nix::libc::{self, c_long};
    const KEY_SPEC_PROCESS_KEYRING: c_long = -2;
    const KEY_SPEC_SESSION_KEYRING: c_long = -3;
    const KEYCTL_GET_KEYRING_ID: c_long = 0;
    const UFFD_USER_MODE_ONLY: c_long = 1;
    const IORING_REGISTER_PROBE: c_long = 8;
    let close = |fd: c_long| {
        // SAFETY: `fd` was just returned to us by the kernel and nothing else holds it.
        unsafe { libc::close(fd as libc::c_int) };
    };

    // struct io_uring_params is 120 bytes; zeroed asks for a plain one-entry ring.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup reads and writes at most sizeof(struct io_uring_params) = 120
    // bytes at `params`, which is that large and lives across the call.
    let setup = sys(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) });
    let ring = setup.unwrap_or(-1);
    // SAFETY: no pointers (a null sigset with size 0); `ring` is our ring or -1.
    let enter = sys(unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            ring,
            0u32,
            0u32,
            0u32,
            std::ptr::null::<u8>(),
            0usize,
        )
    });
    let mut probe = [0u64; 64];
    // SAFETY: IORING_REGISTER_PROBE with 8 ops writes 16 + 8*8 bytes into `probe` (512 bytes).
    let register = sys(unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring,
            IORING_REGISTER_PROBE,
            probe.as_mut_ptr(),
            8u32,
        )
    });
    if ring >= 0 {
        close(ring);
    }
    // SAFETY: no pointers.
    let uffd = sys(unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC as c_long | UFFD_USER_MODE_ONLY,
        )
    });
    if let Ok(fd) = uffd {
        close(fd);
    }
    let (ty, desc, payload) = (c"user", c"picortex-attack-probe", b"x");
    // SAFETY: keyctl(GET_KEYRING_ID) takes no pointers.
    let keyctl = sys(unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_GET_KEYRING_ID,
            KEY_SPEC_SESSION_KEYRING,
            0,
        )
    });
    // SAFETY: the type and description are NUL-terminated C strings and the payload is as long
    // as the length given; all outlive the call.
    let add = sys(unsafe {
        libc::syscall(
            libc::SYS_add_key,
            ty.as_ptr(),
            desc.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            KEY_SPEC_PROCESS_KEYRING,
        )
    });
    // SAFETY: as above; a null callout string.
    let request = sys(unsafe {
        libc::syscall(
            libc::SYS_request_key,
            ty.as_ptr(),
            c"picortex-attack-missing".as_ptr(),
            std::ptr::null::<u8>(),
            0,
        )
    });
    vec![
        refused(
            "io_uring",
            &[
                ("io_uring_setup", setup),
                ("io_uring_enter", enter),
                ("io_uring_register", register),
            ],
        ),
        refused("userfaultfd", &[("userfaultfd", uffd)]),
        refused(
            "kernel_keyring",
            &[
                ("keyctl", keyctl),
                ("add_key", add),
                ("request_key", request),
            ],
        ),
    ]
}

/// What `#forge` puts in the reply to be found if it got through (see [`forge_result`]).
pub const FORGED_TEXT: &str = "standin: FORGED REPLY";

/// `#forge`: the agent tries to make the gateway believe a result picortex-run never wrote: a
/// document with [`FORGED_TEXT`] and a negative cost for this very turn (its id is in the unit
/// name), written to its stdout and stderr, to every other descriptor it holds, and to those of
/// its parent, picortex-run. Returns what each attempt did, as one JSON object for the reply.
pub fn forge_result() -> String {
    let turn = cgroup_info()
        .unit
        .and_then(|u| {
            u.strip_prefix("picortex-turn-")?
                .strip_suffix(".service")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let line = json!({
        "turn_id": turn, "outcome": "ok", "text": FORGED_TEXT,
        "session_id": uuid::Uuid::new_v4().to_string(), "new_session": false,
        "cost_usd": -1000.0, "usage": {"input_tokens": 1, "output_tokens": 1},
    })
    .to_string()
        + "\n";
    let put = |w: &mut dyn Write| match w.write_all(line.as_bytes()).and_then(|_| w.flush()) {
        Ok(()) => "wrote".to_owned(),
        Err(e) => en(&e),
    };
    let mut report = serde_json::Map::new();
    report.insert("turn".into(), json!(turn));
    report.insert("stdout".into(), json!(put(&mut io::stdout().lock())));
    report.insert("stderr".into(), json!(put(&mut io::stderr().lock())));
    // Every descriptor this process or its parent holds, reopened through /proc for writing.
    let ppid = getppid().as_raw();
    for (who, dir) in [
        ("self", "/proc/self/fd".to_owned()),
        ("parent", format!("/proc/{ppid}/fd")),
    ] {
        let mut tries = serde_json::Map::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if who == "self" && ["0", "1", "2"].contains(&name.as_str()) {
                        continue;
                    }
                    let target = fs::read_link(e.path())
                        .map(|t| t.display().to_string())
                        .unwrap_or_else(|e| en(&e));
                    let did = match OpenOptions::new().append(true).open(e.path()) {
                        Ok(mut f) => put(&mut f),
                        Err(e) => en(&e),
                    };
                    tries.insert(name, json!(format!("{target}: {did}")));
                }
            }
            Err(e) => {
                tries.insert("*".into(), json!(en(&e)));
            }
        }
        // The parent's stdout and stderr by name too, whether or not the listing showed them.
        if who == "parent" {
            for n in ["1", "2"] {
                if !tries.contains_key(n) {
                    let did = match OpenOptions::new().append(true).open(format!("{dir}/{n}")) {
                        Ok(mut f) => put(&mut f),
                        Err(e) => en(&e),
                    };
                    tries.insert(n.into(), json!(did));
                }
            }
        }
        report.insert(who.into(), Value::Object(tries));
    }
    Value::Object(report).to_string()
}

fn capabilities() -> Finding {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut bad = Vec::new();
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(str::trim);
        if v != Some("0000000000000000") {
            bad.push(format!("{key}={}", v.unwrap_or("?")));
        }
    }
    let nnp = status
        .lines()
        .find_map(|l| l.strip_prefix("NoNewPrivs:"))
        .map(str::trim);
    if nnp != Some("1") {
        bad.push(format!("NoNewPrivs={}", nnp.unwrap_or("?")));
    }
    let su = nix::unistd::setuid(nix::unistd::Uid::from_raw(0));
    let sg = nix::unistd::setgid(nix::unistd::Gid::from_raw(0));
    if su.is_ok() || sg.is_ok() {
        bad.push("setuid(0)/setgid(0) succeeded".into());
    }
    let detail = if bad.is_empty() {
        format!(
            "all capability sets empty, NoNewPrivs=1, setuid(0): {:?}",
            su.err().unwrap_or(Errno::UnknownErrno)
        )
    } else {
        bad.join(", ")
    };
    Finding::new("capabilities", bad.is_empty(), detail)
}

fn namespaces() -> Finding {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let mut ok = Vec::new();
    let mut errs = BTreeSet::new();
    for kind in [
        "user", "user+mnt", "user+net", "mnt", "net", "pid", "ipc", "uts", "cgroup",
    ] {
        match Command::new(&exe)
            .env(CHILD_ENV, kind)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => ok.push(kind),
            Ok(o) => {
                errs.insert(String::from_utf8_lossy(&o.stdout).into_owned());
            }
            Err(e) => {
                errs.insert(format!("spawn {}", en(&e)));
            }
        }
    }
    let detail = if ok.is_empty() {
        format!(
            "unshare(user, mnt, net, pid, ipc, uts, cgroup) all failed: {}",
            errs.into_iter().collect::<Vec<_>>().join(",")
        )
    } else {
        format!("unshare succeeded for {}", ok.join(","))
    };
    Finding::new("namespaces", ok.is_empty(), detail)
}

fn mount_filesystem() -> Finding {
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    let target = Path::new(&home).join(format!(".picortex-attack-mnt-{}", std::process::id()));
    let _ = fs::create_dir(&target);
    let r = nix::mount::mount(
        Some("tmpfs"),
        &target,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    if r.is_ok() {
        let _ = nix::mount::umount(&target);
    }
    let _ = fs::remove_dir(&target);
    match r {
        Ok(()) => Finding::new("mount_filesystem", false, "mounted a tmpfs in the home"),
        Err(e) => Finding::new("mount_filesystem", true, format!("mount(tmpfs): {e:?}")),
    }
}

/// Fork a child that only sleeps (it ends itself after a minute if nobody kills it).
#[allow(unsafe_code)]
fn fork_sleeper() -> nix::Result<Pid> {
    use nix::unistd::{alarm, fork, pause, ForkResult};
    // SAFETY: the process is single-threaded when the fork bomb runs (it comes before the only
    // attacks that start threads), and the child makes nothing but raw syscalls before it dies.
    match unsafe { fork() }? {
        ForkResult::Child => {
            alarm::set(60);
            loop {
                pause();
            }
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

fn fork_bomb(cg: &CgroupInfo) -> Finding {
    let max = tasks_max(cg);
    let cap = max.map_or(2560, |m| m.saturating_mul(10)).min(8192) as usize;
    let started = Instant::now();
    let mut kids = Vec::new();
    let mut err = None;
    while kids.len() < cap {
        match fork_sleeper() {
            Ok(pid) => kids.push(pid),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let n = kids.len();
    for k in &kids {
        let _ = kill(*k, Signal::SIGKILL);
    }
    for k in kids {
        let _ = waitpid(k, None);
    }
    // The unit survives: forking works again once the children are gone.
    let again = fork_sleeper().map(|p| {
        let _ = kill(p, Signal::SIGKILL);
        let _ = waitpid(p, None);
    });
    let blocked = err == Some(Errno::EAGAIN) && n < cap && again.is_ok();
    let detail = format!(
        "{} after {n} forks in {} ms (TasksMax {}); fork afterwards: {}",
        err.map_or("no failure".into(), |e| format!("{e:?}")),
        started.elapsed().as_millis(),
        max.map_or("unknown".into(), |m| m.to_string()),
        again.map_or_else(|e| format!("{e:?}"), |_| "ok".into()),
    );
    Finding::new("fork_bomb", blocked, detail)
}

/// Try to read a file (first bytes) or list a directory; Ok(what was seen).
fn try_read(p: &Path) -> Result<String, String> {
    match fs::read_dir(p) {
        Ok(rd) => {
            let names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            return Ok(format!("listed {} ({} entries)", p.display(), names.len()));
        }
        Err(e) if e.raw_os_error() == Some(Errno::ENOTDIR as i32) => {}
        Err(e) => return Err(format!("{}: {}", p.display(), en(&e))),
    }
    let mut buf = [0u8; 64];
    match File::open(p).and_then(|mut f| f.read(&mut buf)) {
        Ok(n) => Ok(format!("read {n} bytes of {}", p.display())),
        Err(e) => Err(format!("{}: {}", p.display(), en(&e))),
    }
}

/// Blocked when every path fails; the detail names what failed how (or what leaked).
fn reads(name: &'static str, paths: &[PathBuf]) -> Finding {
    let mut leaked = Vec::new();
    let mut errs = BTreeSet::new();
    for p in paths {
        match try_read(p) {
            Ok(s) => leaked.push(s),
            Err(e) => {
                errs.insert(e.rsplit(": ").next().unwrap_or("").to_owned());
            }
        }
    }
    if leaked.is_empty() {
        Finding::new(
            name,
            true,
            format!(
                "{} paths, all failed: {}",
                paths.len(),
                errs.into_iter().collect::<Vec<_>>().join(",")
            ),
        )
    } else {
        Finding::new(name, false, leaked.join("; "))
    }
}

fn read_other_home(other: &str) -> Finding {
    let o = Path::new(other);
    reads(
        "read_other_home",
        &[
            o.to_owned(),
            o.join(".claude"),
            o.join(".claude/.claude.json"),
            o.join(".claude/projects"),
            o.join(".picortex"),
        ],
    )
}

/// The helper's views of the other chat (its copy of the agent's key among them) and the
/// helper's state directory they live in.
fn read_other_view(other: &str) -> Finding {
    let tag = Path::new(other)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let views = Path::new("/var/lib/picortex-provision/views");
    reads(
        "read_other_view",
        &[
            PathBuf::from("/var/lib/picortex-provision"),
            views.to_owned(),
            views.join(&tag),
            views.join(&tag).join("etc"),
            views.join(&tag).join("etc/anthropic-api-key"),
            views.join(&tag).join("passwd"),
        ],
    )
}

fn list_chats() -> Finding {
    let me = std::env::var("HOME").ok().and_then(|h| {
        Path::new(&h)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    });
    match fs::read_dir(CHATS_DIR) {
        Err(e) => Finding::new("list_chats", true, format!("{CHATS_DIR}: {}", en(&e))),
        Ok(rd) => {
            let others: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| Some(n) != me.as_ref())
                .collect();
            if others.is_empty() {
                Finding::new(
                    "list_chats",
                    true,
                    format!("{CHATS_DIR} lists only this chat's own home"),
                )
            } else {
                Finding::new(
                    "list_chats",
                    false,
                    format!("{CHATS_DIR} lists other chats: {}", others.join(",")),
                )
            }
        }
    }
}

fn read_database() -> Finding {
    let paths: Vec<PathBuf> = ["picortex.db", "picortex.db-wal", "picortex.db-shm", "turns"]
        .iter()
        .map(|n| Path::new("/var/lib/picortex").join(n))
        .collect();
    reads("read_database", &paths)
}

fn read_gateway_credentials() -> Finding {
    let mut paths = vec![
        PathBuf::from("/run/credentials/picortexd.service"),
        PathBuf::from("/etc/picortex/credentials"),
    ];
    for n in ["linq-token", "linq-webhook-secret"] {
        paths.push(Path::new("/run/credentials/picortexd.service").join(n));
        paths.push(Path::new("/etc/picortex/credentials").join(n));
    }
    reads("read_gateway_credentials", &paths)
}

fn read_turn_credentials(cg: &CgroupInfo) -> Finding {
    let own = cg.unit.clone().unwrap_or_default();
    let root = Path::new("/run/credentials");
    let entries = match fs::read_dir(root) {
        Err(e) => {
            return Finding::new(
                "read_turn_credentials",
                true,
                format!("/run/credentials: {}", en(&e)),
            )
        }
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
    };
    let mut leaked = Vec::new();
    for name in entries.iter().filter(|n| **n != own) {
        let dir = root.join(name);
        if let Ok(rd) = fs::read_dir(&dir) {
            let files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            leaked.push(format!("listed {name}"));
            for f in files {
                if fs::read(&f).is_ok() {
                    leaked.push(format!("read {}", f.display()));
                }
            }
        }
    }
    if leaked.is_empty() {
        let others = entries.iter().filter(|n| **n != own).count();
        Finding::new(
            "read_turn_credentials",
            true,
            format!("/run/credentials shows {others} other units' directories, none readable"),
        )
    } else {
        Finding::new("read_turn_credentials", false, leaked.join("; "))
    }
}

fn read_system_secrets() -> Finding {
    let paths: Vec<PathBuf> = [
        "/etc/shadow",
        "/etc/gshadow",
        "/var/lib/picortex-provision",
        "/var/lib/picortex-provision/chats",
        "/root",
        "/etc/linq-sim",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    reads("read_system_secrets", &paths)
}

fn read_journal(me: u32) -> Finding {
    let own = format!("user-{me}.journal");
    let mut files = Vec::new();
    let mut dir_errs = BTreeSet::new();
    for root in ["/run/log/journal", "/var/log/journal"] {
        match fs::read_dir(root) {
            Err(e) => {
                dir_errs.insert(format!("{root}: {}", en(&e)));
            }
            Ok(rd) => {
                for d in rd.flatten() {
                    match fs::read_dir(d.path()) {
                        Ok(inner) => files.extend(inner.flatten().map(|e| e.path())),
                        Err(e) => {
                            dir_errs.insert(format!("{}: {}", d.path().display(), en(&e)));
                        }
                    }
                }
            }
        }
    }
    let readable: Vec<String> = files
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n != own.as_str()))
        .filter(|p| File::open(p).is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if readable.is_empty() {
        let mut detail = format!("{} journal files seen, none readable", files.len());
        if !dir_errs.is_empty() {
            detail += &format!("; {}", dir_errs.into_iter().collect::<Vec<_>>().join(", "));
        }
        Finding::new("read_journal", true, detail)
    } else {
        Finding::new(
            "read_journal",
            false,
            format!("readable: {}", readable.join(",")),
        )
    }
}

/// What a scan of the pid space finds.
pub struct PidScan {
    /// Pids listed in /proc.
    visible: Vec<(i32, Option<u32>)>,
    /// Pids that exist (kill 0 says EPERM) but this process may not signal.
    hidden_existing: Vec<i32>,
    /// Pids that accept a signal from us but are not ours.
    signalable_foreign: Vec<i32>,
    me: u32,
}

/// The process a thread id belongs to (`Tgid:` of /proc/<tid>/status).
fn thread_group(tid: i32) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn proc_owner(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
}

fn scan_pids(me: u32) -> PidScan {
    let visible: Vec<(i32, Option<u32>)> = fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
                .map(|p| (p, proc_owner(p)))
                .collect()
        })
        .unwrap_or_default();
    let mut hidden_existing = Vec::new();
    let mut signalable_foreign = Vec::new();
    // Signalling needs our uid, so whatever answers is this chat's: only this process and its
    // parent, picortex-run, are expected.
    let own = [std::process::id() as i32, getppid().as_raw()];
    for pid in (1..=65535).filter(|p| !own.contains(p)) {
        match kill(Pid::from_raw(pid), None) {
            Err(Errno::EPERM) => hidden_existing.push(pid),
            // Without CAP_KILL (the capability sets are checked empty elsewhere), kill() only
            // succeeds for processes of our own uid, i.e. this chat's own. One counts as foreign
            // only if /proc shows it belongs to someone else. A signalable pid that /proc hides is
            // one of ours that is not dumpable: a thread of picortex-run, which turns dumping off.
            Ok(())
                if proc_owner(pid).is_some_and(|o| o != me)
                    && !own.contains(&thread_group(pid).unwrap_or(-1)) =>
            {
                signalable_foreign.push(pid)
            }
            _ => {}
        }
    }
    PidScan {
        visible,
        hidden_existing,
        signalable_foreign,
        me,
    }
}

fn see_processes(s: &PidScan) -> Finding {
    let foreign: Vec<String> = s
        .visible
        .iter()
        .filter(|(_, u)| *u != Some(s.me))
        .map(|(p, u)| format!("{p}(uid {u:?})"))
        .collect();
    let detail = format!(
        "/proc lists {} pids, {} not ours{}; {} other pids exist",
        s.visible.len(),
        foreign.len(),
        if foreign.is_empty() {
            String::new()
        } else {
            format!(": {}", foreign.join(","))
        },
        s.hidden_existing.len()
    );
    Finding::new("see_processes", foreign.is_empty(), detail)
}

fn signal_processes(s: &PidScan) -> Finding {
    if s.signalable_foreign.is_empty() {
        Finding::new(
            "signal_processes",
            true,
            format!(
                "kill(pid, 0): EPERM for all {} foreign pids",
                s.hidden_existing.len()
            ),
        )
    } else {
        Finding::new(
            "signal_processes",
            false,
            format!("may signal foreign pids {:?}", s.signalable_foreign),
        )
    }
}

/// Attach, read memory through process_vm_readv and /proc/<pid>/mem. Err(what worked).
fn probe_memory(pid: i32) -> Result<Vec<String>, String> {
    let p = Pid::from_raw(pid);
    let mut errs = Vec::new();
    match nix::sys::ptrace::attach(p) {
        Ok(()) => {
            let _ = waitpid(p, None);
            let _ = nix::sys::ptrace::detach(p, None);
            return Err(format!("PTRACE_ATTACH {pid} succeeded"));
        }
        Err(e) => errs.push(format!("attach {e:?}")),
    }
    let mut buf = [0u8; 8];
    let remote = [RemoteIoVec {
        base: 0x40_0000,
        len: buf.len(),
    }];
    match process_vm_readv(p, &mut [IoSliceMut::new(&mut buf)], &remote) {
        // EFAULT means the kernel let us in and only the address was wrong.
        Ok(_) | Err(Errno::EFAULT) => return Err(format!("process_vm_readv {pid} permitted")),
        Err(e) => errs.push(format!("vm_readv {e:?}")),
    }
    match File::open(format!("/proc/{pid}/mem")) {
        Ok(_) => return Err(format!("opened /proc/{pid}/mem")),
        Err(e) => errs.push(format!("mem {}", en(&e))),
    }
    Ok(errs)
}

fn ptrace_foreign(s: &PidScan) -> Finding {
    let mut targets: Vec<i32> = vec![1];
    targets.extend(
        s.visible
            .iter()
            .filter(|(_, u)| *u != Some(s.me))
            .map(|(p, _)| *p),
    );
    targets.extend(s.hidden_existing.iter().filter(|p| **p != 1).take(16));
    targets.extend(&s.signalable_foreign);
    targets.dedup();
    let mut errs = BTreeSet::new();
    let mut worked = Vec::new();
    for pid in &targets {
        match probe_memory(*pid) {
            Ok(e) => errs.extend(e),
            Err(w) => worked.push(w),
        }
    }
    if worked.is_empty() {
        Finding::new(
            "ptrace_foreign",
            true,
            format!(
                "{} pids incl. 1: {}",
                targets.len(),
                errs.into_iter().collect::<Vec<_>>().join(",")
            ),
        )
    } else {
        Finding::new("ptrace_foreign", false, worked.join("; "))
    }
}

/// The agent against its own chat's audited wrapper (picortex-run, same user): could it rewrite
/// the wrapper's memory, and so the turn's result and reported cost?
fn wrapper_memory() -> Finding {
    let ppid = getppid().as_raw();
    let name = fs::read_to_string(format!("/proc/{ppid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| en(&e));
    let mut worked = Vec::new();
    let mut errs = Vec::new();
    let mut buf = [0u8; 8];
    let remote = [RemoteIoVec {
        base: 0x40_0000,
        len: buf.len(),
    }];
    match process_vm_readv(
        Pid::from_raw(ppid),
        &mut [IoSliceMut::new(&mut buf)],
        &remote,
    ) {
        Ok(_) | Err(Errno::EFAULT) => worked.push("process_vm_readv permitted".to_owned()),
        Err(e) => errs.push(format!("vm_readv {e:?}")),
    }
    match OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{ppid}/mem"))
    {
        Ok(_) => worked.push("opened /proc/<ppid>/mem read-write".to_owned()),
        Err(e) => errs.push(format!("mem {}", en(&e))),
    }
    match nix::sys::ptrace::attach(Pid::from_raw(ppid)) {
        Ok(()) => {
            let _ = waitpid(Pid::from_raw(ppid), None);
            let _ = nix::sys::ptrace::detach(Pid::from_raw(ppid), None);
            worked.push("PTRACE_ATTACH succeeded".to_owned());
        }
        Err(e) => errs.push(format!("attach {e:?}")),
    }
    if worked.is_empty() {
        Finding::new(
            "wrapper_memory",
            true,
            format!("parent {ppid} ({name}): {}", errs.join(",")),
        )
    } else {
        Finding::new(
            "wrapper_memory",
            false,
            format!("parent {ppid} ({name}): {}", worked.join(", ")),
        )
    }
}

fn try_create(dir: &Path, name: &str) -> io::Result<PathBuf> {
    let p = dir.join(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&p)?;
    Ok(p)
}

fn write_outside_home() -> Finding {
    let name = format!(".picortex-attack-{}", std::process::id());
    let dirs = [
        "/etc",
        "/usr",
        "/usr/local",
        "/usr/lib",
        "/var",
        "/var/lib",
        "/var/lib/picortex",
        CHATS_DIR,
        "/var/lib/picortex/turns",
        // /tmp too: a private /tmp is still the host's disk, outside the chat's quota.
        "/tmp",
        "/var/tmp",
        "/var/cache",
        "/var/log",
        "/run",
        "/run/lock",
        "/run/user",
        "/opt",
        "/srv",
        "/home",
        "/root",
        "/mnt",
        "/dev",
        "/sys/fs/cgroup",
    ];
    let mut wrote = Vec::new();
    let mut errs = BTreeSet::new();
    for d in dirs {
        match try_create(Path::new(d), &name) {
            Ok(p) => {
                let _ = fs::remove_file(&p);
                wrote.push(d);
            }
            Err(e) => {
                errs.insert(en(&e));
            }
        }
    }
    if wrote.is_empty() {
        Finding::new(
            "write_outside_home",
            true,
            format!(
                "{} dirs, all failed: {}",
                dirs.len(),
                errs.into_iter().collect::<Vec<_>>().join(",")
            ),
        )
    } else {
        Finding::new(
            "write_outside_home",
            false,
            format!("created files in {}", wrote.join(",")),
        )
    }
}

/// Leave a world-readable marker in every place a file could be shared through, then look for
/// markers other chats left. Writing to a private /tmp is fine; finding another chat's marker
/// is not. (Markers stay: a later attack in another chat looks for them.)
fn shared_drop(me: u32) -> Finding {
    const PREFIX: &str = "picortex-drop-uid";
    let dirs = [
        "/tmp",
        "/var/tmp",
        "/dev/shm",
        "/run/lock",
        "/dev/mqueue",
        "/var/lib/picortex/chats",
    ];
    let mine = format!("{PREFIX}{me}");
    let mut wrote = Vec::new();
    let mut found = Vec::new();
    for d in dirs {
        let p = Path::new(d).join(&mine);
        if OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&p)
            .and_then(|mut f| f.write_all(b"x"))
            .is_ok()
        {
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o644));
            wrote.push(d);
        }
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(PREFIX) && n != mine {
                    found.push(format!("{d}/{n}"));
                }
            }
        }
    }
    let detail = format!(
        "wrote markers in {}; other chats' markers: {}",
        if wrote.is_empty() {
            "none".to_owned()
        } else {
            wrote.join(",")
        },
        if found.is_empty() {
            "none".to_owned()
        } else {
            found.join(",")
        }
    );
    Finding::new("shared_drop", found.is_empty(), detail)
}

fn chmod_suid() -> Finding {
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    let p = Path::new(&home).join(format!(".picortex-attack-suid-{}", std::process::id()));
    if let Err(e) = fs::write(&p, b"#!/bin/sh\nid\n") {
        return Finding::new(
            "chmod_suid",
            false,
            format!("could not create a file in the home: {}", en(&e)),
        );
    }
    let mut out = Vec::new();
    let mut got_bit = false;
    for mode in [0o4755, 0o2755, 0o6755] {
        let r = fs::set_permissions(&p, fs::Permissions::from_mode(mode));
        let now = fs::metadata(&p)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0);
        got_bit |= now & 0o6000 != 0;
        out.push(format!(
            "{mode:o}: {}",
            r.map_or_else(|e| en(&e), |_| "ok".into())
        ));
    }
    let _ = fs::remove_file(&p);
    Finding::new(
        "chmod_suid",
        !got_bit,
        format!("chmod {}; set-id bit on file: {got_bit}", out.join(", ")),
    )
}

/// Run a setuid-root program with stdin held open and watch its credentials in /proc while it
/// runs: with NoNewPrivileges the set-id bit is ignored and it runs as us.
fn watch_setuid(bin: &str, args: &[&str]) -> Result<String, String> {
    let mut child = match Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Ok(format!("{bin}: {}", en(&e))),
    };
    let pid = child.id();
    let end = Instant::now() + Duration::from_millis(400);
    let mut seen = Vec::new();
    let mut unobservable = 0;
    let mut exited = None;
    while Instant::now() < end {
        if let Ok(Some(st)) = child.try_wait() {
            exited = Some(st);
            break;
        }
        match fs::read_to_string(format!("/proc/{pid}/status")) {
            Ok(s) => {
                for key in ["Uid:", "Gid:"] {
                    if let Some(l) = s.lines().find(|l| l.starts_with(key)) {
                        let v: Vec<&str> = l.split_whitespace().skip(1).collect();
                        if v.contains(&"0") {
                            seen.push(format!("{key}{}", v.join("/")));
                        }
                    }
                }
            }
            Err(_) => unobservable += 1,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if exited.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output();
    let (code, stdout) = match &out {
        Ok(o) => (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        ),
        Err(_) => (None, String::new()),
    };
    let name = Path::new(bin)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !seen.is_empty() || stdout.contains("uid=0") {
        return Err(format!(
            "{name} ran privileged ({})",
            seen.first().cloned().unwrap_or_else(|| "uid=0".into())
        ));
    }
    if unobservable > 0 && exited.is_none() {
        return Err(format!(
            "{name} vanished from /proc while running (credentials changed?)"
        ));
    }
    Ok(format!(
        "{name} ran as us ({})",
        code.map_or("killed".into(), |c| format!("exit {c}"))
    ))
}

fn setuid_exec() -> Finding {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (bin, args) in [
        ("/usr/bin/su", &["root", "-c", "id"][..]),
        ("/usr/bin/passwd", &[][..]),
        ("/usr/bin/chfn", &[][..]),
        ("/usr/bin/chsh", &[][..]),
    ] {
        match watch_setuid(bin, args) {
            Ok(s) => ok.push(s),
            Err(s) => bad.push(s),
        }
    }
    if bad.is_empty() {
        Finding::new("setuid_exec", true, ok.join(", "))
    } else {
        Finding::new("setuid_exec", false, bad.join(", "))
    }
}

fn cgroup_limits(cg: &CgroupInfo) -> Finding {
    let files = [
        "memory.max",
        "memory.high",
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "pids.max",
        "cgroup.procs",
        "tasks",
        "cgroup.subtree_control",
    ];
    let mut tried = 0;
    let mut opened = Vec::new();
    let mut errs = BTreeSet::new();
    for (mount, path) in &cg.dirs {
        let unit = mount.join(path.trim_start_matches('/'));
        let mut dirs = vec![unit.clone(), mount.clone()];
        if let Some(slice) = unit.parent() {
            dirs.push(slice.to_owned());
        }
        for d in dirs {
            for f in files {
                let p = d.join(f);
                if !p.exists() {
                    continue;
                }
                tried += 1;
                // Opening for writing proves it; nothing is ever written.
                match OpenOptions::new().write(true).open(&p) {
                    Ok(_) => opened.push(p.display().to_string()),
                    Err(e) => {
                        errs.insert(en(&e));
                    }
                }
            }
        }
    }
    if opened.is_empty() {
        Finding::new(
            "cgroup_limits",
            true,
            format!(
                "{tried} cgroup files (memory.max, limit_in_bytes, pids.max, procs…): {}",
                errs.into_iter().collect::<Vec<_>>().join(",")
            ),
        )
    } else {
        Finding::new(
            "cgroup_limits",
            false,
            format!("writable: {}", opened.join(",")),
        )
    }
}

/// Run a bus client; Ok(stderr's first line) when it failed, Err(what it said) when it worked.
fn denied(cmd: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(cmd).args(args).stdin(Stdio::null()).output() {
        Err(e) => Ok(format!("{cmd}: {}", en(&e))),
        Ok(o) if o.status.success() => Err(format!(
            "{} succeeded: {}",
            Path::new(cmd).display(),
            String::from_utf8_lossy(&o.stdout).trim()
        )),
        Ok(o) => Ok(String::from_utf8_lossy(&o.stderr)
            .lines()
            .next()
            .unwrap_or("failed")
            .trim()
            .to_owned()),
    }
}

fn connect_unix(p: &str) -> Result<(), String> {
    UnixStream::connect(p).map(|_| ()).map_err(|e| en(&e))
}

fn system_bus(cg: &CgroupInfo) -> Finding {
    let slice = cg
        .slice
        .clone()
        .unwrap_or_else(|| "picortex-chat.slice".into());
    let sock = connect_unix(BUS_SOCKET);
    let call = denied(
        BUSCTL,
        &[
            "--system",
            "--timeout=5",
            "--allow-interactive-authorization=no",
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "SetUnitProperties",
            "sba(sv)",
            &slice,
            "true",
            "1",
            "MemoryMax",
            "t",
            "18446744073709551615",
        ],
    );
    let detail = format!(
        "bus socket: {}; SetUnitProperties({slice}, MemoryMax=infinity): {}",
        sock.as_ref()
            .map_or_else(|e| e.clone(), |_| "connected".into()),
        call.as_ref().unwrap_or_else(|e| e)
    );
    let tested = Path::new(BUSCTL).exists() || sock.is_err();
    Finding::new(
        "system_bus_set_unit_properties",
        tested && call.is_ok(),
        detail,
    )
}

/// Other chats' units, through systemd's world-readable bus API: names, descriptions (with the
/// chat's tag), and properties such as `LogExtraFields` (with the Linq chat id).
fn enumerate_chats(cg: &CgroupInfo) -> Finding {
    let tag = cg
        .slice
        .as_deref()
        .and_then(|s| s.strip_prefix("picortex-chat-"))
        .and_then(|s| s.strip_suffix(".slice"))
        .unwrap_or("?");
    let out = Command::new(BUSCTL)
        .args([
            "--system",
            "--timeout=5",
            "--json=short",
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "ListUnitsByPatterns",
            "asas",
            "0",
            "2",
            "picortex-turn-*",
            "picortex-chat-*",
        ])
        .stdin(Stdio::null())
        .output();
    let o = match out {
        Err(e) => {
            let sock = connect_unix(BUS_SOCKET);
            return Finding::new(
                "enumerate_chats",
                sock.is_err(),
                format!(
                    "busctl: {}; bus socket: {}",
                    en(&e),
                    sock.err().unwrap_or_else(|| "connected".into())
                ),
            );
        }
        Ok(o) => o,
    };
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr)
            .lines()
            .next()
            .unwrap_or("failed")
            .to_owned();
        return Finding::new(
            "enumerate_chats",
            true,
            format!("ListUnitsByPatterns: {err}"),
        );
    }
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    let units = v
        .pointer("/data/0")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let others: Vec<String> = units
        .iter()
        .filter_map(|u| {
            Some((
                u.get(0)?.as_str()?.to_owned(),
                u.get(1)?.as_str()?.to_owned(),
            ))
        })
        .filter(|(name, desc)| {
            !name.contains(tag) && !desc.contains(tag) && name != "picortex-chat.slice"
        })
        .map(|(name, desc)| format!("{name} ({desc})"))
        .collect();
    if others.is_empty() {
        Finding::new(
            "enumerate_chats",
            true,
            format!(
                "systemd lists {} picortex units, all this chat's own",
                units.len()
            ),
        )
    } else {
        Finding::new(
            "enumerate_chats",
            false,
            format!("other chats' units: {}", others.join(", ")),
        )
    }
}

fn systemd_start_unit() -> Finding {
    let private = connect_unix("/run/systemd/private");
    let run = denied(
        "/usr/bin/systemd-run",
        &[
            "--system",
            "--no-ask-password",
            "--quiet",
            "--collect",
            "-p",
            "User=root",
            "/bin/true",
        ],
    );
    let detail = format!(
        "/run/systemd/private: {}; systemd-run as root: {}",
        private
            .as_ref()
            .map_or_else(|e| e.clone(), |_| "connected".into()),
        run.as_ref().unwrap_or_else(|e| e)
    );
    Finding::new(
        "systemd_start_unit",
        private.is_err() && run.is_ok(),
        detail,
    )
}

fn provision_helper(me: u32) -> Finding {
    let base = [
        "--system",
        "--timeout=5",
        "--allow-interactive-authorization=no",
        "call",
        "org.picortex.Provision1",
        "/org/picortex/Provision1",
        "org.picortex.Provision1",
    ];
    let chat = format!("attack-from-uid-{me}");
    let ensure = denied(
        BUSCTL,
        &[&base[..], &["EnsureChat", "s", chat.as_str()]].concat(),
    );
    let release = denied(
        BUSCTL,
        &[
            &base[..],
            &["ReleaseTurn", "s", "00000000000000000000000000000000"],
        ]
        .concat(),
    );
    // A missing busctl proves nothing unless the bus itself is out of reach.
    let tested = Path::new(BUSCTL).exists() || connect_unix(BUS_SOCKET).is_err();
    let blocked = tested && ensure.is_ok() && release.is_ok();
    let detail = format!(
        "EnsureChat: {}; ReleaseTurn: {}",
        ensure.unwrap_or_else(|e| e),
        release.unwrap_or_else(|e| e)
    );
    Finding::new("provision_helper", blocked, detail)
}

/// Send `request` on `s` and return the first line of the answer (empty if none came within
/// `wait`).
pub fn first_line(s: &mut TcpStream, request: &[u8], wait: Duration) -> String {
    let _ = s.set_read_timeout(Some(wait));
    let _ = s.write_all(request);
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Ok(how it failed) when the address could not be reached; Err(what happened) when it could.
/// Refused counts as not reached: in the turn's network namespace nothing listens there.
fn tcp_probe(addr: SocketAddr) -> Result<String, String> {
    match TcpStream::connect_timeout(&addr, Duration::from_millis(1500)) {
        Ok(mut s) => {
            let first = first_line(
                &mut s,
                b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n",
                Duration::from_millis(1000),
            );
            Err(format!("{addr} connected ({first})"))
        }
        // Nothing listens there in this network namespace: whatever listens at that address
        // elsewhere (the gateway, another chat) was not reached.
        Err(e) => Ok(en(&e)),
    }
}

/// A `CONNECT` to `target` through the turn's relay to picortex-egress: Err(what got through)
/// when the tunnel opened, Ok(the refusal) otherwise.
fn egress_probe(target: &str) -> Result<String, String> {
    let relay: SocketAddr = RELAY.parse().map_err(|_| "bad relay address".to_owned())?;
    let mut s = match TcpStream::connect_timeout(&relay, Duration::from_millis(1500)) {
        Ok(s) => s,
        Err(e) => return Ok(format!("relay {}", en(&e))),
    };
    let status = first_line(
        &mut s,
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
        Duration::from_secs(15),
    );
    if status.split_whitespace().nth(1) == Some("200") {
        Err(format!("{target} tunnel opened ({status})"))
    } else {
        Ok(status
            .split_whitespace()
            .nth(1)
            .unwrap_or("no answer")
            .to_owned())
    }
}

/// Sockets of anyone but this chat in the turn's socket tables (`/proc/self/net`): in a network
/// of its own a turn sees its own alone, never the gateway's, the host's or another chat's
/// (their uids, addresses and abstract names would tell it they exist).
fn foreign_sockets(me: u32, abstract_name: Option<&str>) -> Finding {
    let mut foreign = BTreeSet::new();
    let mut rows = 0;
    for f in ["tcp", "tcp6", "udp", "udp6"] {
        for l in fs::read_to_string(format!("/proc/self/net/{f}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            rows += 1;
            let cols: Vec<&str> = l.split_whitespace().collect();
            if let Some(uid) = cols.get(7).and_then(|u| u.parse::<u32>().ok()) {
                if uid != me {
                    foreign.insert(format!("{f} uid {uid}"));
                }
            }
        }
    }
    if let Some(n) = abstract_name {
        let unix = fs::read_to_string("/proc/self/net/unix").unwrap_or_default();
        if unix.lines().any(|l| l.ends_with(&format!(" @{n}"))) {
            foreign.insert(format!("unix @{n}"));
        }
    }
    if foreign.is_empty() {
        Finding::new(
            "foreign_sockets_in_proc_net",
            true,
            format!("{rows} sockets in /proc/self/net, all this chat's"),
        )
    } else {
        Finding::new(
            "foreign_sockets_in_proc_net",
            false,
            foreign.into_iter().take(8).collect::<Vec<_>>().join(", "),
        )
    }
}

/// A DNS query to `addr` over UDP: Err when anything answers (something listens there, in
/// this network namespace); a refusal (ICMP port unreachable), a send the fence denies or no
/// answer within a second are Ok.
fn udp_probe(addr: SocketAddr) -> Result<String, String> {
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return Ok(format!("bind {}", en(&e))),
    };
    if let Err(e) = s.connect(addr) {
        return Ok(en(&e));
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    // A query for "." type NS: any DNS server answers it, anything else listening may echo.
    let query = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1];
    if let Err(e) = s.send(&query) {
        return Ok(en(&e));
    }
    let mut buf = [0u8; 512];
    match s.recv(&mut buf) {
        Ok(n) => Err(format!("udp {addr} answered ({n} bytes)")),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok("no answer".into())
        }
        Err(e) => Ok(en(&e)),
    }
}

/// The machine's own addresses other than loopback (the turn shares its network namespace), and
/// every port something listens on there, from `/proc/self/net/tcp*`, plus the gateway's and
/// the simulator's: what a turn could reach the host's services through.
fn host_address_targets(given: &[String]) -> (Vec<String>, Vec<SocketAddr>) {
    // No netlink in a turn (RestrictAddressFamilies), so getifaddrs() fails: the kernel's
    // local routes and IPv6 address list in /proc tell the same (in a network namespace of the
    // turn's own, nothing but loopback: hence the test's `hosts=`).
    let mut addrs: Vec<std::net::IpAddr> = given.iter().filter_map(|h| h.parse().ok()).collect();
    let mut last = None;
    for l in fs::read_to_string("/proc/self/net/fib_trie")
        .unwrap_or_default()
        .lines()
    {
        if let Some(ip) = l.trim().strip_prefix("|-- ") {
            last = ip.parse::<std::net::Ipv4Addr>().ok();
        } else if l.contains("/32 host LOCAL") {
            if let Some(ip) = last
                .filter(|ip| !ip.is_loopback())
                .map(std::net::IpAddr::V4)
            {
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
        }
    }
    for l in fs::read_to_string("/proc/self/net/if_inet6")
        .unwrap_or_default()
        .lines()
    {
        let cols: Vec<&str> = l.split_whitespace().collect();
        // Global scope only: loopback and link-local are the fixed ranges' job.
        if let (Some(hex), Some(&"00")) = (cols.first(), cols.get(3)) {
            if let Ok(n) = u128::from_str_radix(hex, 16) {
                let ip = std::net::IpAddr::V6(std::net::Ipv6Addr::from(n));
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
        }
    }
    let mut ports: BTreeSet<u16> = [8470, 8471, 8900].into();
    for f in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        for l in fs::read_to_string(f).unwrap_or_default().lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.get(3) == Some(&"0A") {
                if let Some(p) = cols
                    .get(1)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    ports.insert(p);
                }
            }
        }
    }
    let targets = addrs
        .iter()
        .flat_map(|a| ports.iter().map(move |p| SocketAddr::new(*a, *p)))
        .take(64)
        .collect();
    (addrs.iter().map(ToString::to_string).collect(), targets)
}

fn network(hosts: &[String]) -> Vec<Finding> {
    let addr = |s: &str| s.parse::<SocketAddr>().ok();
    let gateway: Vec<SocketAddr> = [
        "127.0.0.1:8470",
        "[::1]:8470",
        "0.0.0.0:8470",
        "127.1.2.3:8470",
    ]
    .iter()
    .filter_map(|s| addr(s))
    .collect();
    let sim: Vec<SocketAddr> = ["127.0.0.1:8900", "[::1]:8900"]
        .iter()
        .filter_map(|s| addr(s))
        .collect();
    let other: Vec<SocketAddr> = [
        "127.0.0.1:1",
        "127.0.0.1:22",
        "127.0.0.1:25",
        "127.0.0.1:53",
        "127.0.0.1:80",
        "127.0.0.1:443",
        "127.0.0.1:631",
        "127.0.0.1:3306",
        "127.0.0.1:5432",
        "127.0.0.1:6379",
        "127.0.0.1:8080",
        "127.0.0.1:47999",
        "127.0.0.53:53",
        "127.0.1.1:80",
        "[::1]:22",
        "[::1]:80",
    ]
    .iter()
    .filter_map(|s| addr(s))
    .collect();
    let udp: Vec<SocketAddr> = [
        "127.0.0.1:53",
        "127.0.0.53:53",
        "[::1]:53",
        "127.0.0.1:8470",
    ]
    .iter()
    .filter_map(|s| addr(s))
    .collect();

    // All probes at once: a dropped SYN costs the whole timeout.
    let spawn = |addrs: Vec<SocketAddr>| -> Vec<std::thread::JoinHandle<Result<String, String>>> {
        addrs
            .into_iter()
            .map(|a| std::thread::spawn(move || tcp_probe(a)))
            .collect()
    };
    let (host_addrs, host) = host_address_targets(hosts);
    // Through the way out itself: the host, its loopback services, link-local, the LAN.
    let mut via: Vec<String> = vec![
        "127.0.0.1:8470".into(),
        "localhost:8470".into(),
        "[::1]:8470".into(),
        "127.0.0.1:8900".into(),
        "169.254.169.254:80".into(),
        "10.0.0.1:80".into(),
        "192.168.1.1:80".into(),
        "[fe80::1]:80".into(),
        "0.0.0.0:8470".into(),
        "unlisted-host.example.com:443".into(),
    ];
    via.extend(host.iter().map(|a| a.to_string()));
    let hv: Vec<_> = via
        .into_iter()
        .map(|t| std::thread::spawn(move || egress_probe(&t)))
        .collect();
    let (hg, hs, ho, hh) = (spawn(gateway), spawn(sim), spawn(other), spawn(host));
    let join =
        |hs: Vec<std::thread::JoinHandle<Result<String, String>>>| -> Vec<Result<String, String>> {
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("probe thread panicked".into()))
                })
                .collect()
        };
    let (rg, rs, mut ro, rh, rv) = (join(hg), join(hs), join(ho), join(hh), join(hv));
    ro.extend(udp.into_iter().map(udp_probe));

    let finding = |name: &'static str, what: &str, rs: Vec<Result<String, String>>| {
        let n = rs.len();
        let reached: Vec<String> = rs
            .iter()
            .filter_map(|r| r.as_ref().err().cloned())
            .collect();
        let how: BTreeSet<String> = rs.into_iter().filter_map(Result::ok).collect();
        if reached.is_empty() {
            Finding::new(
                name,
                true,
                format!(
                    "{n} probes of {what}, none reached it: {}",
                    how.into_iter().collect::<Vec<_>>().join(",")
                ),
            )
        } else {
            Finding::new(name, false, reached.join("; "))
        }
    };
    vec![
        finding("connect_gateway", "picortexd :8470", rg),
        finding("connect_linq_sim", "the Linq simulator :8900", rs),
        finding("connect_loopback", "other loopback ports (tcp+udp)", ro),
        finding(
            "connect_host_address",
            &format!("the host's own addresses [{}]", host_addrs.join(" ")),
            rh,
        ),
        finding("egress_to_the_host", "CONNECT via egress", rv),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_cgroup_lines_give_unit_slice_and_hierarchies() {
        let text = "9:name=systemd:/picortex.slice/picortex-chat.slice/picortex-chat-ab12cd34.slice/picortex-turn-00ff.service\n\
                    8:pids:/picortex.slice/picortex-chat.slice/picortex-chat-ab12cd34.slice/picortex-turn-00ff.service\n\
                    4:memory:/picortex.slice/picortex-chat.slice/picortex-chat-ab12cd34.slice/picortex-turn-00ff.service\n\
                    2:cpu,cpuacct:/x.service\n\
                    0::/picortex.slice/picortex-chat.slice/picortex-chat-ab12cd34.slice/picortex-turn-00ff.service\n";
        let i = parse_cgroup(text, Path::new("/nonexistent"));
        assert_eq!(i.unit.as_deref(), Some("picortex-turn-00ff.service"));
        assert_eq!(i.slice.as_deref(), Some("picortex-chat-ab12cd34.slice"));
        let mounts: Vec<String> = i
            .dirs
            .iter()
            .map(|(m, _)| m.display().to_string())
            .collect();
        assert_eq!(
            mounts,
            [
                "/nonexistent/systemd",
                "/nonexistent/pids",
                "/nonexistent/memory",
                "/nonexistent/cpu",
                "/nonexistent"
            ]
        );
    }

    #[test]
    fn report_is_one_compact_array_and_details_are_short() {
        let f = [
            Finding::new("a", true, "x".repeat(500)),
            Finding::new("b", false, "y"),
        ];
        let v: Value = serde_json::from_str(&report(&f)).unwrap_or(Value::Null);
        assert_eq!(v[0]["name"], "a");
        assert_eq!(v[1]["blocked"], false);
        assert!(v[0]["detail"].as_str().map_or(0, |s| s.chars().count()) <= DETAIL_MAX);
    }

    #[test]
    fn errno_names() {
        assert_eq!(en(&io::Error::from_raw_os_error(13)), "EACCES");
        assert_eq!(en(&io::Error::from(io::ErrorKind::TimedOut)), "timeout");
    }
}
