//! The client's requests in flight, sans-IO: ids out, replies and time in, outcomes out.
//!
//! One [`Tracker`] serves every gateway connection of a client, so message ids are unique
//! across connections (upstream: one JVM-wide counter, PROTOCOL.md 8.1) and a reply is found
//! by its header id alone, in whatever order the server completes requests. A request with no
//! reply by its deadline becomes [`Outcome::NoReply`]: "unknown", not "not delivered" (8.4).
//! A reply after that, or for an id never sent, is only counted ([`Tracker::unmatched`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::codec::GatewayReply;
use crate::proto::MsgId;

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// OK (code 0).
    Ok,
    /// ERROR with this code (1 OFFLINE, 2 PUSH_CLIENT_FAILURE, 3 ROUTER_CHANGE, ...), or an
    /// OK whose code was not 0.
    Error(u8),
    /// No reply before the client's own timeout.
    NoReply,
    /// Route lookup (`push --redis`) found no online route: nothing sent (upstream reports
    /// OFFLINE without touching the gateway, 8.2).
    NoRoute,
}

impl Outcome {
    /// The outcome a reply gives.
    pub fn of(reply: &GatewayReply) -> Outcome {
        match reply {
            GatewayReply::Ok(ok) if ok.code == 0 => Outcome::Ok,
            other => Outcome::Error(other.code()),
        }
    }
}

/// A finished request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed<T> {
    /// The request's id.
    pub id: MsgId,
    /// What the caller attached at [`Tracker::start`].
    pub tag: T,
    /// How it ended.
    pub outcome: Outcome,
    /// Microseconds from the send to the reply (to the deadline for [`Outcome::NoReply`]).
    pub latency_us: u64,
}

#[derive(Debug)]
struct Pending<T> {
    sent_us: u64,
    tag: T,
}

/// Requests in flight, keyed by header message id. Time is microseconds on any monotonic
/// clock the caller chooses.
#[derive(Debug)]
pub struct Tracker<T> {
    next_id: i32,
    timeout_us: u64,
    pending: HashMap<i32, Pending<T>>,
    deadlines: BinaryHeap<Reverse<(u64, i32)>>,
    unmatched: u64,
}

impl<T> Tracker<T> {
    /// A tracker whose requests give up after `timeout_us` without a reply.
    pub fn new(timeout_us: u64) -> Self {
        Self {
            next_id: 1,
            timeout_us,
            pending: HashMap::new(),
            deadlines: BinaryHeap::new(),
            unmatched: 0,
        }
    }

    /// Registers a request sent at `now_us`; returns the id to put in its header. Ids count
    /// 1, 2, 3... and wrap past `i32::MAX`, skipping 0 and ids still in flight.
    pub fn start(&mut self, now_us: u64, tag: T) -> MsgId {
        let id = loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if id > 0 && !self.pending.contains_key(&id) {
                break id;
            }
        };
        self.pending.insert(
            id,
            Pending {
                sent_us: now_us,
                tag,
            },
        );
        self.deadlines
            .push(Reverse((now_us.saturating_add(self.timeout_us), id)));
        MsgId(id)
    }

    /// A reply arrived for `id`. `None` when nothing with that id is in flight (a late reply,
    /// or one for an id this client never sent): counted in [`Tracker::unmatched`].
    pub fn handle_reply(
        &mut self,
        now_us: u64,
        id: MsgId,
        reply: &GatewayReply,
    ) -> Option<Completed<T>> {
        let Some(p) = self.pending.remove(&id.0) else {
            self.unmatched += 1;
            return None;
        };
        Some(Completed {
            id,
            tag: p.tag,
            outcome: Outcome::of(reply),
            latency_us: now_us.saturating_sub(p.sent_us),
        })
    }

    /// Moves every request whose deadline has passed into `out` as [`Outcome::NoReply`].
    pub fn handle_timeout(&mut self, now_us: u64, out: &mut Vec<Completed<T>>) {
        while let Some(&Reverse((at, id))) = self.deadlines.peek() {
            if at > now_us {
                break;
            }
            self.deadlines.pop();
            // A deadline whose request was answered (or whose id was reused) is stale.
            let Some(p) = self.pending.get(&id) else {
                continue;
            };
            if p.sent_us.saturating_add(self.timeout_us) != at {
                continue;
            }
            if let Some(p) = self.pending.remove(&id) {
                out.push(Completed {
                    id: MsgId(id),
                    tag: p.tag,
                    outcome: Outcome::NoReply,
                    latency_us: self.timeout_us,
                });
            }
        }
    }

    /// When [`Tracker::handle_timeout`] has something to do next.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Replies that matched no request in flight.
    pub fn unmatched(&self) -> u64 {
        self.unmatched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message::ErrorCode;

    fn ok() -> GatewayReply {
        GatewayReply::ok(String::new())
    }

    #[test]
    fn replies_match_by_id_in_completion_order() {
        let mut t = Tracker::new(3_000_000);
        let ids: Vec<MsgId> = (0..5).map(|i| t.start(i * 10, i)).collect();
        assert_eq!(ids, (1..=5).map(MsgId).collect::<Vec<_>>());
        // The live order of the real server: 1, 5, 4, 2, 3.
        let mut tags = Vec::new();
        for id in [1, 5, 4, 2, 3] {
            let c = t.handle_reply(1_000, MsgId(id), &ok()).expect("in flight");
            assert_eq!(c.outcome, Outcome::Ok);
            tags.push(c.tag);
        }
        assert_eq!(tags, [0, 4, 3, 1, 2]);
        assert_eq!(t.in_flight(), 0);
        assert!(t.handle_reply(2_000, MsgId(3), &ok()).is_none(), "twice");
        assert_eq!(t.unmatched(), 1);
    }

    #[test]
    fn deadline_gives_no_reply_and_a_late_reply_is_unmatched() {
        let mut t = Tracker::new(100);
        let a = t.start(0, "a");
        let b = t.start(50, "b");
        let off = GatewayReply::error(16, ErrorCode::OFFLINE, "user offline", String::new());
        let c = t.handle_reply(60, b, &off).unwrap();
        assert_eq!((c.outcome, c.latency_us), (Outcome::Error(1), 10));
        assert_eq!(t.poll_timeout(), Some(100));
        let mut out = Vec::new();
        t.handle_timeout(99, &mut out);
        assert!(out.is_empty());
        t.handle_timeout(150, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].id, out[0].outcome), (a, Outcome::NoReply));
        assert!(t.handle_reply(200, a, &ok()).is_none());
        assert_eq!(t.unmatched(), 1);
        assert_eq!(t.poll_timeout(), None, "b's stale deadline was dropped");
    }

    #[test]
    fn ids_wrap_and_skip_ids_in_flight() {
        let mut t = Tracker::new(10);
        t.next_id = i32::MAX;
        assert_eq!(t.start(0, ()), MsgId(i32::MAX));
        assert_eq!(t.start(0, ()), MsgId(1));
        t.next_id = 1;
        assert_eq!(t.start(0, ()), MsgId(2), "1 is still in flight");
    }
}
