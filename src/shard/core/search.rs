//! `--rate auto`: the capacity search, AIMD on the arrival rate of new sessions, judged per
//! epoch (about a second of simulated or real time).
//!
//! - An epoch is **bad** when a request timed out or a connect failed, when more than 5% of
//!   its starts waited for the admission window (the window holds `max_pending` requests at
//!   the server: more rate only adds waiting), or when the handshake or fast-connect p99 of
//!   the sessions completed in it is over the target.
//! - **Good**: the rate doubles while no epoch was bad yet (slow start, so a fast server is
//!   found in a few seconds), then grows by 5% of the capacity found per epoch.
//! - **Bad**: the rate drops to 70%. While the queue the overshoot built drains, later bad
//!   epochs cut again only if the p99 is still rising (or something timed out): a falling
//!   p99 means the server is catching up at this rate.
//!
//! A server at capacity completes sessions at its capacity whatever the offered rate, so the
//! **capacity found** is the completion rate of the last good epoch before each bad one (the
//! sawtooth's peaks), averaged over the last four; its p99 is the largest of those epochs'.
//! Until the server saturates, the figure is the best good epoch's, marked not saturated.

use hdrhistogram::Histogram;

use crate::device::Tick;
use crate::stages::{AutoConfig, Capacity, Found};
use crate::stats::{Latency, ShardStats};

/// Shortest epoch, ms.
const EPOCH_MS: u64 = 1_000;
/// An epoch is extended until it has this many completed sessions (or lasts `MAX_EPOCH_MS`).
const MIN_SAMPLES: u64 = 20;
const MAX_EPOCH_MS: u64 = 5_000;
/// A kind's p99 counts in a verdict only with this many samples in the epoch.
const MIN_KIND_SAMPLES: u64 = 5;
/// Multiplicative decrease.
const BETA: f64 = 0.7;
/// Additive increase per good epoch, as a share of the capacity found.
const STEP: f64 = 0.05;
/// Lowest rate, sessions/s of the shard.
const MIN_RATE: f64 = 1.0;
/// Peaks averaged into the capacity.
const PEAKS: usize = 4;

/// The running totals an epoch is measured from.
#[derive(Debug)]
struct Since {
    at: Tick,
    handshake: Histogram<u64>,
    fast_connect: Histogram<u64>,
    troubles: u64,
    started: u64,
    waited: u64,
}

impl Since {
    fn now(at: Tick, s: &ShardStats) -> Since {
        let c = &s.counters;
        Since {
            at,
            handshake: s.latencies.get(Latency::Handshake).clone(),
            fast_connect: s.latencies.get(Latency::FastConnect).clone(),
            troubles: c.request_timeouts + c.connect_failures,
            started: c.devices_started + c.reconnects,
            waited: s.latencies.get(Latency::WindowWait).len(),
        }
    }
}

/// One kind's part of an epoch: sessions completed per second and their p99, us.
#[derive(Clone, Copy, Debug, Default)]
struct Part {
    per_sec: f64,
    p99_us: u64,
    samples: u64,
}

/// The peaks of one kind.
#[derive(Debug, Default)]
struct Peaks {
    seen: Vec<Part>,
    /// The best good epoch until the first peak.
    floor: Option<Part>,
}

impl Peaks {
    fn push(&mut self, p: Part) {
        if self.seen.len() == PEAKS {
            self.seen.remove(0);
        }
        self.seen.push(p);
    }

    fn found(&self) -> Option<Found> {
        let ms = |us: u64| us as f64 / 1000.0;
        if self.seen.is_empty() {
            return self.floor.map(|p| Found {
                per_sec: p.per_sec,
                p99_ms: ms(p.p99_us),
                saturated: false,
            });
        }
        let n = self.seen.len() as f64;
        Some(Found {
            per_sec: self.seen.iter().map(|p| p.per_sec).sum::<f64>() / n,
            p99_ms: ms(self.seen.iter().map(|p| p.p99_us).max().unwrap_or(0)),
            saturated: true,
        })
    }
}

/// The search of one shard.
#[derive(Debug)]
pub(super) struct Search {
    target_us: u64,
    target_ms: f64,
    rate: f64,
    slow_start: bool,
    /// After a cut, until a good epoch: the p99 of the latest bad epoch.
    draining: Option<u64>,
    since: Since,
    /// The latest good epoch's parts (handshake, fast connect).
    last_good: Option<(Part, Part)>,
    handshake: Peaks,
    fast_connect: Peaks,
    /// Whether the slow start's peak is the only one (replaced by the first later one).
    slow_peak: bool,
}

impl Search {
    pub(super) fn new(now: Tick, cfg: AutoConfig, stats: &ShardStats) -> Search {
        Search {
            target_us: (cfg.p99_target_ms * 1000.0) as u64,
            target_ms: cfg.p99_target_ms,
            rate: cfg.start_per_sec.max(MIN_RATE),
            slow_start: true,
            draining: None,
            since: Since::now(now, stats),
            last_good: None,
            handshake: Peaks::default(),
            fast_connect: Peaks::default(),
            slow_peak: false,
        }
    }

