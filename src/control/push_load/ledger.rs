//! Every push of `run --push-rate`, accounted for, sans-IO: the pusher's sends and gateway
//! replies and the shards' receipts in, counters and histograms out (as a [`ShardStats`]
//! that merges into the fleet's, so reports, `report merge`, Prometheus and `--fail-on` see
//! the push figures exactly as the others).
//!
//! Each push ends in exactly one of: received (whatever the gateway said; of those with no
//! reply, `push_no_reply_received` counts the ack race of PROTOCOL.md 8.6), explained (never
//! received, and the gateway said ERROR or there was no route), or lost (never received
//! although the gateway took it: OK or no reply), judged once its grace period has passed.
//! So `push_sent = push_received + push_explained + push_lost` once the ledger is settled.
//!
//! Time is µs on the control plane's clock. Pushes live in a window from the oldest open one;
//! a push leaves it once settled and older than the grace period. A bit per push ever sent
//! remembers receipts, so a second receipt is found however late it comes.

use std::collections::VecDeque;

use crate::gateway::Outcome;
use crate::shard::core::{PushReceipt, ReceiptKind};
use crate::stats::{Latency, ShardStats};

/// How a push's gateway request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The gateway's outcome (OK, ERROR code, or no reply by the client's timeout).
    Gateway(Outcome),
    /// Route lookup found no online route: never sent to a gateway.
    NoRoute,
}

#[derive(Clone, Debug)]
struct Entry {
    sent_us: u64,
    sent_wall_us: u64,
    reply: Option<Reply>,
    received: bool,
    acked: bool,
}

impl Entry {
    /// Whether nothing more is expected: a reply, and a receipt unless the reply explains
    /// why there is none.
    fn settled(&self) -> bool {
        match self.reply {
            None => false,
            Some(r) => self.received || explains(r),
        }
    }
}

/// Replies that explain a push no device received.
fn explains(r: Reply) -> bool {
    matches!(
        r,
        Reply::NoRoute | Reply::Gateway(Outcome::Error(_) | Outcome::NoRoute)
    )
}

/// The run's push accounting.
#[derive(Debug)]
pub struct Ledger {
    /// Sequence of `window[0]`.
    base: u64,
    window: VecDeque<Entry>,
    received_bits: Vec<u64>,
    grace_us: u64,
    stats: ShardStats,
    /// First and last send, µs (for the achieved push rate).
    sends: Option<(u64, u64)>,
}

impl Ledger {
    /// A ledger that judges a push lost `grace_us` after its send (sequences count from 1).
    pub fn new(grace_us: u64) -> Self {
        Ledger {
            base: 1,
            window: VecDeque::new(),
            received_bits: Vec::new(),
            grace_us,
            stats: ShardStats::default(),
            sends: None,
        }
    }

    /// The push figures so far (counters and the three push latencies; all else zero).
    pub fn stats(&self) -> &ShardStats {
        &self.stats
    }

    /// Seconds from the first send to the last (0 before two sends).
    pub fn sending_secs(&self) -> f64 {
        self.sends
            .map_or(0.0, |(first, last)| (last - first) as f64 / 1e6)
    }

    /// Pushes not settled yet.
    pub fn open(&self) -> usize {
        self.window.iter().filter(|e| !e.settled()).count()
    }

