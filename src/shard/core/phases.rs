//! The phase machine: runs the shard's [`Plan`](crate::stages::Plan) in order, fed time like
//! the rest of the core, and keeps each phase's figures in the shard's stats.
//!
//! - **ramp** heads for its device count at its rate (or the capacity search's); it ends
//!   once the count is reached and no device is between start and bound.
//! - **hold** and **churn** end after their duration; churn closes `P%` of the running
//!   devices per second, round-robin over the online ones.
//! - **storm** closes every online session at once and ends when as many are online again
//!   and no running device waits to reconnect (or after its limit).
//! - **ramp-down** stops every device, evenly over its duration.
//!
//! A close by churn or storm is the fleet's own: the device reconnects as after a loss (with
//! its backoff's jitter, by fast connect while its ticket holds), through the admission
//! window, but it spends no retry-budget token.

use crate::device::{Event, Phase, Tick};
use crate::stages::figures::Mark;
use crate::stages::{PhaseStats, RampRate, StageKind};

use super::io::Io;
use super::ramp::Move;
use super::search::Search;
use super::stop::Stop;
use super::ShardCore;

/// How often the running phase's figures are brought up to date for reports.
const REFRESH_MS: u64 = 1_000;

/// Where the plan is.
#[derive(Debug, Default)]
pub(super) struct Phases {
    /// The running phase (`plan.len()`: done); `None` before the first began.
    index: Option<usize>,
    began: Tick,
    mark: Option<Mark>,
    /// Churn: closes per second, closes made, and the round-robin cursor.
    churn_rate: f64,
    churned: u64,
    cursor: u32,
    /// Storm: devices online before it.
    back_to: i64,
    search: Option<Search>,
    refreshed: Tick,
    halted: bool,
}

pub(super) fn stage_stats(plan: &crate::stages::Plan) -> Vec<PhaseStats> {
    plan.stages
        .iter()
        .map(|s| PhaseStats::new(&s.name, &s.spec))
        .collect()
}

/// Closes a churn phase makes in all.
fn churn_total(rate: f64, ms: u64) -> u64 {
    (rate * ms as f64 / 1000.0).round() as u64
}

impl ShardCore {
    fn plan_len(&self) -> usize {
        self.cfg.plan.stages.len()
    }

    /// The turn's part of the plan: phase changes, churn, the search's epoch, the ramp.
    pub(super) fn run_stages(&mut self, now: Tick) {
        let planned = self.plan_len() > 0 && !self.phases.halted && self.stop == Stop::Running;
        if planned {
            self.advance_phases(now);
        }
        match self.ramp.due(now) {
            Move::Start(slots) => {
                for slot in slots {
                    if self.control.is_free(slot) {
                        continue; // removed through the control API
                    }
                    // A ramp's start is a first connect, even for a device that ran before.
                    self.slots[slot as usize].connected_before = false;
                    self.event(slot, Event::Start);
                }
            }
            Move::Stop(slots) => {
                for slot in slots.rev() {
                    self.event(slot, Event::Stop);
                }
            }
        }
        if planned {
            // The ramp's moves may have ended its phase: say so now, not at the next wakeup.
            self.advance_phases(now);
            self.churn(now);
            self.search_epoch(now);
            if now.since(self.phases.refreshed) >= REFRESH_MS {
                self.refresh_phase(now);
            }
        }
    }

    fn advance_phases(&mut self, now: Tick) {
        if self.phases.index.is_none() {
            self.begin_phase(0, now);
        }
        while let Some(i) = self.phases.index.filter(|&i| i < self.plan_len()) {
            if !self.phase_over(i, now) {
                break;
            }
            self.end_phase(i, now, true);
            if i + 1 < self.plan_len() {
                self.begin_phase(i + 1, now);
            }
        }
    }