    /// The rate to start sessions at now, per second.
    pub(super) fn rate(&self) -> f64 {
        self.rate
    }

    /// When the epoch may end: after `EPOCH_MS`, then (waiting for samples, which come
    /// with input) at `MAX_EPOCH_MS`.
    pub(super) fn next(&self, now: Tick) -> Tick {
        let first = self.since.at.after(EPOCH_MS);
        if now < first {
            first
        } else {
            self.since.at.after(MAX_EPOCH_MS).max(now)
        }
    }

    /// What it found so far.
    pub(super) fn capacity(&self) -> Capacity {
        Capacity {
            p99_target_ms: self.target_ms,
            handshake: self.handshake.found(),
            fast_connect: self.fast_connect.found(),
            rate_now: self.rate,
        }
    }

    /// Ends the epoch if it is due; returns the new rate when it changed.
    pub(super) fn tick(&mut self, now: Tick, stats: &ShardStats) -> Option<f64> {
        let ms = now.since(self.since.at);
        let c = &stats.counters;
        let troubles = c.request_timeouts + c.connect_failures - self.since.troubles;
        let hs = part(
            stats.latencies.get(Latency::Handshake),
            &self.since.handshake,
            ms,
        );
        let fc = part(
            stats.latencies.get(Latency::FastConnect),
            &self.since.fast_connect,
            ms,
        );
        let samples = hs.samples + fc.samples;
        if ms < EPOCH_MS || (samples < MIN_SAMPLES && ms < MAX_EPOCH_MS && troubles == 0) {
            return None;
        }
        let started = (c.devices_started + c.reconnects).saturating_sub(self.since.started);
        let waited = stats.latencies.get(Latency::WindowWait).len() - self.since.waited;
        let over = |p: &Part| p.samples >= MIN_KIND_SAMPLES && p.p99_us > self.target_us;
        let bad = troubles > 0 || waited * 20 > started.max(1) || over(&hs) || over(&fc);
        let p99 = hs.p99_us.max(fc.p99_us);
        let before = self.rate;
        if bad {
            match self.draining {
                None => {
                    self.peak();
                    self.slow_start = false;
                    self.rate *= BETA;
                }
                Some(last) if troubles > 0 || p99 >= last => self.rate *= BETA,
                Some(_) => {}
            }
            self.draining = Some(p99);
        } else {
            self.draining = None;
            self.last_good = Some((hs, fc));
            for (peaks, p) in [(&mut self.handshake, hs), (&mut self.fast_connect, fc)] {
                if p.samples > 0 && peaks.floor.map_or(true, |f| p.per_sec > f.per_sec) {
                    peaks.floor = Some(p);
                }
            }
            let secs = ms as f64 / 1000.0;
            // Only a rate the ramp could offer is evidence for a higher one.
            if started as f64 >= 0.5 * self.rate * secs {
                if self.slow_start {
                    self.rate *= 2.0;
                } else {
                    let found = self.capacity();
                    let cap = [found.handshake, found.fast_connect]
                        .iter()
                        .flatten()
                        .map(|f| f.per_sec)
                        .fold(0.0, f64::max);
                    self.rate += (STEP * cap.max(self.rate)).max(MIN_RATE / 2.0);
                }
            }
        }
        self.rate = self.rate.max(MIN_RATE);
        self.since = Since::now(now, stats);
        (self.rate != before).then_some(self.rate)
    }

    /// The last good epoch before a bad one is a peak, of the kind that dominated it.
    fn peak(&mut self) {
        let Some((hs, fc)) = self.last_good.take() else {
            return;
        };
        if self.slow_peak {
            // The slow start's peak was a rate doubling short of the capacity: the first
            // peak found by additive increase replaces it.
            self.handshake.seen.clear();
            self.fast_connect.seen.clear();
            self.slow_peak = false;
        }
        let (peaks, p) = if hs.samples >= fc.samples {
            (&mut self.handshake, hs)
        } else {
            (&mut self.fast_connect, fc)
        };
        peaks.push(p);
        self.slow_peak = self.slow_start;
    }
}

/// One kind's completions since `then`, over `ms`.
fn part(now: &Histogram<u64>, then: &Histogram<u64>, ms: u64) -> Part {
    let samples = now.len() - then.len();
    if samples == 0 {
        return Part::default();
    }
    let mut d = now.clone();
    // `then` is an earlier state of `now`: the subtraction cannot underflow.
    let _ = d.subtract(then);
    Part {
        per_sec: samples as f64 * 1000.0 / ms.max(1) as f64,
        p99_us: d.value_at_quantile(0.99),
        samples,
    }
}
