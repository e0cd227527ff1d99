//! One gateway per state directory. A second picortexd on the same state (say, the README's
//! development command run beside the service) would resume the live one's turns as its own and
//! release their units; it must refuse to start instead, saying who holds the directory.

use std::io::{Read, Seek, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// The lock, held for the life of the process.
pub struct Instance(#[allow(dead_code)] Flock<std::fs::File>);

pub fn claim(state_dir: &Path) -> Result<Instance, String> {
    let path = state_dir.join("picortexd.lock");
    // flock needs no write access: a process that may not write the file (another user, root
    // without capabilities) still learns whether it is held.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .or_else(|_| std::fs::File::open(&path))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            // Readable by all (it holds only a pid), so whoever tries next is told who runs.
            use std::os::unix::fs::PermissionsExt;
            let _ = lock.set_permissions(std::fs::Permissions::from_mode(0o644));
            let _ = lock.set_len(0);
            let _ = lock.rewind();
            let _ = writeln!(lock, "{}", std::process::id());
            Ok(Instance(lock))
        }
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(format!(
                "another picortexd (pid {}) is running on {}; stop it first (systemctl stop picortexd.service picortexd.socket), or give this one its own --state-dir",
                pid.trim(),
                state_dir.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_until_the_first_ends() {
        let d = tempfile::tempdir().unwrap();
        let first = claim(d.path()).unwrap();
        let e = claim(d.path()).err().unwrap();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains("systemctl stop"), "{e}");
        drop(first);
        assert!(claim(d.path()).is_ok());
    }
}
