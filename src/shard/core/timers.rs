//! The shard's timers: one min-heap of (deadline, slot) for all its devices. No OS timer and
//! no task per pending timer; the driver sleeps until the earliest entry.
//!
//! Entries are never removed: a slot records the deadline it has in the heap (`armed`), a
//! new entry is pushed only when the device's deadline is earlier, and a popped entry that no
//! longer matches its slot's `armed` is stale and skipped (quinn's `drive_timer` idea).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::device::Tick;

/// A min-heap of deadlines.
#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Tick, u32)>>,
}

impl Timers {
    /// Arms `slot` for `deadline` if that is earlier than what it has armed.
    pub(super) fn arm(&mut self, slot: u32, armed: &mut Tick, deadline: Option<Tick>) {
        if let Some(t) = deadline {
            if t < *armed {
                *armed = t;
                self.heap.push(Reverse((t, slot)));
            }
        }
    }

    /// The earliest entry (possibly stale).
    pub(super) fn next(&self) -> Option<Tick> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Pops one entry due at `now`.
    pub(super) fn pop_due(&mut self, now: Tick) -> Option<(Tick, u32)> {
        match self.heap.peek() {
            Some(Reverse((t, _))) if *t <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Entries held (stale ones included).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_earlier_deadlines_are_pushed_and_stale_ones_are_recognisable() {
        let mut w = Timers::default();
        let mut armed = Tick::NEVER;
        w.arm(1, &mut armed, Some(Tick(50)));
        w.arm(1, &mut armed, Some(Tick(80)));
        assert_eq!(w.len(), 1);
        w.arm(1, &mut armed, Some(Tick(20)));
        assert_eq!((w.len(), armed), (2, Tick(20)));
        assert_eq!(w.pop_due(Tick(10)), None);
        assert_eq!(w.pop_due(Tick(60)), Some((Tick(20), 1)));
        // The 50 entry no longer matches `armed` (20): the shard skips it.
        assert_eq!(w.pop_due(Tick(60)), Some((Tick(50), 1)));
        assert_eq!(w.next(), None);
    }

    #[test]
    fn deadlines_past_u32_millis_order_correctly() {
        let mut w = Timers::default();
        let (mut a, mut b) = (Tick::NEVER, Tick::NEVER);
        let base = 1u64 << 32;
        w.arm(1, &mut a, Some(Tick(base + 5)));
        w.arm(2, &mut b, Some(Tick(base - 5)));
        assert_eq!(w.pop_due(Tick(base + 10)), Some((Tick(base - 5), 2)));
        assert_eq!(w.pop_due(Tick(base + 10)), Some((Tick(base + 5), 1)));
    }
}
