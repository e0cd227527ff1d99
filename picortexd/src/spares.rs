//! Spare turn units: after a chat's turn, the gateway starts that chat's *next* turn unit ahead of
//! time — sandbox built, picortex-run waiting on a pipe for its request — and keeps the pipe's
//! write end. When the chat's next message comes, the turn is handed to the spare by writing the
//! request and closing the pipe, so the ~70 ms systemd spends building the sandbox is off the
//! path between a message and its answer.
//!
//! A spare is only a process waiting to be told what to do; nothing about it is durable. If the
//! gateway dies, every spare's pipe closes empty and picortex-run exits with `no_request`; at the
//! next start the gateway releases every turn unit no turn refers to. A turn is recorded as
//! running in its spare's unit *before* the request is written, so a crash in between finds the
//! unit's `no_request` and starts the turn again. Spares unused for `turns.spare_ttl_s` are let go.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A request to start a chat's spare unit, sent after each answered turn; `release`: the
/// answered turn's unit, which goes in the same helper call (see `Turns::make_spare`) or, when
/// no spare is started, on its own.
#[derive(Debug)]
pub struct Ask {
    pub chat: String,
    pub release: Option<String>,
}

pub struct Spare {
    /// The unit's own turn id (`picortex-turn-<id>.service`, `--turn <id>`), not a turn's.
    pub id: String,
    pub unit: String,
    /// Write end of the unit's stdin: the request goes here, then it is closed.
    pub writer: File,
    pub since: Instant,
    /// The limits its unit and slice were started with (`Turns::limits_for`).
    pub limits: Vec<(&'static str, u64)>,
}

/// Whether a turn whose limits are `now` may run in a spare started with `then`: the same
/// but for the unit's runtime cap, which a spare's is longer (the gateway keeps the turn's).
/// Both come from `Turns::limits_for`, in its order.
pub fn same_slice_limits(then: &[(&str, u64)], now: &[(&str, u64)]) -> bool {
    let slice = |l| {
        <[(&str, u64)]>::iter(l)
            .filter(|(k, _)| *k != picortex_proto::bus::limits::RUNTIME_MAX_USEC)
    };
    slice(then).eq(slice(now))
}

#[derive(Default)]
pub struct Spares {
    by_chat: Mutex<HashMap<String, Spare>>,
    /// Chats whose spare is being started (systemd builds the sandbox meanwhile).
    starting: Mutex<HashSet<String>>,
    /// Turns being started in fresh units right now, which spare starts make way for.
    turns_starting: AtomicUsize,
}

/// A turn's start in a fresh unit, from `Spares::turn_starting` until dropped.
pub struct TurnStarting<'a>(&'a AtomicUsize);

