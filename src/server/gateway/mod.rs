//! The gateway port (PROTOCOL.md 8), as the real server behaves: plain TCP, no handshake and
//! no cipher, GATEWAY_PUSH only; replies matched by header message id, in completion order.
//!
//! - `state`: what the gateway shares with the device connections: the ack waits (one
//!   server-wide table keyed by the device PUSH's message id, as `AckTaskQueue`), each
//!   connection's bind tags (the broadcast filter), the fault switch, the counters.
//! - `conn`: one gateway connection's task: refusals, single pushes, broadcasts, replies.
//! - `filter`: the broadcast filter (tags as substrings; no JavaScript engine for conditions).
//!
//! - `remote`: users' routes in Redis (`mp:ur:`) with `serve --redis`: written at bind,
//!   offline at unbind and close; OFFLINE or ROUTER_CHANGE for a user held elsewhere.
//!
//! Not modelled (left out, said here so no one relies on it): the write-buffer high mark
//! (PUSH_CLIENT_FAILURE only when the device write fails), the flow-control limits, taskId's
//! Redis counters.

pub(crate) mod conn;
mod filter;
pub(crate) mod remote;
mod state;

pub use state::GatewayStats;
pub(crate) use state::{GatewayState, WriteDone};
