//! The MPUSH gateway client: what an application server does to push (PROTOCOL.md 8).
//!
//! Sans-IO at the core, like the rest of the wire code:
//! - [`codec`]: GATEWAY_PUSH and GatewayKickUser bodies, OK / ERROR replies.
//! - [`result`]: the GatewayPushResult JSON in a reply's data.
//! - [`route`]: a user's routes in Redis (`mp:ur:<userId>`), where a push must go.
//! - [`route_store`]: those routes in Redis: written by `serve`, read by `push --redis`.
//! - [`tracker`]: requests in flight, matched by header message id in completion order,
//!   "no reply" after the client's own timeout.
//! - [`driver`]: the thin tokio driver: connections, pacing, the run's report.
//! - [`gateways`]: which gateway each connection goes to as the list changes; per-gateway
//!   figures.
//! - [`cli`]: `mpush-fleet push`.
//!
//! The server's side of the gateway is in [`crate::server`]; it shares [`codec`], [`result`]
//! and [`route`] with this client as both share [`crate::proto`].

pub mod cli;
pub mod codec;
pub mod driver;
pub mod gateways;
pub mod result;
pub mod route;
pub mod route_store;
pub mod tracker;

pub use codec::{decode_push, encode_push, GatewayKickUser, GatewayPush, GatewayReply};
pub use route::Route;
pub use tracker::{Completed, Outcome, Tracker};

/// The upstream client's PushContext timeout, ms: its own timer for a reply (8.8).
pub const DEFAULT_CLIENT_TIMEOUT_MS: u64 = 3_000;
/// The wire timeout upstream puts in a GATEWAY_PUSH: the client timeout minus 500 ms, so the
/// server gives up first (8.3).
pub const WIRE_TIMEOUT_SLACK_MS: u64 = 500;
