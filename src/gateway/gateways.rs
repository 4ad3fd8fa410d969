//! Which gateway each of a push run's connections goes to, and what each gateway got. The
//! list can change during a run (`push --zookeeper` watches `/cluster/gs`): a gateway that
//! leaves gets no new requests and its connections are closed (replies already on their way
//! are still read); one that joins gets its share of connections, so of requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use super::tracker::Outcome;

/// The connection slots for `gateways` when `connections` were asked for: every gateway the
/// same number of them (`connections` rounded up to a multiple of the gateways' count, at
/// least one each), interleaved so that round-robin requests alternate between gateways.
pub fn spread(gateways: &[SocketAddr], connections: usize) -> Vec<SocketAddr> {
    let mut unique: Vec<SocketAddr> = Vec::with_capacity(gateways.len());
    for g in gateways {
        if !unique.contains(g) {
            unique.push(*g);
        }
    }
    if unique.is_empty() {
        return Vec::new();
    }
    let each = connections.max(1).div_ceil(unique.len());
    (0..each).flat_map(|_| unique.iter().copied()).collect()
}

/// What a changed gateway list did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Gateways no longer in the list.
    pub left: Vec<SocketAddr>,
    /// Gateways new in the list.
    pub joined: Vec<SocketAddr>,
    /// The list now.
    pub now: Vec<SocketAddr>,
}

impl Change {
    /// The difference from `old` to `new`; `None` when no gateway left or joined.
    pub fn between(old: &[SocketAddr], new: &[SocketAddr]) -> Option<Change> {
        let left: Vec<SocketAddr> = old.iter().filter(|g| !new.contains(g)).copied().collect();
        let joined: Vec<SocketAddr> = new.iter().filter(|g| !old.contains(g)).copied().collect();
        (!left.is_empty() || !joined.is_empty()).then(|| Change {
            left,
            joined,
            now: new.to_vec(),
        })
    }
}

/// One gateway's figures in a push run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GatewayFigures {
    /// Requests written to it (or meant for it, when its connect failed).
    pub sent: u64,
    /// OK replies.
    pub ok: u64,
    /// ERROR replies (any code).
    pub errors: u64,
    /// Requests with no reply by the client's timeout.
    pub no_reply: u64,
    /// Connections opened to it.
    pub connects: u64,
    /// Connects to it that failed.
    pub connect_failures: u64,
}

impl GatewayFigures {
    /// Counts a request's outcome.
    pub fn record(&mut self, o: Outcome) {
        match o {
            Outcome::Ok => self.ok += 1,
            Outcome::Error(_) => self.errors += 1,
            Outcome::NoReply => self.no_reply += 1,
            // A user without a route is sent to no gateway.
            Outcome::NoRoute => {}
        }
    }

    /// Requests with an outcome.
    pub fn done(&self) -> u64 {
        self.ok + self.errors + self.no_reply
    }
}

/// `a=sent b=sent` for a status line; empty with fewer than two gateways.
pub fn status(by: &BTreeMap<SocketAddr, GatewayFigures>) -> String {
    if by.len() < 2 {
        return String::new();
    }
    let parts: Vec<String> = by.iter().map(|(a, f)| format!("{a}={}", f.sent)).collect();
    format!(" gateways(sent) {}", parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn every_gateway_gets_the_same_share() {
        assert_eq!(spread(&[g(1)], 3), [g(1), g(1), g(1)]);
        assert_eq!(spread(&[g(1), g(2)], 1), [g(1), g(2)], "at least one each");
        assert_eq!(spread(&[g(1), g(2), g(3)], 4).len(), 6, "rounded up");
        assert_eq!(
            spread(&[g(1), g(2), g(1)], 2),
            [g(1), g(2)],
            "duplicates once"
        );
        assert!(spread(&[], 4).is_empty());
        let s = spread(&[g(1), g(2)], 4);
        assert!(s.windows(2).all(|w| w[0] != w[1]), "interleaved: {s:?}");
    }

    #[test]
    fn changes_name_who_left_and_joined() {
        assert_eq!(Change::between(&[g(1), g(2)], &[g(2), g(1)]), None);
        let c = Change::between(&[g(1), g(2)], &[g(2), g(3)]).unwrap();
        assert_eq!((c.left, c.joined), (vec![g(1)], vec![g(3)]));
        let mut by = BTreeMap::new();
        by.entry(g(1)).or_insert_with(GatewayFigures::default).sent = 3;
        assert_eq!(status(&by), "");
        by.entry(g(2)).or_insert_with(GatewayFigures::default).sent = 4;
        assert_eq!(status(&by), " gateways(sent) 127.0.0.1:1=3 127.0.0.1:2=4");
    }
}
