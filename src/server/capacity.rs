//! The capacity model: a token bucket in front of the expensive steps (the handshake's RSA
//! decryption, the fast connect's session lookup), so a test or bench can reproduce a
//! CPU-bound server on loopback. A request over the limit is never refused: it is given a
//! later time to run, as a saturated server answers late.
//!
//! Sans-IO and clock-free: the caller passes monotonic ms and sleeps until the answer, so the
//! shell (`conn.rs`) and the simulator (`crate::sim`) share the same arithmetic.

use serde::{Deserialize, Serialize};

/// A rate limit whose requests wait in order instead of being refused.
///
/// The arithmetic is GCRA (the virtual-scheduling form of a token bucket): `tat`, the
/// theoretical arrival time, moves one emission interval `T = 1000 / rate` ms per request;
/// a request may run once `tat - (burst - 1) * T` has passed. Queued requests push `tat`
/// further, so a backlog is paid for in arrival order.
#[derive(Clone, Debug)]
pub struct Bucket {
    /// Requests per second; 0 = unlimited.
    rate: f64,
    /// Requests that may run at once when the bucket is full (at least 1).
    burst: u32,
    /// GCRA's theoretical arrival time, ms (fractional: 1000 / rate is rarely whole).
    tat: f64,
    /// The latest time handed out: no later reservation gets an earlier one, even if its
    /// caller read the clock a little before the previous caller did.
    last: u64,
}

impl Bucket {
    /// `rate_per_sec` 0 = unlimited; `burst` tokens may be used at once. A rate that is not
    /// a finite positive number means unlimited; a burst of 0 is taken as 1.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        Bucket {
            rate: sanitize(rate_per_sec),
            burst: burst.max(1),
            tat: 0.0,
            last: 0,
        }
    }

    /// Changes the rate for every later reservation; times already handed out stand (the
    /// requests waiting on them were admitted under the old rate). Same rules as [`new`].
    ///
    /// [`new`]: Bucket::new
    pub fn set_rate(&mut self, rate_per_sec: f64) {
        self.rate = sanitize(rate_per_sec);
    }

    /// Requests per second now in force; 0 = unlimited.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Tokens that may be used at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Reserves one request arriving at `now_ms` (monotonic ms); returns the ms at which it
    /// may run: `now_ms` when a token is free, later otherwise. Reservations queue in FIFO
    /// order (a later call never gets an earlier time than an earlier call), so over any
    /// long interval at most rate*interval + burst requests run.
    pub fn reserve(&mut self, now_ms: u64) -> u64 {
        let now = now_ms.max(self.last);
        if self.rate == 0.0 {
            // Unlimited, but still FIFO: a request arriving just after the limit was lifted
            // does not overtake the backlog admitted under it.
            self.last = now;
            return now;
        }
        let interval = 1000.0 / self.rate;
        let tolerance = f64::from(self.burst - 1) * interval;
        // f64 holds ms exactly up to 2^53, far past any u64 ms a monotonic clock reaches.
        let start = (now as f64).max(self.tat - tolerance);
        self.tat = self.tat.max(start) + interval;
        // Rounded up, so the rate is never exceeded; `as` saturates, so no overflow either.
        let at = (start.ceil() as u64).max(now);
        self.last = at;
        at
    }
}

fn sanitize(rate: f64) -> f64 {
    if rate.is_finite() && rate > 0.0 {
        rate
    } else {
        0.0
    }
}

/// The limits in force, as `GET /stats` (`capacity`), `GET /capacity` and `POST /capacity`
/// show them and as [`ServerConfig`](super::ServerConfig) sets them at start.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapacityLimits {
    /// Handshakes (RSA decryptions) per second; 0 = unlimited.
    pub handshakes_per_sec: f64,
    /// Fast connects (session lookups) per second; 0 = unlimited.
    pub fast_connects_per_sec: f64,
    /// Requests of each kind that may run at once; fixed at start.
    pub burst: u32,
}

/// The default burst: 1. A CPU-bound server at R requests/s answers k simultaneous requests
/// 1/R apart; a burst of 1 gives exactly that spacing (shifted by one service time), while a
/// larger burst would let that many through at once, which no single-queue server does.
pub const DEFAULT_BURST: u32 = 1;