impl Drop for TurnStarting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Spares {
    /// A turn is being started in a fresh unit (provisioning, sandbox): until the guard drops,
    /// `make_way` holds spare starts back, so they do not compete with it for the CPU.
    pub fn turn_starting(&self) -> TurnStarting<'_> {
        self.turns_starting.fetch_add(1, Ordering::SeqCst);
        TurnStarting(&self.turns_starting)
    }

    /// Wait (at most `max`) until no turn is being started in a fresh unit, and none has been
    /// for `settle`: the turn that just ended is when the next message tends to arrive, and its
    /// start (perhaps a chat's first, with no spare) goes before this one.
    pub async fn make_way(&self, max: Duration, settle: Duration) {
        let until = Instant::now() + max;
        let busy = || self.turns_starting.load(Ordering::SeqCst) > 0;
        loop {
            while busy() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep(settle).await;
            if !busy() {
                return;
            }
        }
    }
    /// Claim the start of `chat`'s spare: false if it has one, or one is being started, or
    /// `limit` spares exist or are being started already. `started` must follow a true.
    pub fn begin(&self, chat: &str, limit: usize) -> bool {
        let (Ok(m), Ok(mut st)) = (self.by_chat.lock(), self.starting.lock()) else {
            return false;
        };
        if m.contains_key(chat) || st.contains(chat) || m.len() + st.len() >= limit {
            return false;
        }
        st.insert(chat.to_owned())
    }

    /// The start claimed by `begin` is over, whatever became of it.
    pub fn started(&self, chat: &str) {
        if let Ok(mut st) = self.starting.lock() {
            st.remove(chat);
        }
    }

    /// Whether `chat`'s spare is being started right now.
    pub fn is_starting(&self, chat: &str) -> bool {
        self.starting.lock().is_ok_and(|st| st.contains(chat))
    }

    pub fn take(&self, chat: &str) -> Option<Spare> {
        self.by_chat.lock().ok()?.remove(chat)
    }

    pub fn len(&self) -> usize {
        self.by_chat.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep a spare for `chat`; gives it back if the chat already has one.
    pub fn put(&self, chat: &str, s: Spare) -> Result<(), Spare> {
        match self.by_chat.lock() {
            Ok(mut m) if !m.contains_key(chat) => {
                m.insert(chat.to_owned(), s);
                Ok(())
            }
            _ => Err(s),
        }
    }

    /// Remove and return the spares older than `ttl`.
    pub fn expired(&self, ttl: Duration) -> Vec<Spare> {
        let Ok(mut m) = self.by_chat.lock() else {
            return Vec::new();
        };
        let old: Vec<String> = m
            .iter()
            .filter(|(_, s)| s.since.elapsed() >= ttl)
            .map(|(c, _)| c.clone())
            .collect();
        old.iter().filter_map(|c| m.remove(c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare(id: &str) -> Spare {
        Spare {
            id: id.into(),
            unit: format!("picortex-turn-{id}.service"),
            writer: tempfile::tempfile().unwrap(),
            since: Instant::now(),
            limits: LIMITS.to_vec(),
        }
    }

    use picortex_proto::bus::limits as L;
    const LIMITS: [(&str, u64); 6] = [
        (L::MEMORY_MAX, 256 << 20),
        (L::TASKS_MAX, 256),
        (L::RUNTIME_MAX_USEC, 660_000_000),
        (L::CPU_WEIGHT, 100),
        (L::IO_WEIGHT, 100),
        (L::CPU_QUOTA_PER_SEC_USEC, 1_000_000),
    ];

    #[test]
    fn a_spare_serves_a_turn_only_under_the_same_slice_limits() {
        // Its runtime cap is longer by design (it waits before its turn): that one may differ.
        let mut now = LIMITS;
        now[2].1 = 360_000_000;
        assert!(same_slice_limits(&LIMITS, &now));
        // Any slice limit changed since it started: the turn needs a fresh unit.
        for i in [0, 1, 3, 4, 5] {
            let mut changed = now;
            changed[i].1 += 1;
            assert!(!same_slice_limits(&LIMITS, &changed), "{}", changed[i].0);
        }
    }

    #[test]
    fn one_spare_per_chat_taken_once_and_expired_by_age() {
        let s = Spares::default();
        assert!(s.put("a", spare("1")).is_ok());
        assert!(
            s.put("a", spare("2")).is_err(),
            "a second spare for one chat"
        );
        assert!(s.put("b", spare("3")).is_ok());
        assert_eq!(s.take("a").map(|x| x.id), Some("1".into()));
        assert!(s.take("a").is_none());
        assert!(s.expired(Duration::from_secs(60)).is_empty());
        let gone = s.expired(Duration::ZERO);
        assert_eq!(gone.len(), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn one_start_per_chat_at_a_time_and_no_more_than_the_limit() {
        let s = Spares::default();
        assert!(s.begin("a", 2));
        assert!(!s.begin("a", 2), "a second start for one chat");
        assert!(s.begin("b", 2));
        assert!(!s.begin("c", 2), "over the limit, counting starts");
        s.started("a");
        assert!(s.put("a", spare("1")).is_ok());
        assert!(!s.begin("a", 3), "a chat with a spare");
        s.started("b");
        assert!(s.begin("c", 3));
        assert!(
            !s.begin("d", 2),
            "over the limit, counting spares and starts"
        );
    }

    #[tokio::test]
    async fn spare_starts_make_way_for_turns_being_started() {
        const SETTLE: Duration = Duration::from_millis(30);
        let s = std::sync::Arc::new(Spares::default());
        let t0 = Instant::now();
        s.make_way(Duration::from_secs(5), SETTLE).await;
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "waited with no turn starting"
        );
        let guard = s.turn_starting();
        let t0 = Instant::now();
        s.make_way(Duration::from_millis(50), SETTLE).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(50),
            "did not wait for the turn"
        );
        drop(guard);
        let t0 = Instant::now();
        s.make_way(Duration::from_secs(5), SETTLE).await;
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the guard did not end the wait"
        );
        // A turn that starts just after another one ended (within the settling time) is waited
        // for as well: its start ends the wait, not the first one's.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let s2 = s.clone();
        let other = tokio::spawn(async move {
            let g = s2.turn_starting();
            tx.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(g);
            tokio::time::sleep(Duration::from_millis(10)).await;
            let g = s2.turn_starting();
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(g);
        });
        rx.await.unwrap();
        let t0 = Instant::now();
        s.make_way(Duration::from_secs(5), SETTLE).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(400),
            "went ahead between two turns starting: {:?}",
            t0.elapsed()
        );
        other.await.unwrap();
    }
}