    /// When the plan needs a turn: its first phase, a duration's end, the next churn close,
    /// the search's epoch.
    pub(super) fn stages_next(&self, now: Tick) -> Option<Tick> {
        if self.plan_len() == 0 || self.phases.halted || self.stop != Stop::Running {
            return None;
        }
        let Some(i) = self.phases.index else {
            return Some(now);
        };
        let stage = self.cfg.plan.stages.get(i)?;
        let began = self.phases.began;
        let mut next = match stage.kind {
            StageKind::Hold { ms } => Some(began.after(ms)),
            StageKind::Churn { ms, .. } => {
                let rate = self.phases.churn_rate;
                let close =
                    (rate > 0.0 && self.phases.churned < churn_total(rate, ms)).then(|| {
                        let at = (self.phases.churned as f64 * 1000.0 / rate).ceil() as u64;
                        began.after(at)
                    });
                Some(close.map_or(began.after(ms), |c| c.min(began.after(ms))))
            }
            StageKind::Storm { limit_ms } => limit_ms.map(|ms| began.after(ms)),
            StageKind::Ramp { .. } | StageKind::RampDown { .. } => None,
        };
        if let Some(s) = &self.phases.search {
            let at = s.next(now);
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next.map(|t| t.max(now))
    }

    /// A graceful stop cuts the running phase short: its figures are final as of now.
    pub(super) fn halt_stages(&mut self, now: Tick) {
        if let Some(i) = self.phases.index.filter(|&i| i < self.plan_len()) {
            if !self.phases.halted {
                self.end_phase(i, now, false);
                self.shared.stats.stages.current = i;
            }
        }
        self.phases.halted = true;
    }

    fn begin_phase(&mut self, i: usize, now: Tick) {
        let st = &self.shared.stats;
        self.phases.index = Some(i);
        self.phases.began = now;
        self.phases.mark = Some(Mark::now(&st.counters, &st.latencies));
        self.phases.refreshed = now;
        self.shared.stats.stages.current = i;
        self.shared.stats.stages.phases[i].ran = true;
        match self.cfg.plan.stages[i].kind {
            StageKind::Ramp { to, rate } => {
                let to = to.unwrap_or(self.cfg.devices).min(self.cfg.devices);
                let per_sec = match rate {
                    RampRate::PerSec(r) => r,
                    RampRate::Default => self.cfg.rate_per_sec,
                    RampRate::Auto => {
                        let s = Search::new(now, self.cfg.plan.auto, &self.shared.stats);
                        let r = s.rate();
                        self.shared.stats.stages.capacity = Some(s.capacity());
                        self.phases.search = Some(s);
                        r
                    }
                };
                self.ramp.set(now, to, per_sec);
            }
            StageKind::Churn { pct_per_sec, .. } => {
                self.phases.churn_rate = pct_per_sec / 100.0 * f64::from(self.ramp.active());
                self.phases.churned = 0;
            }
            StageKind::Storm { .. } => {
                self.phases.back_to = self.shared.stats.counters.online;
                for slot in 0..self.cfg.devices {
                    if self.slots[slot as usize].device.phase() == Phase::Online {
                        self.drop_session(slot);
                    }
                }
            }
            StageKind::RampDown { ms } => {
                let secs = ms as f64 / 1000.0;
                let active = f64::from(self.ramp.active());
                // No duration: all at once (as fast as the turn bound allows).
                let rate = if secs > 0.0 { active / secs } else { 0.0 };
                self.ramp.set(now, 0, rate);
            }
            StageKind::Hold { .. } => {}
        }
    }

    fn phase_over(&mut self, i: usize, now: Tick) -> bool {
        let since = now.since(self.phases.began);
        match self.cfg.plan.stages[i].kind {
            StageKind::Hold { ms } | StageKind::Churn { ms, .. } => since >= ms,
            StageKind::Ramp { .. } | StageKind::RampDown { .. } => {
                self.ramp.arrived() && self.settled()
            }
            StageKind::Storm { limit_ms } => {
                limit_ms.is_some_and(|ms| since >= ms)
                    || (self.shared.stats.counters.online >= self.phases.back_to
                        && self.settled()
                        && self.all_back())
            }
        }
    }

    /// No device between start and bound: none in the window or waiting for it, none
    /// waiting for its ticket.
    fn settled(&self) -> bool {
        self.gate.idle()
            && !self.slots[..self.ramp.active() as usize]
                .iter()
                .any(|s| s.device.phase() == Phase::ExpectTicket)
    }

    /// No running device waiting to reconnect (a storm ends when all are back).
    fn all_back(&self) -> bool {
        !self.slots[..self.ramp.active() as usize]
            .iter()
            .any(|s| s.device.phase() == Phase::Backoff)
    }

    fn end_phase(&mut self, i: usize, now: Tick, completed: bool) {
        self.refresh_phase(now);
        self.shared.stats.stages.phases[i].completed = completed;
        if let Some(s) = self.phases.search.take() {
            // The search is over: what it found stays, its rate no longer applies.
            let found = s.capacity();
            self.shared.stats.stages.capacity = Some(crate::stages::Capacity {
                rate_now: 0.0,
                ..found
            });
        }
        self.phases.index = Some(i + 1);
        self.shared.stats.stages.current = i + 1;
    }

    /// Brings the running phase's figures up to date.
    fn refresh_phase(&mut self, now: Tick) {
        self.phases.refreshed = now;
        let (Some(i), Some(mark)) = (self.phases.index, &self.phases.mark) else {
            return;
        };
        let ms = now.since(self.phases.began);
        let st = &mut self.shared.stats;
        if let Some(p) = st.stages.phases.get_mut(i) {
            p.update(mark, &st.counters, &st.latencies, ms);
        }
    }

    fn churn(&mut self, now: Tick) {
        let Some(i) = self.phases.index else { return };
        let Some(StageKind::Churn { ms, .. }) = self.cfg.plan.stages.get(i).map(|s| s.kind) else {
            return;
        };
        let rate = self.phases.churn_rate;
        if rate <= 0.0 {
            return;
        }
        // Closes at 0, 1/rate, 2/rate, ... within the phase: rate x duration in all.
        let since = now.since(self.phases.began);
        let due = ((since as f64 * rate / 1000.0 + 1e-6) as u64 + 1).min(churn_total(rate, ms));
        let active = self.ramp.active();
        while self.phases.churned < due {
            self.phases.churned += 1;
            // The next online device after the cursor (none: nothing to close this time).
            let found = (0..active)
                .map(|k| (self.phases.cursor + k) % active.max(1))
                .find(|&slot| self.slots[slot as usize].device.phase() == Phase::Online);
            if let Some(slot) = found {
                self.phases.cursor = (slot + 1) % active.max(1);
                self.drop_session(slot);
            }
        }
    }

    fn search_epoch(&mut self, now: Tick) {
        let Some(s) = self.phases.search.as_mut() else {
            return;
        };
        if let Some(rate) = s.tick(now, &self.shared.stats) {
            self.ramp.set_rate(now, rate);
        }
        self.shared.stats.stages.capacity = Some(s.capacity());
    }

    /// Closes the session of `slot` on the fleet's behalf (churn, storm); the device
    /// reconnects, as a first connect for the retry budget.
    pub(super) fn drop_session(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        let Some(conn) = s.conn.take() else { return };
        match s.sealing.take() {
            // Its last bytes wait for the batch: shut down after them.
            Some(k) => self.sealing[k as usize].shutdown_after = true,
            None => self.io.push_back(Io::Shutdown(conn.id)),
        }
        s.connected_before = false;
        self.event(slot, Event::Drop);
    }
}
