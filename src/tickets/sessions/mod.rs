//! Where the reference server keeps reusable sessions for fast connect (`mp:rs:<sessionId>`).
//!
//! The interface is async through boxed futures, so that the Redis client (fred) implements it
//! without blocking a runtime thread, and the trait stays object-safe (`Arc<dyn
//! SessionStore>`). Values travel as [`ReusableSession`]; stores persist their `mp:rs:` text.
//! It lives here, beside the formats, and not in `server`, so that layers depend one way:
//! `server` uses `tickets`, `tickets` knows nothing of `server`.
//!
//! - [`MemoryStore`] (`memory.rs`): the default, in process.
//! - [`RedisSessions`] (`redis.rs`): in Redis, shared with a real MPUSH server.

mod memory;
mod redis;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use memory::MemoryStore;
pub use redis::RedisSessions;

use super::format::ReusableSession;

/// A boxed, sendable store operation.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store operation failed. Rare (a backend fault), so a string is fine here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (connection lost, command refused).
    #[error("session store backend: {0}")]
    Backend(String),
}

/// Reusable sessions by session id, each with a time to live.
pub trait SessionStore: Send + Sync + 'static {
    /// The live session stored under `session_id`, or `None` when it is missing, expired, or
    /// its stored value does not decode (the real server then answers ERROR 103 as well).
    fn get<'a>(&'a self, session_id: &'a str) -> StoreFuture<'a, Option<ReusableSession>>;

    /// Stores `session` under `session_id` for `ttl` (the real server's `SET key value EX`).
    fn put<'a>(
        &'a self,
        session_id: &'a str,
        session: &'a ReusableSession,
        ttl: Duration,
    ) -> StoreFuture<'a, ()>;

    /// Fault switch: expires every session. Returns how many were dropped.
    fn expire_all(&self) -> StoreFuture<'_, u64>;
}
