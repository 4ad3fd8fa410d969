//! Tickets and reusable sessions as they live in Redis (PROTOCOL.md 7).
//!
//! - [`format`](mod@format): the Java-compatible values of `mp:fcd:<deviceId>` (the client's fast-connect
//!   ticket) and `mp:rs:<sessionId>` (the server's reusable session), byte for byte.
#![forbid(unsafe_code)]

pub mod format;
pub mod store;

pub use store::{Loaded, MemoryTickets, StoreCounters, TicketStore, Wake};
