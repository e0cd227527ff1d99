//! A webhook that kills the gateway every time must not crash-loop the service (systemd would
//! give up after its start limit and close the socket, and Linq would keep redelivering it).
//! Each verified webhook leaves a marker file named by its event id in `<state>/inflight/` while
//! it is processed (a create and an unlink, no fsync: it only has to survive the process, not the
//! machine). Markers found at start are events that were in flight when the process died: each
//! gets a strike in the log, and an event with `STRIKES` strikes is from then on stored without
//! being processed, answered 200, and reported, so Linq stops and the operator can look.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use picortex_proto::ids::is_linq_id;

/// Crashes an event may cause before it is quarantined.
pub const STRIKES: u32 = 3;

pub struct Guard {
    dir: PathBuf,
    /// Events quarantined at start: never processed by this process.
    poisoned: HashSet<String>,
}

/// The marker of one webhook in flight; removed when dropped.
pub struct InFlight(Option<PathBuf>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The event ids whose markers a dead process left in `dir`; the markers are removed.
pub fn leftovers(dir: &Path) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_linq_id(&name) {
            ids.push(name);
        }
        let _ = std::fs::remove_file(e.path());
    }
    ids.sort();
    Ok(ids)
}

impl Guard {
    pub fn new(dir: PathBuf, poisoned: HashSet<String>) -> Self {
        Self { dir, poisoned }
    }

    pub fn is_poisoned(&self, event_id: &str) -> bool {
        self.poisoned.contains(event_id)
    }

    /// Mark `event_id` as in flight until the returned value is dropped. An id that is not a
    /// Linq id gets no marker (such webhooks are refused before anything is processed).
    pub fn enter(&self, event_id: &str) -> InFlight {
        if !is_linq_id(event_id) {
            return InFlight(None);
        }
        let p = self.dir.join(event_id);
        match std::fs::File::create(&p) {
            Ok(_) => InFlight(Some(p)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot mark a webhook in flight; a crash on it would not be counted");
                InFlight(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_live_while_in_flight_and_are_found_after_a_death() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("inflight");
        assert!(leftovers(&dir).unwrap().is_empty());
        let g = Guard::new(dir.clone(), HashSet::new());
        {
            let _a = g.enter("2915e81c-5068-4796-ace2-21d2c94ad298");
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        }
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "removed when done"
        );
        let dying = g.enter("2915e81c-5068-4796-ace2-21d2c94ad298");
        let _bad = g.enter("../../etc/passwd");
        std::mem::forget(dying); // the process dies with it in flight
        assert_eq!(
            leftovers(&dir).unwrap(),
            vec!["2915e81c-5068-4796-ace2-21d2c94ad298".to_owned()]
        );
        assert!(leftovers(&dir).unwrap().is_empty(), "counted once");
    }
}
