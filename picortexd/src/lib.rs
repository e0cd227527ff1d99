//! picortexd as a library: the gateway's parts, each a module named after its job, in the order a
//! message flows through them: `http` (webhooks in) → `linq::verify`/`linq::events` → `ingest`
//! (`quarantine`: may this chat have an agent? `commands`: the owner's; `attention`: should the
//! bot answer?) → `store` (the log and the queue) → `turns` (through the helper, on the `bus`;
//! `context` writes the prompt) → `reply` → `outbox` → `linq::client` (replies out). Who may
//! decide anything is `owner`. `main.rs` only wires them together.

pub mod attention;
pub mod backup;
pub mod bus;
pub mod catalog;
pub mod commands;
pub mod config;
pub mod consent;
pub mod context;
pub mod failpoint;
pub mod gateway1;
pub mod http;
pub mod ingest;
pub mod instance;
pub mod limits;
pub mod linq;
pub mod media;
pub mod outbox;
pub mod outcome;
pub mod owner;
pub mod poison;
pub mod quarantine;
pub mod reply;
pub mod spares;
pub mod store;
pub mod turns;
