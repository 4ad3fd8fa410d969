//! The ramp: which devices start when. `rate` is the arrival rate of new sessions; with no
//! rate, a bounded number start per turn so the shard keeps serving the sessions already up
//! while a large fleet starts.

use crate::device::Tick;

/// Devices started per turn at most when the ramp has no rate.
pub(super) const MAX_STARTS_PER_TURN: u32 = 512;

#[derive(Debug)]
pub(super) struct Ramp {
    /// Devices started so far (slots `0..started`).
    started: u32,
    total: u32,
    /// New sessions per second; 0 = as fast as the turn bound allows.
    rate: f64,
    stopped: bool,
}

impl Ramp {
    pub(super) fn new(total: u32, rate: f64) -> Self {
        Ramp {
            started: 0,
            total,
            rate: rate.max(0.0),
            stopped: false,
        }
    }

    /// The slots to start at `now` (ms since the shard started).
    pub(super) fn due(&mut self, now: Tick) -> std::ops::Range<u32> {
        if self.stopped {
            return self.started..self.started;
        }
        let due = if self.rate <= 0.0 {
            self.total.min(self.started + MAX_STARTS_PER_TURN)
        } else {
            // The epsilon keeps `due` and `next_start` in step: at the ms `next_start` names,
            // float rounding must not leave the device one short (the loop would wake at
            // that ms forever).
            let due = (now.0 as f64 * self.rate / 1000.0 + 1e-6) as u64;
            u32::try_from(due).unwrap_or(u32::MAX).min(self.total)
        };
        let from = self.started;
        self.started = self.started.max(due);
        from..self.started
    }

    /// When the next device starts, if any are left.
    pub(super) fn next_start(&self, now: Tick) -> Option<Tick> {
        if self.stopped || self.started >= self.total {
            return None;
        }
        if self.rate <= 0.0 {
            return Some(now);
        }
        // The first whole millisecond at which `due` covers one more device.
        let ms = (f64::from(self.started + 1) * 1000.0 / self.rate - 1e-6).ceil() as u64;
        Some(Tick(ms.max(now.0)))
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
        let mut r = Ramp::new(10, 100.0);
        assert_eq!(r.due(Tick(0)), 0..0);
        assert_eq!(r.next_start(Tick(0)), Some(Tick(10)));
        assert_eq!(r.due(Tick(9)), 0..0);
        assert_eq!(r.due(Tick(10)), 0..1);
        assert_eq!(r.due(Tick(55)), 1..5);
        assert_eq!(r.due(Tick(10_000)), 5..10);
        assert_eq!(r.next_start(Tick(10_000)), None);
    }

    #[test]
    fn every_start_time_it_names_starts_a_device() {
        for rate in [200.0, 333.0, 1_000.0, 7.0, 2_000.0 / 3.0] {
            let mut r = Ramp::new(500, rate);
            while let Some(t) = r.next_start(Tick(0)) {
                assert!(!r.due(t).is_empty(), "rate {rate}: nothing due at {t:?}");
            }
        }
    }

    #[test]
    fn no_rate_starts_a_bounded_number_per_turn() {
        let mut r = Ramp::new(1_000, 0.0);
        assert_eq!(r.due(Tick(0)), 0..MAX_STARTS_PER_TURN);
        assert_eq!(r.next_start(Tick(3)), Some(Tick(3)));
        assert_eq!(r.due(Tick(0)), MAX_STARTS_PER_TURN..1_000);
        r.stop();
        assert_eq!(r.next_start(Tick(3)), None);
    }
}
