//! When a turn whose unit ran nothing goes back to the queue to run in a fresh unit.
//!
//! A unit ends having run nothing in three ways that running the turn again repairs:
//! - its spare got no request (the gateway died handing it over: `no_request`);
//! - its sandbox no longer held when the request came (`stale_sandbox`): the chat's views of
//!   `/etc/passwd` and `/etc/group` were detached because something replaced the real files
//!   after the sandbox was built (see picortex-run's `userdb`);
//! - systemd could not build the sandbox (exit status 226, NAMESPACE): the same replacement
//!   came while systemd was mounting the views ("…/etc/passwd: No such file or directory").
//!
//! Chat users are records of /etc/userdb, so picortex itself replaces neither file; the
//! operator's useradd or userdel (or a package creating its system user) does, at any moment.
//! A spare meets the second whenever that happens while it waits; a fresh unit the second and
//! third when it happens in the milliseconds its sandbox is being built and checked. A spare's
//! turn always runs again (in a fresh unit); a fresh unit's a few times only, so a failure
//! that is not a race (a NAMESPACE failure for good) still ends, as the failure it is.

use picortex_proto::turn::Outcome;

use crate::bus::UnitEnd;

/// How many times one turn runs again after its fresh unit's sandbox was stale or not built.
pub const FRESH_SANDBOX_RERUNS: u32 = 3;

/// systemd's exit status for a unit whose namespace set-up failed (`EXIT_NAMESPACE`).
const EXIT_NAMESPACE: i32 = 226;

/// Why a unit ran nothing, in the ways running the turn again repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NothingRan {
    /// The spare's request pipe closed empty.
    NoRequest,
    /// picortex-run found the real user database instead of the chat's view.
    StaleView,
    /// systemd failed building the unit's namespace; picortex-run never ran.
    SandboxNotBuilt,
}

impl NothingRan {
    /// What happened, for the log line saying the turn runs again.
    pub fn reason(self, in_spare: bool) -> &'static str {
        match (self, in_spare) {
            (NothingRan::NoRequest, _) => "turn's spare unit got no request",
            (NothingRan::StaleView, true) => "turn's spare unit no longer had its own view of the user database (a chat was added or removed while it waited)",
            (NothingRan::StaleView, false) => "turn's unit lost its own view of the user database as it started (a chat was added or removed meanwhile)",
            (NothingRan::SandboxNotBuilt, _) => "systemd could not build the turn unit's sandbox (status 226/NAMESPACE; a chat added or removed meanwhile replaces the files it mounts over)",
        }
    }
}

/// What the unit's result file and its end say, if it is one of those.
pub fn nothing_ran(result: Option<Outcome>, end: Option<&UnitEnd>) -> Option<NothingRan> {
    match result {
        Some(Outcome::NoRequest) => Some(NothingRan::NoRequest),
        Some(Outcome::StaleSandbox) => Some(NothingRan::StaleView),
        Some(_) => None,
        None => end
            .filter(|e| e.exec_main_code == 1 && e.exec_main_status == EXIT_NAMESPACE)
            .map(|_| NothingRan::SandboxNotBuilt),
    }
}

/// Whether the turn goes back to the queue. `in_spare`: the unit was a spare; `reruns`: how
/// often this turn already ran again after a fresh unit's sandbox failed it.
pub fn run_again(why: Option<NothingRan>, in_spare: bool, reruns: u32) -> bool {
    match why {
        None => false,
        Some(NothingRan::NoRequest) => true,
        Some(_) => in_spare || reruns < FRESH_SANDBOX_RERUNS,
    }
}

/// Whether this run again counts against the fresh unit's bound.
pub fn counts(why: Option<NothingRan>, in_spare: bool) -> bool {
    !in_spare
        && matches!(
            why,
            Some(NothingRan::StaleView | NothingRan::SandboxNotBuilt)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(code: i32, status: i32) -> UnitEnd {
        UnitEnd {
            active_state: "failed".into(),
            result: "exit-code".into(),
            exec_main_code: code,
            exec_main_status: status,
        }
    }

    #[test]
    fn what_ran_nothing_is_told_from_the_result_then_the_unit() {
        use NothingRan::*;
        assert_eq!(nothing_ran(Some(Outcome::NoRequest), None), Some(NoRequest));
        assert_eq!(
            nothing_ran(Some(Outcome::StaleSandbox), Some(&end(1, 1))),
            Some(StaleView)
        );
        assert_eq!(nothing_ran(None, Some(&end(1, 226))), Some(SandboxNotBuilt));
        // Other start failures (exec, user, credentials…) are not a race with useradd.
        for status in [203, 217, 243, 1] {
            assert_eq!(nothing_ran(None, Some(&end(1, status))), None, "{status}");
        }
        // Killed by a signal 226 is not an exit status.
        assert_eq!(nothing_ran(None, Some(&end(2, 226))), None);
        // A result file means picortex-run ran: its word counts, not the unit's.
        assert_eq!(
            nothing_ran(Some(Outcome::Refused), Some(&end(1, 226))),
            None
        );
        assert_eq!(nothing_ran(None, None), None);
    }

    #[test]
    fn a_spare_that_ran_nothing_always_runs_again() {
        for why in [
            NothingRan::NoRequest,
            NothingRan::StaleView,
            NothingRan::SandboxNotBuilt,
        ] {
            for n in [0, FRESH_SANDBOX_RERUNS, 100] {
                assert!(run_again(Some(why), true, n));
            }
            assert!(!counts(Some(why), true));
        }
    }

    #[test]
    fn a_fresh_units_sandbox_failing_runs_again_a_bounded_number_of_times() {
        for why in [NothingRan::StaleView, NothingRan::SandboxNotBuilt] {
            let runs = (0..10)
                .take_while(|n| run_again(Some(why), false, *n))
                .count();
            assert_eq!(runs as u32, FRESH_SANDBOX_RERUNS, "{why:?}");
            assert!(counts(Some(why), false));
        }
        assert!(!counts(Some(NothingRan::NoRequest), false));
    }

    #[test]
    fn anything_else_is_final() {
        assert!(!run_again(None, true, 0));
        assert!(!run_again(None, false, 0));
    }
}
