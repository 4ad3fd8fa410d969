//! Attribution of a device's figures to the server it is (or was last) connected to: the
//! changes a device input made to the shard's online gauge, connect failures and session
//! errors go to the server of the connection that input belonged to.

use std::net::SocketAddr;

use super::ShardCore;
use crate::stats::Counters;

/// No server yet (the slot never connected).
pub(super) const NO_SERVER: u16 = u16::MAX;

/// The device-driven counters at the end of the last drive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Seen {
    online: i64,
    connect_failures: u64,
    errors: u64,
}

impl Seen {
    fn of(c: &Counters) -> Seen {
        Seen {
            online: c.online,
            connect_failures: c.connect_failures,
            errors: c.decode_errors
                + c.request_timeouts
                + c.read_timeouts
                + c.errors.values().sum::<u64>(),
        }
    }
}

impl ShardCore {
    /// The index of `addr` in the shard's table of servers (a small, append-only table:
    /// every address the shard ever connected to).
    pub(super) fn server_index(&mut self, addr: SocketAddr) -> u16 {
        if let Some(i) = self.server_table.iter().position(|a| *a == addr) {
            return i as u16;
        }
        if self.server_table.len() >= usize::from(NO_SERVER) {
            return NO_SERVER; // absurdly many addresses: no more attribution
        }
        self.server_table.push(addr);
        (self.server_table.len() - 1) as u16
    }

    /// Gives what changed since the last drive to `server` (the slot's server before this
    /// drive started a new connect).
    pub(super) fn attribute(&mut self, server: u16) {
        let now = Seen::of(&self.shared.stats.counters);
        let was = std::mem::replace(&mut self.seen, now);
        if now == was {
            return;
        }
        let Some(&addr) = self.server_table.get(usize::from(server)) else {
            return;
        };
        let f = self.shared.stats.servers.entry(addr);
        f.online += now.online - was.online;
        f.connect_failures += now.connect_failures.saturating_sub(was.connect_failures);
        f.errors += now.errors.saturating_sub(was.errors);
    }
}
