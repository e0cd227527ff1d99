//! picortexd as a library: the gateway's parts, each a module named after its job, in the order a
//! message flows through them: `http` (webhooks in) → `linq::verify`/`linq::events` → `gate` →
//! `store` (the log and the queue) → `turns` (through the helper, on the `bus`) → `reply` →
//! `outbox` → `linq::client` (replies out). `main.rs` only wires them together.

pub mod bus;
pub mod config;
pub mod failpoint;
pub mod gate;
pub mod http;
pub mod ingest;
pub mod linq;
pub mod outbox;
pub mod reply;
pub mod spares;
pub mod store;
pub mod turns;
