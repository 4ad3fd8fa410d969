//! The fleet's latency histograms, one per [`Latency`], in microseconds.
//!
//! A histogram over 1 us..1 h at three digits is about 190 KB. The shards used to send a
//! copy of all twelve with every report (five a second), and the control plane made a fresh
//! merge for every metrics snapshot: tens of megabytes a second copied into new pages, for a
//! fleet that was only ramping. Now:
//! - a histogram exists once its first sample does, so the kinds a run never measures cost
//!   nothing to make, clone or merge;
//! - histograms are shared copy-on-write, so a snapshot costs a reference count each;
//! - a shard keeps the samples it recorded since its last report ([`Latencies::keep_recent`])
//!   and sends those, not its histograms; the control plane records them into its own.

use std::sync::{Arc, OnceLock};

use hdrhistogram::Histogram;

use super::Latency;

/// Highest latency recorded without saturating: one hour in microseconds.
pub(super) const MAX_MICROS: u64 = 3_600_000_000;

/// One recorded latency, as a shard reports it (8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Which latency.
    pub which: Latency,
    /// Microseconds, already clamped into the histograms' range (which fits a `u32`).
    pub micros: u32,
}

/// One HDR histogram per [`Latency`], in microseconds.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    /// `None` until the first sample; shared with snapshots until written again.
    hists: [Option<Arc<Histogram<u64>>>; Latency::ALL.len()],
    /// The samples since the last [`Latencies::take_recent`], where they are kept.
    recent: Option<Vec<Sample>>,
}

/// A histogram with the fleet's bounds.
pub(super) fn new_histogram() -> Histogram<u64> {
    // 3 significant digits over 1 us..1 h: constants that hdrhistogram accepts, so this
    // cannot fail.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// What [`Latencies::get`] lends for a latency without samples.
fn empty() -> &'static Histogram<u64> {
    static EMPTY: OnceLock<Histogram<u64>> = OnceLock::new();
    EMPTY.get_or_init(new_histogram)
}

impl Latencies {
    /// Records one sample in microseconds (clamped into the histogram's range).
    pub fn record(&mut self, which: Latency, micros: u64) {
        let micros = micros.clamp(1, MAX_MICROS);
        self.hist_mut(which).saturating_record(micros);
        if let Some(recent) = &mut self.recent {
            recent.push(Sample {
                which,
                // MAX_MICROS < u32::MAX.
                micros: micros as u32,
            });
        }
    }

    /// Records samples another `Latencies` kept (a shard's report).
    pub fn record_all(&mut self, samples: &[Sample]) {
        for s in samples {
            self.record(s.which, u64::from(s.micros));
        }
    }

    /// From now on keep every sample until [`Latencies::take_recent`]. For an owner that
    /// takes them regularly (a shard driver, each report); others would only grow the list.
    pub fn keep_recent(&mut self) {
        self.recent.get_or_insert_with(Vec::new);
    }

    /// The samples kept since the last call (empty unless [`Latencies::keep_recent`]).
    pub fn take_recent(&mut self) -> Vec<Sample> {
        match &mut self.recent {
            // The next batch is likely about as big as this one.
            Some(recent) => std::mem::replace(recent, Vec::with_capacity(recent.len())),
            None => Vec::new(),
        }
    }

    /// The histogram of one latency.
    pub fn get(&self, which: Latency) -> &Histogram<u64> {
        match &self.hists[which as usize] {
            Some(h) => h,
            None => empty(),
        }
    }

    /// The histogram of one latency, made if absent and unshared if a snapshot holds it.
    pub(super) fn hist_mut(&mut self, which: Latency) -> &mut Histogram<u64> {
        let slot = self.hists[which as usize].get_or_insert_with(|| Arc::new(new_histogram()));
        Arc::make_mut(slot)
    }

    /// Adds `other`'s histograms into `self` (not its kept samples).
    pub fn merge(&mut self, other: &Latencies) {
        for (mine, theirs) in self.hists.iter_mut().zip(&other.hists) {
            let Some(theirs) = theirs else { continue };
            match mine {
                // Nothing here yet: share theirs until one side writes.
                None => *mine = Some(theirs.clone()),
                Some(mine) => {
                    // Same bounds on both sides: add cannot fail.
                    Arc::make_mut(mine)
                        .add(&**theirs)
                        .expect("histograms with equal bounds");
                }
            }
        }
    }

    /// Empties every histogram (and the kept samples).
    pub fn clear(&mut self) {
        self.hists = Default::default();
        if let Some(recent) = &mut self.recent {
            recent.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_samples_rebuild_the_same_histograms() {
        let mut shard = Latencies::default();
        shard.keep_recent();
        let mut control = Latencies::default();
        for (i, us) in [0, 1, 900, 4_000, 2_000_000, u64::MAX]
            .into_iter()
            .enumerate()
        {
            let which = Latency::ALL[i % 3];
            shard.record(which, us);
        }
        control.record_all(&shard.take_recent());
        assert!(shard.take_recent().is_empty(), "taken once");
        shard.record(Latency::Bind, 77);
        control.record_all(&shard.take_recent());
        for l in Latency::ALL {
            assert_eq!(control.get(l), shard.get(l), "{l:?}");
        }
        // Connect: 0 (read as 1) and 4,000; handshake: 1 and 2,000,000; fast connect: 900
        // and u64::MAX (read as an hour).
        let h = control.get(Latency::Handshake);
        assert_eq!((h.len(), h.min()), (2, 1));
        assert!(h.equivalent(h.max(), 2_000_000), "{}", h.max());
        let f = control.get(Latency::FastConnect);
        assert!(f.equivalent(f.max(), MAX_MICROS), "{}", f.max());
        assert_eq!(control.get(Latency::Bind).len(), 1);
    }

    #[test]
    fn samples_are_kept_only_when_asked() {
        let mut l = Latencies::default();
        l.record(Latency::Bind, 5);
        assert!(l.take_recent().is_empty());
        assert_eq!(l.get(Latency::Bind).len(), 1);
    }

    #[test]
    fn a_snapshot_is_not_changed_by_later_samples() {
        let mut live = Latencies::default();
        live.record(Latency::Handshake, 1_000);
        let snapshot = live.clone();
        live.record(Latency::Handshake, 2_000);
        let mut merged = Latencies::default();
        merged.merge(&snapshot);
        merged.merge(&snapshot);
        assert_eq!(snapshot.get(Latency::Handshake).len(), 1);
        assert_eq!(live.get(Latency::Handshake).len(), 2);
        assert_eq!(merged.get(Latency::Handshake).len(), 2);
        assert!(merged.get(Latency::Connect).is_empty());
        assert_eq!(
            snapshot.get(Latency::Handshake).len(),
            1,
            "merge wrote a copy"
        );
    }
}
