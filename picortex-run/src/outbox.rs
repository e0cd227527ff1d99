//! Whether the agent left files in the chat's `outbox/` for the gateway to send (media out).
//! picortex-run only says so (`TurnResult::outbox`); the helper collects them, as root, and
//! trusts nothing about them. Saying so saves the gateway a privileged call after every turn
//! that left nothing.

use std::path::Path;

use picortex_proto::turn::OUTBOX_DIR;

/// Whether `home/outbox` has any entry. A missing, unreadable or non-directory outbox has none.
pub fn has_files(home: &Path) -> bool {
    std::fs::read_dir(home.join(OUTBOX_DIR)).is_ok_and(|mut d| d.next().is_some())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_an_outbox_with_an_entry_counts() {
        let home = tempfile::tempdir().unwrap();
        assert!(!has_files(home.path()), "no outbox");
        std::fs::create_dir(home.path().join(OUTBOX_DIR)).unwrap();
        assert!(!has_files(home.path()), "empty outbox");
        std::fs::write(home.path().join(OUTBOX_DIR).join("chart.png"), b"x").unwrap();
        assert!(has_files(home.path()));
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join(OUTBOX_DIR), b"not a directory").unwrap();
        assert!(!has_files(other.path()));
    }
}