    fn index(&self, seq: u64) -> Option<usize> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        (i < self.window.len()).then_some(i)
    }

    /// Push `seq` (the next sequence) was sent at `now_us`, with header time `sent_wall_us`.
    pub fn sent(&mut self, seq: u64, now_us: u64, sent_wall_us: u64) {
        // Sequences come in order; a gap (never expected) is filled with settled entries so
        // that indexes stay right and nothing is counted for them.
        while self.base + (self.window.len() as u64) < seq {
            self.window.push_back(Entry {
                sent_us: now_us,
                sent_wall_us: u64::MAX,
                reply: Some(Reply::NoRoute),
                received: true,
                acked: true,
            });
        }
        if self.base + (self.window.len() as u64) != seq {
            return;
        }
        self.stats.counters.push_sent += 1;
        self.sends = Some(
            self.sends
                .map_or((now_us, now_us), |(first, _)| (first, now_us)),
        );
        self.window.push_back(Entry {
            sent_us: now_us,
            sent_wall_us,
            reply: None,
            received: false,
            acked: false,
        });
    }

    /// The gateway request of push `seq` ended at `now_us`.
    pub fn reply(&mut self, seq: u64, reply: Reply, now_us: u64) {
        let Some(i) = self.index(seq) else { return };
        let e = &mut self.window[i];
        if e.reply.is_some() {
            return;
        }
        e.reply = Some(reply);
        let latency = now_us.saturating_sub(e.sent_us);
        let c = &mut self.stats.counters;
        match reply {
            Reply::Gateway(Outcome::Ok) => c.push_gateway_ok += 1,
            Reply::Gateway(Outcome::Error(code)) => {
                *c.push_gateway_errors.entry(code).or_default() += 1;
            }
            Reply::Gateway(Outcome::NoReply) => c.push_no_reply += 1,
            Reply::NoRoute | Reply::Gateway(Outcome::NoRoute) => c.push_no_route += 1,
        }
        if matches!(reply, Reply::Gateway(Outcome::Ok | Outcome::Error(_))) {
            self.stats.latencies.record(Latency::PushReply, latency);
        }
    }

    /// A shard's receipt, at `now_us` on this ledger's clock.
    pub fn receipt(&mut self, r: &PushReceipt, now_us: u64) {
        let known = self
            .index(r.seq)
            .is_some_and(|i| self.window[i].sent_wall_us == r.sent_wall_us);
        let bit = usize::try_from(r.seq).unwrap_or(usize::MAX);
        if !known {
            // Settled and gone from the window, or never sent by this run.
            let seen = self
                .received_bits
                .get(bit / 64)
                .is_some_and(|w| w & (1 << (bit % 64)) != 0);
            match (seen, r.kind) {
                (true, ReceiptKind::Received) => self.stats.counters.push_received_twice += 1,
                (true, ReceiptKind::Acked) => {}
                (false, _) => self.stats.counters.push_foreign += 1,
            }
            return;
        }
        let Some(i) = self.index(r.seq) else { return };
        let e = &mut self.window[i];
        let latency = now_us.saturating_sub(e.sent_us);
        let c = &mut self.stats.counters;
        match r.kind {
            ReceiptKind::Received if e.received => c.push_received_twice += 1,
            ReceiptKind::Received => {
                e.received = true;
                c.push_received += 1;
                self.stats.latencies.record(Latency::PushE2e, latency);
                if self.received_bits.len() <= bit / 64 {
                    self.received_bits.resize(bit / 64 + 1, 0);
                }
                self.received_bits[bit / 64] |= 1 << (bit % 64);
            }
            ReceiptKind::Acked if e.acked => {}
            ReceiptKind::Acked => {
                e.acked = true;
                self.stats.latencies.record(Latency::PushAcked, latency);
            }
        }
    }

    /// Judges every push sent `grace_us` or more before `now_us` (every push, with `all`):
    /// received, explained or lost, and lets it leave the window.
    pub fn settle(&mut self, now_us: u64, all: bool) {
        while let Some(e) = self.window.front() {
            if !all && now_us.saturating_sub(e.sent_us) < self.grace_us {
                break;
            }
            let Some(e) = self.window.pop_front() else {
                break;
            };
            self.base += 1;
            if e.sent_wall_us == u64::MAX {
                continue; // a filled gap
            }
            let c = &mut self.stats.counters;
            let reply = e.reply.unwrap_or(Reply::Gateway(Outcome::NoReply));
            if e.reply.is_none() {
                c.push_no_reply += 1;
            }
            if e.received {
                if reply == Reply::Gateway(Outcome::NoReply) {
                    c.push_no_reply_received += 1;
                }
            } else if explains(reply) {
                c.push_explained += 1;
            } else {
                c.push_lost += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(seq: u64, wall: u64, kind: ReceiptKind) -> PushReceipt {
        PushReceipt {
            seq,
            sent_wall_us: wall,
            at_us: 0,
            kind,
        }
    }

    #[test]
    fn every_push_ends_received_explained_or_lost() {
        let mut l = Ledger::new(1_000);
        for seq in 1..=6 {
            l.sent(seq, seq * 10, 100 + seq);
        }
        // 1: OK and received and acked.
        l.receipt(&receipt(1, 101, ReceiptKind::Received), 500);
        l.receipt(&receipt(1, 101, ReceiptKind::Acked), 510);
        l.reply(1, Reply::Gateway(Outcome::Ok), 600);
        // 2: received twice, no reply (the ack race).
        l.receipt(&receipt(2, 102, ReceiptKind::Received), 50);
        l.receipt(&receipt(2, 102, ReceiptKind::Received), 60);
        l.reply(2, Reply::Gateway(Outcome::NoReply), 900);
        // 3: OFFLINE. 4: no route. 5: OK, never received. 6: no reply, never received.
        l.reply(3, Reply::Gateway(Outcome::Error(1)), 40);
        l.reply(4, Reply::NoRoute, 40);
        l.reply(5, Reply::Gateway(Outcome::Ok), 70);
        l.reply(6, Reply::Gateway(Outcome::NoReply), 900);
        // A receipt of another run (same sequence, other send time).
        l.receipt(&receipt(5, 999, ReceiptKind::Received), 80);
        assert_eq!(l.open(), 2, "5 and 6 wait for a receipt");
        l.settle(1_030, false);
        assert_eq!(
            l.window.len(),
            3,
            "only the first three are past their grace"
        );
        l.settle(2_000, true);
        let c = &l.stats().counters;
        assert_eq!(
            (c.push_sent, c.push_received, c.push_explained, c.push_lost),
            (6, 2, 2, 2)
        );
        assert_eq!(
            c.push_sent,
            c.push_received + c.push_explained + c.push_lost
        );
        assert_eq!((c.push_received_twice, c.push_no_reply_received), (1, 1));
        assert_eq!(
            (c.push_gateway_ok, c.push_no_reply, c.push_no_route),
            (2, 2, 1)
        );
        assert_eq!(c.push_gateway_errors.get(&1), Some(&1));
        assert_eq!(c.push_foreign, 1);
        let lat = &l.stats().latencies;
        assert_eq!(lat.get(Latency::PushE2e).len(), 2);
        assert_eq!(lat.get(Latency::PushAcked).len(), 1);
        assert_eq!(lat.get(Latency::PushReply).len(), 3, "OK, OK, OFFLINE");
        // A receipt after the push left the window is still a duplicate.
        l.receipt(&receipt(1, 101, ReceiptKind::Received), 3_000);
        assert_eq!(l.stats().counters.push_received_twice, 2);
    }
}
