//! How a turn ended, as the log stores it (`turns.outcome`) and the journal names it
//! (`PICORTEX_OUTCOME`): one enum, so a misspelt outcome is a compile error and every `match`
//! shows every case. picortex-run's own view of a turn is `picortex_proto::turn::Outcome`; this
//! is the gateway's, which adds what only it sees (the unit, the helper, the budget, the gate).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnOutcome {
    Ok,
    AgentError,
    EmptyOutput,
    BadOutput,
    OutOfMemory,
    AgentFailed,
    DiskFull,
    Refused,
    Timeout,
    Interrupted,
    HelperUnavailable,
    HelperDenied,
    UnitFailedToStart,
    UnitLost,
    BudgetExhausted,
    InternalError,
    /// A discriminator turn that decided not to answer.
    NotAnswered,
    /// Held for the owner's decision, then blocked.
    Blocked,
}

impl TurnOutcome {
    pub fn as_str(self) -> &'static str {
        use TurnOutcome::*;
        match self {
            Ok => "ok",
            AgentError => "agent_error",
            EmptyOutput => "empty_output",
            BadOutput => "bad_output",
            OutOfMemory => "out_of_memory",
            AgentFailed => "agent_failed",
            DiskFull => "disk_full",
            Refused => "refused",
            Timeout => "timeout",
            Interrupted => "interrupted",
            HelperUnavailable => "helper_unavailable",
            HelperDenied => "helper_denied",
            UnitFailedToStart => "unit_failed_to_start",
            UnitLost => "unit_lost",
            BudgetExhausted => "budget_exhausted",
            InternalError => "internal_error",
            NotAnswered => "not_answered",
            Blocked => "blocked",
        }
    }
}

impl fmt::Display for TurnOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
