//! The Linq channel: webhook signature checks, the typed webhook payload (version 2026-02-03),
//! the outbound partner-API v3 client, cleaning and long-reply splitting. Pure parsing and HTTP only: no
//! storage, deduplication, retry loops or policy decisions live here — callers own those.

pub mod clean;
pub mod client;
pub mod events;
pub mod split;
pub mod verify;
