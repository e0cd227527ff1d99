//! picortex-run: the narrow, audited wrapper that runs one agent turn as a chat's Unix user inside
//! its transient unit (SPEC §1, T1–T4). systemd starts it as
//! `picortex-run --turn <32 hex>` with a `TurnRequest` on stdin and a result file on stdout,
//! which it moves out of every child's reach before anything else runs.
//!
//! Everything that decides something is a plain function here, so unit tests reach it without a
//! chat user or a unit: the self-checks ([`preflight`]), request validation ([`request`]), the
//! agent's argv and environment ([`agent`]), reading its output ([`output`]), OOM detection
//! ([`oom`]) and the turn itself with its one-shot session recovery ([`turn::run_turn`]).
//! `main.rs` only wires them together and writes the one `TurnResult` line through the result
//! channel ([`channel`]), which no child of picortex-run can reach.

#![deny(unsafe_code)]

pub mod agent;
pub mod audit;
pub mod channel;
pub mod config;
pub mod discriminate;
pub mod diskfull;
pub mod mcp;
pub mod nosubvol;
pub mod oom;
pub mod outbox;
pub mod output;
pub mod preflight;
pub mod relay;
pub mod request;
pub mod scope;
pub mod seed;
pub mod turn;
pub mod userdb;

pub use config::AgentConfig;
pub use preflight::{Identity, Refusal};
pub use turn::run_turn;

/// Exit status of picortex-run: the result line was written and the agent answered.
pub const EXIT_OK: u8 = 0;
/// The result line was written, but the turn did not produce an answer.
pub const EXIT_TURN_FAILED: u8 = 1;
/// picortex-run refused to run the agent (a `refused` result was written if stdout allowed it).
pub const EXIT_REFUSED: u8 = 2;
/// The result line could not be written.
pub const EXIT_NO_RESULT: u8 = 3;
