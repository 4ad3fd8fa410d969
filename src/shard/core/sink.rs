//! Pushes on their way to the sink: the backlog the driver drains into its sink, and the
//! tokens that come back when the sink took a record.
//!
//! The core never drops a push and never lets the backlog grow without bound: when the driver
//! reports the sink full, every connection with records in the backlog stops reading until its
//! records are gone, so a slow sink slows the affected connections only.

use std::collections::VecDeque;

use crate::device::{Delivery, Event, Now};
use crate::proto::MsgId;
use crate::stats::Latency;

use super::io::{ConnId, Io};
use super::stop::Stop;
use super::ShardCore;

/// A push for the driver's sink. `token` comes back through
/// [`ShardCore::handle_sink_took`](super::ShardCore::handle_sink_took) once the sink took it.
#[derive(Debug)]
pub struct SinkItem {
    /// The receiving device's global index (the driver renders its ids).
    pub device: u32,
    /// The push.
    pub delivery: Delivery,
    /// Wall clock at receipt, ms since the Unix epoch.
    pub received_at_ms: i64,
    /// What to hand back when the sink took it.
    pub token: SinkToken,
}

/// Identifies a record handed to the sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkToken {
    /// The connection the push came on: an ack belongs to it; after a reconnect the server
    /// redelivers instead.
    pub conn: ConnId,
    /// The push's message id.
    pub msg_id: i32,
    /// Whether the device acks only now (BIZ_ACK).
    pub ack: bool,
    /// Monotonic µs at receipt, for the push-to-sink latency.
    pub received_us: u64,
}

#[derive(Debug, Default)]
pub(super) struct SinkQueue {
    /// Records not yet handed to the sink, in arrival order (nothing overtakes them).
    pub(super) backlog: VecDeque<SinkItem>,
    /// Records handed over whose token has not come back.
    pub(super) awaiting: u64,
    /// The driver found the sink full this turn: hand nothing more until the next turn.
    pub(super) full: bool,
    /// Slots paused for the backlog.
    pub(super) paused: Vec<u32>,
}

impl SinkQueue {
    /// Whether nothing is held or awaited (a graceful stop may close).
    pub(super) fn is_drained(&self) -> bool {
        self.backlog.is_empty() && self.awaiting == 0
    }
}

impl ShardCore {
    /// The sink took the record of `token`.
    pub fn handle_sink_took(&mut self, now: Now, token: SinkToken) {
        self.now = now;
        self.sink.awaiting = self.sink.awaiting.saturating_sub(1);
        self.probe.on_sink_took(&token, now);
        if let Some(n) = self.control.in_sink.get_mut(&token.conn) {
            *n -= 1;
            if *n == 0 {
                self.control.in_sink.remove(&token.conn);
            }
        }
        let took = now.us.saturating_sub(token.received_us);
        self.shared
            .stats
            .latencies
            .record(Latency::PushToSink, took);
        if token.ack && self.current_conn(token.conn).is_some() {
            self.event(token.conn.slot, Event::SinkTook(MsgId(token.msg_id)));
        }
    }

    /// The oldest push waiting for the sink, unless the sink was found full this turn. Take
    /// it with [`pop_delivery`](Self::pop_delivery) once the sink accepted it, or report
    /// [`sink_full`](Self::sink_full).
    #[must_use]
    pub fn peek_delivery(&self) -> Option<&SinkItem> {
        if self.sink.full {
            return None;
        }
        self.sink.backlog.front()
    }

    /// The sink accepted the record of [`peek_delivery`](Self::peek_delivery).
    pub fn pop_delivery(&mut self) {
        if let Some(item) = self.sink.backlog.pop_front() {
            self.sink.awaiting += 1;
            let conn = item.token.conn;
            *self.control.in_sink.entry(conn).or_default() += 1;
            if let Some(c) = self.current_conn(conn) {
                c.held = c.held.saturating_sub(1);
            }
        }
    }

    /// The sink had no room: every connection with pushes in the backlog stops reading until
    /// they are taken.
    pub fn sink_full(&mut self) {
        self.sink.full = true;
        for i in 0..self.sink.backlog.len() {
            let conn = self.sink.backlog[i].token.conn;
            let Some(s) = self.slots.get_mut(conn.slot as usize) else {
                continue;
            };
            if let Some(c) = s.conn.as_mut().filter(|c| c.id == conn && !c.paused) {
                c.paused = true;
                self.sink.paused.push(conn.slot);
                self.io.push_back(Io::PauseRead(conn));
            }
        }
    }

    /// Resumes reading on connections whose pushes the sink has all taken.
    pub(super) fn resume_drained(&mut self) {
        if self.sink.paused.is_empty() || matches!(self.stop, Stop::Draining { .. }) {
            return;
        }
        let mut paused = std::mem::take(&mut self.sink.paused);
        paused.retain(|&slot| {
            let Some(c) = self.slots[slot as usize].conn.as_mut() else {
                return false;
            };
            if c.held > 0 {
                return true;
            }
            c.paused = false;
            self.io.push_back(Io::ResumeRead(c.id));
            false
        });
        self.sink.paused = paused;
    }
}
