//! Figures per server: where a shard's connects went, how many of its devices are online on
//! each server now, and the errors each server's sessions had.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

/// One server's figures, as one shard saw them (or, merged, the fleet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerFigures {
    /// TCP connects attempted to it.
    pub connects: u64,
    /// Of those, connects that failed or timed out.
    pub connect_failures: u64,
    /// Devices online on it now (handshake or fast connect done, connection up).
    pub online: i64,
    /// Errors of sessions on it: ERROR replies, undecodable frames, request and read
    /// timeouts.
    pub errors: u64,
}

impl ServerFigures {
    fn merge(&mut self, o: &ServerFigures) {
        self.connects += o.connects;
        self.connect_failures += o.connect_failures;
        self.online += o.online;
        self.errors += o.errors;
    }
}

/// Figures by server address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ByServer(pub BTreeMap<SocketAddr, ServerFigures>);

impl ByServer {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &ByServer) {
        for (addr, f) in &other.0 {
            self.0.entry(*addr).or_default().merge(f);
        }
    }

    /// The figures of `addr`, created empty.
    pub fn entry(&mut self, addr: SocketAddr) -> &mut ServerFigures {
        self.0.entry(addr).or_default()
    }

    /// `addr=connects/online/errors ...` for a status line; empty with fewer than two
    /// servers (the line's totals say it all then).
    pub fn status(&self) -> String {
        if self.0.len() < 2 {
            return String::new();
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(a, f)| {
                let mut s = format!("{a}={}/{}", f.connects, f.online);
                if f.errors + f.connect_failures > 0 {
                    s.push_str(&format!("/{}", f.errors + f.connect_failures));
                }
                s
            })
            .collect();
        format!(" servers(connects/online[/errors]) {}", parts.join(" "))
    }

    /// For the report: by `HOST:PORT` text.
    pub fn by_name(&self) -> BTreeMap<String, ServerFigures> {
        self.0.iter().map(|(a, f)| (a.to_string(), *f)).collect()
    }
}

/// At most this many servers get a `server` label of their own in Prometheus, and rows of
/// their own in the summary table; the rest are summed under `other`. A fleet following
/// ZooKeeper through a long soak may see many servers (pods come back on new addresses): this
/// bounds the label cardinality whatever happens.
pub const MAX_LABELLED: usize = 32;

/// The `server` label of the servers beyond [`MAX_LABELLED`].
pub const OTHER: &str = "other";

/// Which servers have a label of their own: the first [`MAX_LABELLED`] ever seen, for the
/// life of the endpoint, so a labelled series never moves into `other` and `other` only ever
/// gains servers (its counters stay monotonic).
#[derive(Debug, Default)]
pub struct Labels {
    labelled: Vec<SocketAddr>,
}

impl Labels {
    /// `by`'s figures as `(label, figures)`: each labelled server (in the order first seen),
    /// then `other` when some server has none.
    pub fn series(&mut self, by: &ByServer) -> Vec<(String, ServerFigures)> {
        for addr in by.0.keys() {
            if self.labelled.len() < MAX_LABELLED && !self.labelled.contains(addr) {
                self.labelled.push(*addr);
            }
        }
        let mut out: Vec<(String, ServerFigures)> = self
            .labelled
            .iter()
            .map(|a| (a.to_string(), by.0.get(a).copied().unwrap_or_default()))
            .collect();
        let mut other: Option<ServerFigures> = None;
        for (addr, f) in &by.0 {
            if !self.labelled.contains(addr) {
                other.get_or_insert_with(ServerFigures::default).merge(f);
            }
        }
        if let Some(o) = other {
            out.push((OTHER.to_string(), o));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_renders() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut x = ByServer::default();
        x.entry(a).connects = 2;
        x.entry(a).online = 1;
        let mut y = ByServer::default();
        y.entry(a).connects = 3;
        y.entry(b).connect_failures = 1;
        x.merge(&y);
        assert_eq!(x.0[&a].connects, 5);
        assert_eq!(x.0[&b].connect_failures, 1);
        assert_eq!(
            x.status(),
            " servers(connects/online[/errors]) 127.0.0.1:1=5/1 127.0.0.1:2=0/0/1"
        );
        assert_eq!(x.by_name()["127.0.0.1:2"].connect_failures, 1);
        let mut one = ByServer::default();
        one.entry(a).connects = 1;
        assert_eq!(one.status(), "");
    }

    #[test]
    fn labels_are_bounded_and_stable() {
        let addr = |i: usize| SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
        let mut labels = Labels::default();
        let mut by = ByServer::default();
        // High ports first: later, lower addresses must not take their labels.
        for i in (MAX_LABELLED..MAX_LABELLED + 5).rev() {
            by.entry(addr(i)).connects = 1;
        }
        assert_eq!(labels.series(&by).len(), 5);
        for i in 0..MAX_LABELLED {
            by.entry(addr(i)).connects = 2;
        }
        let s = labels.series(&by);
        assert_eq!(s.len(), MAX_LABELLED + 1, "bounded, plus other");
        let (last, other) = &s[MAX_LABELLED];
        assert_eq!(last, OTHER);
        assert_eq!((other.connects, s[0].1.connects), (2 * 5, 1));
        assert_eq!(
            s[0].0,
            addr(MAX_LABELLED).to_string(),
            "first seen keeps its label"
        );
        // A labelled server that is gone from the figures keeps its (zero) series.
        by.0.remove(&addr(MAX_LABELLED));
        assert_eq!(labels.series(&by)[0].1, ServerFigures::default());
    }
}
