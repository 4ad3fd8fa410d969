//! The gateway port (PROTOCOL.md 8), as the real server behaves: plain TCP, no handshake and
//! no cipher, GATEWAY_PUSH only; replies matched by header message id, in completion order.
//!
//! - `state`: what the gateway shares with the device connections: the ack waits (one
//!   server-wide table keyed by the device PUSH's message id, as `AckTaskQueue`), each
//!   connection's bind tags (the broadcast filter), the fault switch, the counters.
//! - `conn`: one gateway connection's task: refusals, single pushes, broadcasts, replies.
//! - `filter`: the broadcast filter (tags as substrings; no JavaScript engine for conditions).
//!
//! Not modelled (left out, said here so no one relies on it): Redis routes (`mp:ur:`, so a
//! user with no local connection is OFFLINE, never ROUTER_CHANGE), the write-buffer high mark
//! (PUSH_CLIENT_FAILURE only when the device write fails), the flow-control limits, taskId's
//! Redis counters.

pub(crate) mod conn;
mod filter;
mod state;

pub use state::GatewayStats;
pub(crate) use state::{GatewayState, WriteDone};
