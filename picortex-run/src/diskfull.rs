//! Telling a full home apart from other agent failures (SPEC T4, P7). A chat whose home is at
//! its disk quota cannot even start the agent (it rewrites its own state file first), so every
//! turn would end as a puzzling `agent_failed`. When the agent failed without an answer, this
//! writes a small probe file in the home: EDQUOT or ENOSPC there is a fact about the home, not
//! the agent's claim, and the turn becomes `disk_full`, which the gateway explains to the chat.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};
use picortex_proto::turn::{Outcome, TurnResult, MAX_RESULT_ERROR_BYTES};

const PROBE: &str = ".picortex-disk-probe";
const PROBE_BYTES: usize = 64 << 10;

/// `r`, or `r` as `disk_full` when it is a failure without an answer and the home is full.
pub fn reclassify(mut r: TurnResult, home: &Path) -> TurnResult {
    if !matches!(
        r.outcome,
        Outcome::AgentFailed | Outcome::EmptyOutput | Outcome::BadOutput
    ) {
        return r;
    }
    if let Some(why) = home_is_full(home) {
        let was = r.error.take().unwrap_or_default();
        let mut error = format!(
            "the chat's home is at its disk quota (a {} KiB test write failed: {why}); the agent's failure: {was}",
            PROBE_BYTES >> 10
        );
        if error.len() > MAX_RESULT_ERROR_BYTES {
            let mut end = MAX_RESULT_ERROR_BYTES;
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            error.truncate(end);
        }
        r.outcome = Outcome::DiskFull;
        r.error = Some(error);
    }
    r
}

/// Some(the error) when a write into the home fails for lack of space; None when it works or
/// fails for any other reason.
fn home_is_full(home: &Path) -> Option<Errno> {
    let dflags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dir = open(home, dflags, Mode::empty()).ok()?;
    let r = probe(&dir);
    let _ = unlinkat(&dir, PROBE, UnlinkatFlags::NoRemoveDir);
    match r {
        Err(e @ (Errno::EDQUOT | Errno::ENOSPC)) => Some(e),
        _ => None,
    }
}

fn probe(dir: &OwnedFd) -> Result<(), Errno> {
    let _ = unlinkat(dir, PROBE, UnlinkatFlags::NoRemoveDir);
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir, PROBE, flags, Mode::S_IRUSR | Mode::S_IWUSR)?;
    let mut f = std::fs::File::from(fd);
    let errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(0));
    f.write_all(&[0u8; PROBE_BYTES]).map_err(errno)?;
    f.sync_all().map_err(errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_without_an_answer_are_probed_and_a_home_with_room_is_not_full() {
        let home = tempfile::tempdir().unwrap();
        let ok = TurnResult::failure("t", Outcome::Ok, "");
        assert_eq!(reclassify(ok.clone(), home.path()), ok);
        for o in [
            Outcome::AgentFailed,
            Outcome::EmptyOutput,
            Outcome::BadOutput,
        ] {
            let r = TurnResult::failure("t", o, "boom");
            assert_eq!(reclassify(r.clone(), home.path()), r);
        }
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 0);
        // A home that cannot be opened is not "full".
        let r = TurnResult::failure("t", Outcome::AgentFailed, "boom");
        assert_eq!(reclassify(r.clone(), &home.path().join("missing")), r);
    }
}
