//! What each phase measured and what the capacity search found, per shard; merged across
//! shards as the rest of [`ShardStats`](crate::stats::ShardStats) is (counts add,
//! histograms add exactly, a phase lasts as long as its slowest shard).

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::stats::{Counters, Latencies, Latency};

/// The counters a phase reports, as differences over the phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PhaseCounts {
    /// TCP connects attempted.
    pub connects: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Fast connects completed.
    pub fast_connects: u64,
    /// Fast connects refused (each followed by a handshake).
    pub fast_connect_rejected: u64,
    /// TCP connects that failed or timed out.
    pub failures: u64,
    /// Requests (handshake, fast connect, bind) that timed out.
    pub timeouts: u64,
    /// Reconnects scheduled.
    pub reconnects: u64,
    /// ERROR replies, all codes.
    pub errors: u64,
    /// Reconnects held back by the retry budget.
    pub retries_throttled: u64,
}

impl PhaseCounts {
    /// The running totals of `c`.
    pub fn of(c: &Counters) -> Self {
        PhaseCounts {
            connects: c.connects,
            handshakes: c.handshakes,
            fast_connects: c.fast_connects,
            fast_connect_rejected: c.fast_connect_rejected,
            failures: c.connect_failures,
            timeouts: c.request_timeouts,
            reconnects: c.reconnects,
            errors: c.errors.values().sum(),
            retries_throttled: c.retries_throttled,
        }
    }

    fn minus(self, o: Self) -> Self {
        PhaseCounts {
            connects: self.connects - o.connects,
            handshakes: self.handshakes - o.handshakes,
            fast_connects: self.fast_connects - o.fast_connects,
            fast_connect_rejected: self.fast_connect_rejected - o.fast_connect_rejected,
            failures: self.failures - o.failures,
            timeouts: self.timeouts - o.timeouts,
            reconnects: self.reconnects - o.reconnects,
            errors: self.errors - o.errors,
            retries_throttled: self.retries_throttled - o.retries_throttled,
        }
    }

    fn add(&mut self, o: &Self) {
        self.connects += o.connects;
        self.handshakes += o.handshakes;
        self.fast_connects += o.fast_connects;
        self.fast_connect_rejected += o.fast_connect_rejected;
        self.failures += o.failures;
        self.timeouts += o.timeouts;
        self.reconnects += o.reconnects;
        self.errors += o.errors;
        self.retries_throttled += o.retries_throttled;
    }

    /// A figure by its `--fail-on` name.
    pub fn get(&self, name: &str) -> Option<u64> {
        Some(match name {
            "connects" => self.connects,
            "handshakes" => self.handshakes,
            "fast_connects" => self.fast_connects,
            "fast_connect_rejected" => self.fast_connect_rejected,
            "failures" => self.failures,
            "timeouts" => self.timeouts,
            "reconnects" => self.reconnects,
            "errors" => self.errors,
            "retries_throttled" => self.retries_throttled,
            _ => return None,
        })
    }

    /// Every figure name [`get`](Self::get) knows, plus `online` (at the phase's end).
    pub const NAMES: &'static [&'static str] = &[
        "connects",
        "handshakes",
        "fast_connects",
        "fast_connect_rejected",
        "failures",
        "timeouts",
        "reconnects",
        "errors",
        "retries_throttled",
        "online",
    ];
}

/// Where a phase is taken from when it begins: the running totals at that moment.
#[derive(Clone, Debug)]
pub struct Mark {
    counts: PhaseCounts,
    handshake: Histogram<u64>,
    fast_connect: Histogram<u64>,
}

impl Mark {
    /// The totals now.
    pub fn now(c: &Counters, l: &Latencies) -> Mark {
        Mark {
            counts: PhaseCounts::of(c),
            handshake: l.get(Latency::Handshake).clone(),
            fast_connect: l.get(Latency::FastConnect).clone(),
        }
    }
}

/// One phase's figures (of a shard, or merged, of the fleet).
#[derive(Clone, Debug)]
pub struct PhaseStats {
    /// The phase's name.
    pub name: String,
    /// Its spec (`hold:60s`).
    pub spec: String,
    /// Whether it began.
    pub ran: bool,
    /// Whether it ended by its own rule (not cut short by the stop).
    pub completed: bool,
    /// How long it ran, ms (merged: the slowest shard's).
    pub duration_ms: u64,
    /// Its counts.
    pub counts: PhaseCounts,
    /// Devices online when it ended (or now, while it runs).
    pub online_at_end: i64,
    /// Handshake latency over the phase, us.
    pub handshake: Histogram<u64>,
    /// Fast-connect latency over the phase, us.
    pub fast_connect: Histogram<u64>,
}

impl PhaseStats {
    /// A phase not begun yet.
    pub fn new(name: &str, spec: &str) -> Self {
        let empty = Latencies::default();
        PhaseStats {
            name: name.to_string(),
            spec: spec.to_string(),
            ran: false,
            completed: false,
            duration_ms: 0,
            counts: PhaseCounts::default(),
            online_at_end: 0,
            handshake: empty.get(Latency::Handshake).clone(),
            fast_connect: empty.get(Latency::FastConnect).clone(),
        }
    }