impl Default for CapacityLimits {
    /// Unlimited, burst [`DEFAULT_BURST`].
    fn default() -> Self {
        CapacityLimits {
            handshakes_per_sec: 0.0,
            fast_connects_per_sec: 0.0,
            burst: DEFAULT_BURST,
        }
    }
}

/// A live change of the limits (`POST /capacity`'s body); a `None` rate stays as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityChange {
    /// New handshakes per second; 0 = unlimited.
    pub handshakes_per_sec: Option<f64>,
    /// New fast connects per second; 0 = unlimited.
    pub fast_connects_per_sec: Option<f64>,
}

impl CapacityChange {
    /// Checks that each given rate is a finite number >= 0.
    ///
    /// # Errors
    ///
    /// The reason, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let fields = [
            ("handshakes_per_sec", self.handshakes_per_sec),
            ("fast_connects_per_sec", self.fast_connects_per_sec),
        ];
        for (name, rate) in fields {
            if let Some(r) = rate.filter(|r| !(r.is_finite() && *r >= 0.0)) {
                return Err(format!("{name} must be a finite number >= 0, not {r}"));
            }
        }
        Ok(())
    }
}

/// The server's two buckets.
#[derive(Clone, Debug)]
pub struct Capacity {
    /// In front of the handshake's RSA decryption.
    pub handshakes: Bucket,
    /// In front of the fast connect's session lookup.
    pub fast_connects: Bucket,
}

impl Capacity {
    /// Both buckets, full.
    pub fn new(limits: CapacityLimits) -> Self {
        Capacity {
            handshakes: Bucket::new(limits.handshakes_per_sec, limits.burst),
            fast_connects: Bucket::new(limits.fast_connects_per_sec, limits.burst),
        }
    }

    /// Applies a change; returns the limits now in force.
    pub fn apply(&mut self, change: CapacityChange) -> CapacityLimits {
        if let Some(r) = change.handshakes_per_sec {
            self.handshakes.set_rate(r);
        }
        if let Some(r) = change.fast_connects_per_sec {
            self.fast_connects.set_rate(r);
        }
        self.limits()
    }

