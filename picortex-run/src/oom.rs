//! Was the agent killed by the kernel's OOM killer? The turn unit's cgroup counts OOM kills:
//! `oom_kill` in `memory.events` on cgroup v2 (hierarchical, so a kill forced by the chat slice's
//! `MemoryMax` is counted here too), or the `oom_kill` line of `memory.oom_control` on a v1
//! memory hierarchy. picortex-run reads the counter before and after the agent runs; the agent
//! inherits picortex-run's cgroup.

use std::path::{Path, PathBuf};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The file holding this process's `oom_kill` counter, from the text of `/proc/self/cgroup`.
/// A v1 `memory` hierarchy wins over the v2 line (hybrid systems keep memory on v1).
pub fn oom_counter_path(proc_self_cgroup: &str, root: &Path) -> Option<PathBuf> {
    let mut v2 = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some(rel) = path.strip_prefix('/') else {
            continue;
        };
        if rel.split('/').any(|c| c == "..") {
            continue;
        }
        if controllers.split(',').any(|c| c == "memory") {
            return Some(root.join("memory").join(rel).join("memory.oom_control"));
        }
        if controllers.is_empty() {
            v2 = Some(root.join(rel).join("memory.events"));
        }
    }
    v2
}

/// The `oom_kill <n>` line of `memory.events` or `memory.oom_control`.
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// This process's cgroup OOM-kill counter, if the system exposes one.
pub fn oom_kill_count() -> Option<u64> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = oom_counter_path(&cg, Path::new(CGROUP_ROOT))?;
    parse_oom_kill(&std::fs::read_to_string(path).ok()?)
}

/// Whether the counter went up between two readings (unknown counts as no).
pub fn oom_killed(before: Option<u64>, after: Option<u64>) -> bool {
    matches!((before, after), (Some(b), Some(a)) if a > b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/sys/fs/cgroup";

    #[test]
    fn v2_unit_cgroup() {
        let p = oom_counter_path(
            "0::/picortex.slice/picortex-chat.slice/picortex-chat-deadbeef.slice/picortex-turn-0a.service\n",
            Path::new(ROOT),
        );
        assert_eq!(
            p.unwrap(),
            PathBuf::from("/sys/fs/cgroup/picortex.slice/picortex-chat.slice/picortex-chat-deadbeef.slice/picortex-turn-0a.service/memory.events")
        );
    }

    #[test]
    fn v1_and_hybrid_prefer_the_memory_hierarchy() {
        let text = "12:cpu,cpuacct:/system.slice/t.service\n5:memory:/system.slice/t.service\n1:name=systemd:/system.slice/t.service\n0::/system.slice/t.service\n";
        assert_eq!(
            oom_counter_path(text, Path::new(ROOT)).unwrap(),
            PathBuf::from("/sys/fs/cgroup/memory/system.slice/t.service/memory.oom_control")
        );
    }

    #[test]
    fn nonsense_gives_nothing() {
        assert_eq!(oom_counter_path("", Path::new(ROOT)), None);
        assert_eq!(
            oom_counter_path("garbage\n0::relative\n0::/../../etc\n", Path::new(ROOT)),
            None
        );
    }

    #[test]
    fn counters() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(events), Some(1));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_oom_kill(v1), Some(3));
        assert_eq!(parse_oom_kill("oom 1\n"), None);
        assert!(oom_killed(Some(0), Some(1)));
        assert!(!oom_killed(Some(1), Some(1)));
        assert!(!oom_killed(None, Some(1)));
    }

    #[test]
    fn reading_the_real_cgroup_does_not_fail() {
        let _ = oom_kill_count(); // None outside a memory cgroup; must not panic
    }
}
