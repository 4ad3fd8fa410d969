//! The graceful stop, in order: stop starting devices and reading new pushes, let the sink
//! take what was received and the earned acks go out, then close every session.

use crate::device::{Event, Now, Tick};

use super::io::Io;
use super::ShardCore;

/// How long the closing step of a graceful stop may wait for the last writes.
const CLOSE_TIMEOUT_MS: u64 = 5_000;

/// Where a graceful stop is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    Running,
    Draining { until: Tick },
    Closing { until: Tick },
    Done,
}

impl ShardCore {
    /// Begins a graceful stop: no more starts, no more reads; what was received drains.
    pub fn handle_stop(&mut self, now: Now) {
        self.now = now;
        if self.stop != Stop::Running {
            return;
        }
        self.ramp.stop();
        self.halt_stages(now.tick());
        self.shared.stats.counters.draining_shards = 1;
        self.stop = Stop::Draining {
            until: now.tick().after(self.cfg.drain_timeout_ms),
        };
        for s in &mut self.slots {
            if let Some(c) = s.conn.as_mut().filter(|c| !c.paused) {
                c.paused = true;
                self.io.push_back(Io::PauseRead(c.id));
            }
        }
    }

    pub(super) fn advance_stop(&mut self, now: Tick) {
        match self.stop {
            Stop::Running | Stop::Done => {}
            Stop::Draining { until } => {
                // Acks the sink earned must be on the wire before the sockets close.
                let drained = self.sink.is_drained() && self.writes_in_flight == 0;
                if !drained && now < until {
                    return;
                }
                if !drained {
                    tracing::warn!(
                        held = self.sink.backlog.len(),
                        awaiting = self.sink.awaiting,
                        "drain timed out; pushes not taken by the sink stay unacked"
                    );
                }
                for slot in 0..self.slots.len() as u32 {
                    self.event(slot, Event::Stop);
                }
                self.shared.stats.counters.draining_shards = 0;
                self.stop = Stop::Closing {
                    until: now.after(CLOSE_TIMEOUT_MS),
                };
            }
            Stop::Closing { until } => {
                let quiet = self.writes_in_flight == 0 && self.io.is_empty();
                if quiet || now >= until {
                    self.stop = Stop::Done;
                }
            }
        }
    }
}