    /// The limits now in force.
    pub fn limits(&self) -> CapacityLimits {
        CapacityLimits {
            handshakes_per_sec: self.handshakes.rate(),
            fast_connects_per_sec: self.fast_connects.rate(),
            burst: self.handshakes.burst(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reserves one request per arrival time; returns the run times.
    fn run(bucket: &mut Bucket, arrivals: impl IntoIterator<Item = u64>) -> Vec<u64> {
        arrivals.into_iter().map(|t| bucket.reserve(t)).collect()
    }

    fn assert_fifo(times: &[u64]) {
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "FIFO: {times:?}");
    }

    #[test]
    fn unlimited_never_delays() {
        let mut b = Bucket::new(0.0, 1);
        let arrivals: Vec<u64> = (0..10_000).map(|i| i / 7).collect();
        assert_eq!(run(&mut b, arrivals.clone()), arrivals);
        for bad in [f64::NAN, f64::INFINITY, -3.0] {
            let mut b = Bucket::new(bad, 1);
            assert_eq!(b.rate(), 0.0);
            assert_eq!(run(&mut b, [5, 5, 5]), [5, 5, 5]);
        }
    }

    #[test]
    fn ten_times_the_rate_for_ten_seconds() {
        for (rate, burst) in [(5u64, 1u32), (5, 3), (4, 1), (20, 2), (100, 5)] {
            let mut b = Bucket::new(rate as f64, burst);
            let step = 100 / rate; // 10 * rate arrivals per second
            let arrivals: Vec<u64> = (0..100 * rate).map(|k| k * step).collect();
            let times = run(&mut b, arrivals.clone());
            assert_fifo(&times);
            let by_10s = times.iter().filter(|&&t| t <= 10_000).count() as u64;
            assert_eq!(
                by_10s,
                rate * 10 + u64::from(burst),
                "rate {rate} burst {burst}"
            );
            // The first `burst` run at once; after that, one every 1000 / rate ms.
            let interval = 1000 / rate;
            let b_ = burst as usize;
            assert!(times[..b_].iter().zip(&arrivals).all(|(t, a)| t == a));
            assert_eq!(times[b_], interval);
            for w in times[b_..].windows(2) {
                assert_eq!(w[1] - w[0], interval, "rate {rate} burst {burst}");
            }
            assert!(times.iter().zip(&arrivals).all(|(t, a)| t >= a));
        }
    }

    #[test]
    fn never_more_than_rate_times_window_plus_burst() {
        // Irregular arrivals and a rate whose interval is not whole (333.3 ms).
        let mut b = Bucket::new(3.0, 2);
        let mut t = 0;
        let arrivals: Vec<u64> = (0..2_000u64)
            .map(|k| {
                t += (k * 7919) % 250;
                t
            })
            .collect();
        let times = run(&mut b, arrivals);
        assert_fifo(&times);
        for (i, &start) in times.iter().enumerate() {
            for len in [0u64, 1, 333, 334, 1_000, 10_000] {
                let n = times[i..].iter().take_while(|&&t| t <= start + len).count() as u64;
                // 3 per second: at most floor(len * 3 / 1000) + burst; +1 for the whole-ms
                // rounding of a 333.33 ms interval.
                assert!(n <= len * 3 / 1000 + 2 + 1, "{n} in {len} ms from {start}");
            }
        }
        let span = times.last().unwrap() - times[0];
        assert!(times.len() as u64 <= span * 3 / 1000 + 2 + 1);
    }

    #[test]
    fn set_rate_applies_to_the_next_reservation() {
        let mut b = Bucket::new(10.0, 1);
        assert_eq!(run(&mut b, [0, 0, 0]), [0, 100, 200]);
        b.set_rate(2.0);
        assert_eq!(b.rate(), 2.0);
        // The backlog ends at 300 (the old interval after 200); then 500 ms apart.
        assert_eq!(run(&mut b, [0, 0]), [300, 800]);
        b.set_rate(1000.0);
        assert_eq!(run(&mut b, [0, 0]), [1300, 1301]);
    }

    #[test]
    fn from_unlimited_to_a_rate_and_back() {
        let mut b = Bucket::new(0.0, 1);
        assert_eq!(run(&mut b, [10, 10, 10]), [10, 10, 10]);
        b.set_rate(4.0);
        // A full bucket: the first runs at once, the rest 250 ms apart.
        assert_eq!(run(&mut b, [20, 20, 20]), [20, 270, 520]);
        b.set_rate(0.0);
        // Lifted: nothing new waits, but nothing overtakes the backlog either (FIFO).
        assert_eq!(run(&mut b, [30, 600, 600]), [520, 600, 600]);
        b.set_rate(4.0);
        // Long idle: the bucket refilled.
        assert_eq!(run(&mut b, [5_000, 5_000]), [5_000, 5_250]);
    }

    #[test]
    fn times_past_u32_ms() {
        let base = u64::from(u32::MAX) + 12_345;
        let mut b = Bucket::new(5.0, 2);
        let times = run(&mut b, (0..6).map(|_| base));
        assert_eq!(
            times,
            [base, base, base + 200, base + 400, base + 600, base + 800]
        );
        let far = u64::MAX - 10;
        let mut b = Bucket::new(0.001, 1);
        let times = run(&mut b, [far, far, far]);
        assert_fifo(&times);
        // Past 2^53 ms f64 rounds (to 2^64 here): the time saturates, it never wraps.
        assert!(times[0] >= far);
        assert_eq!(times[2], u64::MAX);
    }

    #[test]
    fn a_clock_read_out_of_order_still_queues_in_order() {
        let mut b = Bucket::new(10.0, 1);
        assert_eq!(run(&mut b, [1_000, 990, 995]), [1_000, 1_100, 1_200]);
    }

    #[test]
    fn capacity_applies_a_change_and_validates() {
        let mut c = Capacity::new(CapacityLimits {
            handshakes_per_sec: 5.0,
            ..CapacityLimits::default()
        });
        let l = c.apply(CapacityChange {
            fast_connects_per_sec: Some(7.0),
            ..CapacityChange::default()
        });
        assert_eq!(
            (l.handshakes_per_sec, l.fast_connects_per_sec, l.burst),
            (5.0, 7.0, 1)
        );
        let bad = CapacityChange {
            handshakes_per_sec: Some(-1.0),
            ..CapacityChange::default()
        };
        assert!(bad.validate().unwrap_err().contains("handshakes_per_sec"));
        assert!(CapacityChange::default().validate().is_ok());
    }
}
