//! The reference MPUSH server: a peer that speaks the server side of PROTOCOL.md as the real
//! Java server does, for the tests, for `mpush-fleet run`'s embedded default, and as a local
//! stand-in (`mpush-fleet serve`).
//!
//! Owns: its own sans-IO session, the connection shell, the route table, fault switches and
//! the admin API's routes. Must not touch `device/` or `shard/`: it is an independent peer
//! and shares only `proto`, `crypto`, `tickets` (the formats and the reusable-session store)
//! and `http` (the HTTP server its admin routes run on) with the fleet. Time is `u64` ms since
//! the server started ([`Tick`]); wall clock is `i64` ms since the epoch.
//!
//! Layout:
//! - [`session`]: [`ServerSession`], one connection's protocol state machine, sans-IO.
//! - the reusable-session store, [`SessionStore`] and [`MemoryStore`], lives in
//!   [`crate::tickets::sessions`] (re-exported here for the server's callers).
//! - [`capacity`]: the capacity model, token buckets in front of RSA decryption and the
//!   session lookup (requests over the limit wait, in order; none is refused).
//! - `shared`: the registry, push log, counters and fault switches.
//! - `routes`: the route table, indexed by user and by connection (O(1) close and push).
//! - `conn`: the tokio task per connection (the shell around a session); `inbox`: its
//!   queue of commands from elsewhere.
//! - [`runtime`]: [`Server::start`], [`ServerHandle`], the accept loop.
//! - `gateway`: the gateway port (PROTOCOL.md 8): GATEWAY_PUSH from app servers, ack waits,
//!   broadcasts; it shares the wire codec of [`crate::gateway`] with the gateway client.
//! - `admin`: the loopback HTTP+JSON admin API, an axum router on [`crate::http`].
//! - [`cli`]: `mpush-fleet serve` ([`ServeArgs`], [`serve_main`]).
//! - [`status`]: `serve`'s status lines and end-of-run summary.
//!
//! Facts checked against the real server (github mpusher/mpush, `mpush-core` handlers,
//! `mpush-common` `MessageDispatcher` / `ErrorMessage` / `BaseMessage`, `mpush-netty`
//! `PacketDecoder` / `NettyConnection`, `ServerConnectionManager`) are cited where used.

mod admin;
pub mod capacity;
pub mod cli;
mod conn;
mod gateway;
pub mod http_proxy;
mod inbox;
mod routes;
pub mod runtime;
pub mod session;
mod shared;
pub mod status;

use std::net::SocketAddr;

pub use crate::tickets::sessions::{MemoryStore, SessionStore, StoreError};
pub use capacity::{Bucket, Capacity, CapacityChange, CapacityLimits};
pub use cli::{serve_main, ServeArgs};
pub use gateway::GatewayStats;
pub use runtime::{raise_nofile_limit, PushResult, PushTarget, Server, ServerHandle, ServerOps};
pub use session::{ClientType, CloseReason, ServerSession, SessionConfig, Tick};
pub use shared::{AckMode, ConnId, FaultState, PushRecord, ServerStats};

/// Everything [`Server::start`] needs. [`ServerConfig::new`] gives the real server's defaults
/// on an ephemeral loopback port.
#[derive(Debug)]
pub struct ServerConfig {
    /// MPUSH listener address.
    pub listen: SocketAddr,
    /// Admin API address; `None` for no admin API.
    pub admin: Option<SocketAddr>,
    /// The admin API's bearer token (required off loopback; see [`crate::http::auth`]).
    pub admin_token: Option<crate::http::auth::Token>,
    /// What every connection's session shares: key, heartbeats, expiry, limits, quirks.
    pub session: SessionConfig,
    /// Runtime worker threads (`None`: one per core).
    pub workers: Option<usize>,
    /// The capacity model's limits at start (default unlimited); changed live with
    /// [`ServerOps::set_capacity`] or `POST /capacity`.
    pub capacity: CapacityLimits,
    /// Gateway port address (PROTOCOL.md 8; the real server's default is 3001); `None` for
    /// no gateway port.
    pub gateway: Option<SocketAddr>,
    /// Fault: reproduce the real server's ack race on the gateway port (8.6), every time.
    pub gateway_ack_race: bool,
    /// Redis for users' routes (`mp:ur:`, PROTOCOL.md 8.2), written at bind and cleared at
    /// unbind and close when the server has a gateway port; `None`: local routes only.
    pub routes_redis: Option<String>,
}

impl ServerConfig {
    /// The real server's defaults, MPUSH's default key pair, `127.0.0.1:0`, no admin API.
    pub fn new() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            admin_token: None,
            session: SessionConfig::default(),
            workers: None,
            capacity: CapacityLimits::default(),
            gateway: None,
            gateway_ack_race: false,
            routes_redis: None,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// The real server's `min-heartbeat` and `max-heartbeat` default: 3 minutes.
pub const DEFAULT_HEARTBEAT_MS: i32 = 180_000;
/// The real server's `session-expired-time` default: 1 day.
pub const DEFAULT_SESSION_EXPIRE_SECS: u32 = 86_400;
