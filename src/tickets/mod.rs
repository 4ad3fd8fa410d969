//! Tickets and reusable sessions as they live in Redis (PROTOCOL.md 7).
//!
//! - [`format`](mod@format): the Java-compatible values of `mp:fcd:<deviceId>` (the client's
//!   fast-connect ticket) and `mp:rs:<sessionId>` (the server's reusable session), byte for
//!   byte.
//! - [`store`]: the shard's non-blocking [`TicketStore`] and the in-memory [`MemoryTickets`].
//! - [`redis`](mod@redis): [`RedisTickets`] (tickets, pipelined through fred, atomic TTL).
//! - [`sessions`]: the reference server's reusable-session store, [`SessionStore`], in memory
//!   ([`MemoryStore`]) or in Redis ([`RedisSessions`]).
//!
//! Imports nothing from `server`: the server depends on this module, not the other way.
#![forbid(unsafe_code)]

pub mod format;
pub mod redis;
pub mod sessions;
pub mod store;

pub use redis::{BadRedisUrl, RedisConfig, RedisTickets};
pub use sessions::{MemoryStore, RedisSessions, SessionStore, StoreError, StoreFuture};
pub use store::{Loaded, MemoryTickets, StoreCounters, TicketStore, Wake};
