//! The ramp: which devices start when. `rate` is the arrival rate of new sessions; with no
//! rate, a bounded number start per turn so the shard keeps serving the sessions already up
//! while a large fleet starts.

use crate::device::Tick;

/// Devices started per turn at most when the ramp has no rate.
pub(super) const MAX_STARTS_PER_TURN: u32 = 512;

/// A ramp with a rate moves devices on this grid of milliseconds from its origin: each at
/// its own time or up to 7 ms later, never earlier. At 1,000 new sessions a second over two
/// shards, starts 2 ms apart woke a shard for every round trip of every device; four at
/// once share their wake-ups, which cut the fleet's CPU per handshake by more than half
/// (BENCHMARKS.md). The rate over any whole grid step is exact.
pub(super) const RAMP_GRID_MS: u64 = 8;

#[derive(Debug)]
pub(super) struct Ramp {
    /// Devices running (slots `0..active`): started and not stopped by a ramp down.
    active: u32,
    /// Where the ramp goes: it starts devices up to it, or stops them down to it.
    target: u32,
    /// Devices started or stopped per second; 0 = as fast as the turn bound allows.
    rate: f64,
    /// When the current rate began, and how many moves were made since.
    origin: Tick,
    moved: u64,
    stopped: bool,
}

/// What the ramp does this turn.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Move {
    /// Start these slots.
    Start(std::ops::Range<u32>),
    /// Stop these slots.
    Stop(std::ops::Range<u32>),
}

impl Ramp {
    pub(super) fn new(total: u32, rate: f64) -> Self {
        Ramp {
            active: 0,
            target: total,
            rate: rate.max(0.0),
            origin: Tick(0),
            moved: 0,
            stopped: false,
        }
    }

    /// Heads for `target` devices from `now` at `rate` per second.
    pub(super) fn set(&mut self, now: Tick, target: u32, rate: f64) {
        self.target = target;
        self.set_rate(now, rate);
    }

    /// Changes the rate from `now` on (the capacity search).
    pub(super) fn set_rate(&mut self, now: Tick, rate: f64) {
        self.rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        self.origin = now;
        self.moved = 0;
    }

    /// Devices running.
    pub(super) fn active(&self) -> u32 {
        self.active
    }

    /// Whether the ramp has reached its target.
    pub(super) fn arrived(&self) -> bool {
        self.active == self.target
    }

    /// The slots to start (or stop) at `now`.
    pub(super) fn due(&mut self, now: Tick) -> Move {
        let gap = self.active.abs_diff(self.target);
        if self.stopped || gap == 0 {
            return Move::Start(self.active..self.active);
        }
        let n = if self.rate <= 0.0 {
            gap.min(MAX_STARTS_PER_TURN)
        } else {
            // The epsilon keeps `due` and `next_start` in step: at the ms `next_start` names,
            // float rounding must not leave the device one short (the loop would wake at
            // that ms forever).
            let ms = (now.since(self.origin) / RAMP_GRID_MS * RAMP_GRID_MS) as f64;
            let due = (ms * self.rate / 1000.0 + 1e-6) as u64;
            u32::try_from(due.saturating_sub(self.moved))
                .unwrap_or(u32::MAX)
                .min(gap)
        };
        self.moved += u64::from(n);
        let from = self.active;
        if self.active < self.target {
            self.active += n;
            Move::Start(from..self.active)
        } else {
            self.active -= n;
            Move::Stop(self.active..from)
        }
    }

    /// When the next device starts (or stops), if any are left.
    pub(super) fn next_start(&self, now: Tick) -> Option<Tick> {
        if self.stopped || self.arrived() {
            return None;
        }
        if self.rate <= 0.0 {
            return Some(now);
        }
        // The first grid millisecond at which `due` covers one more device.
        let ms = ((self.moved + 1) as f64 * 1000.0 / self.rate - 1e-6).ceil() as u64;
        let ms = ms.div_ceil(RAMP_GRID_MS) * RAMP_GRID_MS;
        Some(Tick(self.origin.0.saturating_add(ms).max(now.0)))
    }

    pub(super) fn stop(&mut self) {
        self.stopped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_starts_devices_on_schedule_and_never_early() {
        // Devices due at 10, 20, 30 ... ms; the grid moves them at 16, 24, 32, 40, 48 ...
        let mut r = Ramp::new(10, 100.0);
        assert_eq!(r.due(Tick(0)), Move::Start(0..0));
        assert_eq!(r.next_start(Tick(0)), Some(Tick(16)));
        assert_eq!(
            r.due(Tick(15)),
            Move::Start(0..0),
            "never early, never off the grid"
        );
        assert_eq!(r.due(Tick(16)), Move::Start(0..1));
        assert_eq!(r.next_start(Tick(16)), Some(Tick(24)));
        assert_eq!(r.due(Tick(55)), Move::Start(1..4));
        assert_eq!(r.due(Tick(56)), Move::Start(4..5));
        assert_eq!(r.due(Tick(10_000)), Move::Start(5..10));
        assert_eq!(r.next_start(Tick(10_000)), None);
    }

    #[test]
    fn every_start_time_it_names_starts_a_device() {
        for rate in [200.0, 333.0, 1_000.0, 7.0, 2_000.0 / 3.0] {
            let mut r = Ramp::new(500, rate);
            while let Some(t) = r.next_start(Tick(0)) {
                assert_ne!(
                    r.due(t),
                    Move::Start(0..0),
                    "rate {rate}: nothing due at {t:?}"
                );
            }
        }
    }

    #[test]
    fn no_rate_starts_a_bounded_number_per_turn() {
        let mut r = Ramp::new(1_000, 0.0);
        assert_eq!(r.due(Tick(0)), Move::Start(0..MAX_STARTS_PER_TURN));
        assert_eq!(r.next_start(Tick(3)), Some(Tick(3)));
        assert_eq!(r.due(Tick(0)), Move::Start(MAX_STARTS_PER_TURN..1_000));
        r.stop();
        assert_eq!(r.next_start(Tick(3)), None);
    }

    #[test]
    fn a_new_target_below_the_running_devices_stops_from_the_top_at_the_rate() {
        let mut r = Ramp::new(10, 0.0);
        assert_eq!(r.due(Tick(0)), Move::Start(0..10));
        r.set(Tick(1_000), 4, 2.0);
        assert_eq!(r.next_start(Tick(1_000)), Some(Tick(1_504)));
        assert_eq!(r.due(Tick(1_503)), Move::Stop(10..10));
        assert_eq!(r.due(Tick(2_000)), Move::Stop(8..10));
        assert_eq!(r.due(Tick(9_000)), Move::Stop(4..8));
        assert!(r.arrived());
        assert_eq!(r.active(), 4);
        r.set_rate(Tick(9_000), 1.0);
        r.set(Tick(9_000), 6, 1.0);
        assert_eq!(r.due(Tick(10_000)), Move::Start(4..5));
    }
}
