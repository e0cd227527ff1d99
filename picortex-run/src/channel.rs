//! The result channel (SPEC P6): the one descriptor through which picortex-run hands the gateway
//! its `TurnResult`. systemd gives it to us as stdout, a file the gateway created; the agent runs
//! as the same user, and anything else that reaches that file could write a second, forged
//! document. So before anything else runs, the file moves to a close-on-exec descriptor that no
//! child inherits, stdout becomes `/dev/null`, and so does stderr if it is the same file (a unit
//! without `StandardError=` duplicates stdout onto stderr). The channel writes once and is gone.

use crate::turn::result_line;
use picortex_proto::turn::TurnResult;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};

pub struct ResultChannel {
    file: File,
}

/// Both descriptors lead to the same open file (or the same file by another open).
fn same_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    match (nix::sys::stat::fstat(a), nix::sys::stat::fstat(b)) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

impl ResultChannel {
    /// Take stdout as the result channel; see the module doc. Fails if stdout is not open or
    /// `/dev/null` cannot be put in its place, in which case nothing can be reported.
    pub fn take_stdout() -> std::io::Result<Self> {
        let stdout = std::io::stdout();
        // F_DUPFD_CLOEXEC: a descriptor above 2 that is closed at every exec.
        let file = File::from(stdout.as_fd().try_clone_to_owned()?);
        let null = OpenOptions::new().write(true).open("/dev/null")?;
        let stderr_too = same_file(std::io::stderr().as_fd(), file.as_fd());
        nix::unistd::dup2_stdout(&null)?;
        if stderr_too {
            nix::unistd::dup2_stderr(&null)?;
        }
        Ok(Self { file })
    }

    /// Write the one result line; the channel closes after it.
    pub fn write(mut self, r: &TurnResult) -> std::io::Result<()> {
        self.file.write_all(result_line(r).as_bytes())?;
        self.file.flush()
    }
}
