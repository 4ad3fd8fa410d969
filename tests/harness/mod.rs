//! Test harness shared by the integration tests (`mod harness;`): a plain blocking MPUSH
//! client written from PROTOCOL.md, a tiny std HTTP client for the admin API, and polling
//! with deadlines. Loopback only, no sleeps standing in for conditions.
#![allow(dead_code, unreachable_pub)]

pub mod client;
pub mod http;

use std::time::{Duration, Instant};

/// How long any single condition may take before the test fails. Generous: loopback is fast,
/// but shared CI machines are not.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds; panics with `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
