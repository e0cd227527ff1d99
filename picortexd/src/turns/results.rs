//! Result files: one per turn unit in the gateway's state directory (`turns/<unit id>.json`),
//! created by the gateway (0600, its own), handed to the unit as its stdout, written once by
//! picortex-run alone (picortex-run's `channel` keeps it from every child) and read back here as
//! untrusted input: exactly one bounded, validated document (`parse_result_document`).
//!
//! A successful turn's answer is read as soon as its document is whole, not after systemd has
//! noticed picortex-run's exit and told the gateway (SIGCHLD, the unit's state change,
//! PropertiesChanged, the property reads): that round trip was a fifth of a warm turn. The
//! document is whole when it ends in its newline — picortex-run writes one line, and JSON never
//! leaves a raw newline inside one. Only an `ok` document is taken early; every other ending
//! (a failure, a refusal, an unreadable or forged document, no document) waits for the unit's
//! end as before, where systemd's view (timeout, OOM kill, exit status) decides with it.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use picortex_proto::turn::{parse_result_document, Outcome, TurnResult, MAX_RESULT_BYTES};

pub struct ResultFiles {
    dir: PathBuf,
}

impl ResultFiles {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, unit_id: &str) -> PathBuf {
        self.dir.join(format!("{unit_id}.json"))
    }

    /// A new, empty result file for `unit_id`'s unit (its stdout).
    pub fn create(&self, unit_id: &str) -> std::io::Result<OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(self.path(unit_id))?;
        Ok(f.into())
    }

    pub fn remove(&self, unit_id: &str) {
        let _ = std::fs::remove_file(self.path(unit_id));
    }

    /// The result document picortex-run wrote; None when there is none. A rejected document is
    /// never a reply: the turn failed with bad output.
    pub fn read(&self, unit_id: &str) -> Option<TurnResult> {
        let buf = read_bounded(&self.path(unit_id))?;
        match parse_result_document(&buf, unit_id) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "rejected the turn's result document");
                Some(TurnResult::failure(
                    unit_id,
                    Outcome::BadOutput,
                    e.to_string(),
                ))
            }
        }
    }

    /// Resolves with the unit's result as soon as picortex-run has written a whole document
    /// saying the turn succeeded; never resolves otherwise (the unit's end decides then).
    /// Watches the file with inotify; if it cannot, it never resolves either.
    pub async fn succeeded(&self, unit_id: &str) -> TurnResult {
        match self.watch_for_success(unit_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "not watching the result file; waiting for the unit's end");
                std::future::pending().await
            }
        }
    }

    async fn watch_for_success(&self, unit_id: &str) -> std::io::Result<TurnResult> {
        let path = self.path(unit_id);
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // IN_MODIFY for each write, IN_CLOSE_WRITE in case of a writer that closes its own.
        ino.add_watch(
            &path,
            AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CLOSE_WRITE,
        )?;
        // SAFETY: an OwnedFd keeps its descriptor open, and the same one, until it is dropped,
        // which only the AsyncFd owning it can do.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(OwnedFd::from(ino)) }
            .map_err(std::io::Error::from)?;
        loop {
            // Looked at after the watch is in place, so a document written before it counts.
            if let Some(r) = read_bounded(&path).and_then(|b| early_answer(&b, unit_id)) {
                return Ok(r);
            }
            let mut ready = fd.readable().await?;
            let mut events = [0u8; 4096];
            loop {
                match nix::unistd::read(ready.get_inner().as_fd(), &mut events) {
                    Ok(n) if n > 0 => continue,
                    _ => break,
                }
            }
            ready.clear_ready();
        }
    }
}

fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(MAX_RESULT_BYTES + 1).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// What of a result file, as it is at this moment, may end the turn before its unit does: a
/// whole document (ending in its newline) that passes every check and says `ok`. A document
/// still being written, any other outcome and anything rejected wait for the unit's end.
pub fn early_answer(buf: &[u8], unit_id: &str) -> Option<TurnResult> {
    if buf.last() != Some(&b'\n') {
        return None;
    }
    match parse_result_document(buf, unit_id) {
        Ok(Some(r)) if r.outcome == Outcome::Ok => Some(r),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    const UNIT: &str = "0123456789abcdef0123456789abcdef";

    fn doc(outcome: &str, text: &str) -> String {
        format!(
            "{{\"turn_id\":\"{UNIT}\",\"outcome\":\"{outcome}\",\"text\":\"{text}\",\"session_id\":\"c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10\",\"cost_usd\":0.01}}\n"
        )
    }

    #[test]
    fn only_a_whole_successful_document_ends_a_turn_early() {
        let ok = doc("ok", "hello");
        assert_eq!(
            early_answer(ok.as_bytes(), UNIT).and_then(|r| r.text),
            Some("hello".into())
        );
        // Still being written: every cut short of the newline waits.
        for cut in 1..ok.len() {
            assert!(early_answer(&ok.as_bytes()[..cut], UNIT).is_none(), "{cut}");
        }
        assert!(early_answer(b"", UNIT).is_none());
        // Other outcomes wait for the unit's end, where systemd's view decides with them.
        assert!(early_answer(doc("agent_error", "x").as_bytes(), UNIT).is_none());
        assert!(early_answer(doc("refused", "x").as_bytes(), UNIT).is_none());
        // Another unit's document, a second line, a negative cost: refused, as when read late.
        assert!(early_answer(
            doc("ok", "x").replace(UNIT, &"f".repeat(32)).as_bytes(),
            UNIT
        )
        .is_none());
        assert!(early_answer(format!("{ok}{ok}").as_bytes(), UNIT).is_none());
        assert!(early_answer(ok.replace("0.01", "-1000").as_bytes(), UNIT).is_none());
    }

    #[tokio::test]
    async fn the_answer_is_taken_when_its_document_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let files = ResultFiles::new(dir.path().to_owned());
        drop(files.create(UNIT).unwrap());
        let ok = doc("ok", "early");
        let (head, tail) = ok.split_at(20);
        let mut w = std::fs::OpenOptions::new()
            .append(true)
            .open(files.path(UNIT))
            .unwrap();
        w.write_all(head.as_bytes()).unwrap();
        let waiting = files.succeeded(UNIT);
        tokio::pin!(waiting);
        // Half a document is no answer.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut waiting)
                .await
                .is_err()
        );
        w.write_all(tail.as_bytes()).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), &mut waiting)
            .await
            .expect("the whole document was not noticed");
        assert_eq!(r.text.as_deref(), Some("early"));
    }

    #[tokio::test]
    async fn a_document_written_before_the_watch_counts() {
        let dir = tempfile::tempdir().unwrap();
        let files = ResultFiles::new(dir.path().to_owned());
        std::fs::write(files.path(UNIT), doc("ok", "before")).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), files.succeeded(UNIT))
            .await
            .expect("a document already there was not taken");
        assert_eq!(r.text.as_deref(), Some("before"));
    }

    #[tokio::test]
    async fn a_failure_never_ends_the_turn_early() {
        let dir = tempfile::tempdir().unwrap();
        let files = ResultFiles::new(dir.path().to_owned());
        std::fs::write(files.path(UNIT), doc("agent_error", "no")).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), files.succeeded(UNIT))
                .await
                .is_err()
        );
    }
}