    /// The figures since `from`, as of `c` and `l`, after `ms` of the phase.
    pub fn update(&mut self, from: &Mark, c: &Counters, l: &Latencies, ms: u64) {
        self.ran = true;
        self.duration_ms = ms;
        self.counts = PhaseCounts::of(c).minus(from.counts);
        self.online_at_end = c.online;
        for (mine, now, then) in [
            (
                &mut self.handshake,
                l.get(Latency::Handshake),
                &from.handshake,
            ),
            (
                &mut self.fast_connect,
                l.get(Latency::FastConnect),
                &from.fast_connect,
            ),
        ] {
            mine.reset();
            // Same bounds, and `then` is an earlier state of `now`: neither can fail.
            let _ = mine.add(now);
            let _ = mine.subtract(then);
        }
    }

    fn merge(&mut self, o: &PhaseStats) {
        self.ran |= o.ran;
        self.completed &= o.completed;
        self.duration_ms = self.duration_ms.max(o.duration_ms);
        self.counts.add(&o.counts);
        self.online_at_end += o.online_at_end;
        let _ = self.handshake.add(&o.handshake);
        let _ = self.fast_connect.add(&o.fast_connect);
    }
}

/// The capacity the search found for one kind of session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Found {
    /// Sessions per second the server sustained (merged: the shards' sum).
    pub per_sec: f64,
    /// p99 latency at that rate, ms (merged: the largest).
    pub p99_ms: f64,
    /// Whether the server saturated (latency over the target, a timeout, or a full
    /// window): `false` means the fleet ran out of devices first, so the figure is a floor.
    pub saturated: bool,
}

impl Found {
    fn merge(a: Option<Found>, b: Option<Found>) -> Option<Found> {
        match (a, b) {
            (Some(a), Some(b)) => Some(Found {
                per_sec: a.per_sec + b.per_sec,
                p99_ms: a.p99_ms.max(b.p99_ms),
                saturated: a.saturated && b.saturated,
            }),
            (a, b) => a.or(b).map(|f| Found {
                saturated: false,
                ..f
            }),
        }
    }
}

/// What `--rate auto` found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Capacity {
    /// The p99 target the search kept to, ms.
    pub p99_target_ms: f64,
    /// For handshakes.
    pub handshake: Option<Found>,
    /// For fast connects.
    pub fast_connect: Option<Found>,
    /// The search's arrival rate now, sessions/s (merged: the sum); 0 once it ended.
    pub rate_now: f64,
}

/// A shard's stages: every phase's figures, the current phase and the capacity found.
#[derive(Clone, Debug, Default)]
pub struct StageStats {
    /// One entry per phase of the plan, in order.
    pub phases: Vec<PhaseStats>,
    /// The running phase; `phases.len()` once all are done (merged: the earliest shard's).
    pub current: usize,
    /// The capacity search's findings, if it ran.
    pub capacity: Option<Capacity>,
}

impl StageStats {
    /// Adds another shard's stages into these.
    pub fn merge(&mut self, o: &StageStats) {
        if self.phases.is_empty() && self.capacity.is_none() {
            self.clone_from(o);
            return;
        }
        for (mine, theirs) in self.phases.iter_mut().zip(&o.phases) {
            mine.merge(theirs);
        }
        if !o.phases.is_empty() {
            self.current = self.current.min(o.current);
        }
        self.capacity = match (self.capacity, o.capacity) {
            (Some(a), Some(b)) => Some(Capacity {
                p99_target_ms: a.p99_target_ms,
                handshake: Found::merge(a.handshake, b.handshake),
                fast_connect: Found::merge(a.fast_connect, b.fast_connect),
                rate_now: a.rate_now + b.rate_now,
            }),
            (a, b) => a.or(b),
        };
    }

    /// The running phase's name, if a plan runs.
    pub fn current_name(&self) -> Option<&str> {
        self.phases.get(self.current).map(|p| p.name.as_str())
    }

    /// Whether every phase of a plan is done (false without a plan).
    pub fn done(&self) -> bool {
        !self.phases.is_empty() && self.current >= self.phases.len()
    }

    /// The phase named `name`.
    pub fn phase(&self, name: &str) -> Option<&PhaseStats> {
        self.phases.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_counts_only_what_happened_in_it_and_shards_merge() {
        let mut c = Counters::default();
        let mut l = Latencies::default();
        c.handshakes = 10;
        l.record(Latency::Handshake, 1_000);
        let mark = Mark::now(&c, &l);
        c.handshakes = 15;
        c.fast_connects = 4;
        c.online = 19;
        for us in [2_000, 3_000, 4_000, 5_000] {
            l.record(Latency::FastConnect, us);
        }
        l.record(Latency::Handshake, 9_000);
        let mut p = PhaseStats::new("storm", "storm");
        p.update(&mark, &c, &l, 1_500);
        assert_eq!((p.counts.handshakes, p.counts.fast_connects), (5, 4));
        assert_eq!((p.handshake.len(), p.fast_connect.len()), (1, 4));
        assert!(
            p.handshake.min() >= 8_990,
            "the earlier sample is not the phase's"
        );
        let mut a = StageStats {
            phases: vec![p.clone()],
            current: 1,
            capacity: None,
        };
        let mut q = p;
        q.duration_ms = 2_000;
        q.completed = true;
        a.merge(&StageStats {
            phases: vec![q],
            current: 0,
            capacity: None,
        });
        let m = &a.phases[0];
        assert_eq!(
            (m.counts.handshakes, m.duration_ms, m.online_at_end),
            (10, 2_000, 38)
        );
        assert_eq!(m.fast_connect.len(), 8);
        assert!(
            !m.completed,
            "a phase is complete when every shard completed it"
        );
        assert_eq!(a.current_name(), Some("storm"));
    }
}
