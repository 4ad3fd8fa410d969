//! Overload without collapse: an admission window and a retry budget in front of connects.
//!
//! - **Admission window**: at most `max_pending` devices of the shard between connect and
//!   bound at once. A device that wants to connect while the window is full waits, in order,
//!   and the wait is measured (`window_wait`): the server, not the fleet, sets the pace.
//! - **Retry budget** (gRPC's retry throttling, Finagle's `RetryBudget`): a reconnect costs a
//!   token. A first session that comes up deposits `retry_ratio` tokens, a reconnect that comes
//!   up refunds its token plus `retry_ratio`, and `retry_floor_per_sec` trickle in regardless
//!   (the small floor that lets a fleet recover from zero). An outage therefore sees at most
//!   the tokens on hand plus the floor's share of retries; throttled reconnects wait and are
//!   counted (`retries_throttled`). A healthy server refunds every retry, so a storm of closes
//!   comes back at the window's pace.

use std::collections::VecDeque;

use super::ShardCore;
use crate::device::{Phase, Tick};
use crate::stats::Latency;

/// How a shard paces its connects.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Admission {
    /// Devices between connect and bound at once; 0 = unlimited.
    pub max_pending: u32,
    /// Tokens a session that came up earns for later retries.
    pub retry_ratio: f64,
    /// Tokens per second that accrue regardless; 0 with a ratio of 0 disables retries' limit.
    pub retry_floor_per_sec: f64,
}

impl Default for Admission {
    fn default() -> Self {
        // 256: the window bounds the queue at the server, so it must stay under the server's
        // capacity times the request timeout (26 handshakes/s at 10 s), and at loopback
        // latencies it limits no throughput.
        Admission {
            max_pending: 256,
            retry_ratio: 0.2,
            retry_floor_per_sec: 10.0,
        }
    }
}

impl Admission {
    /// No window and no budget: every connect starts at once.
    pub fn unlimited() -> Self {
        Admission {
            max_pending: 0,
            retry_ratio: 0.0,
            retry_floor_per_sec: 0.0,
        }
    }

    fn budgeted(&self) -> bool {
        self.retry_ratio > 0.0 || self.retry_floor_per_sec > 0.0
    }
}

/// Most tokens the budget holds, and what it starts with: enough for a few retries at once,
/// never a stored-up storm.
const MAX_TOKENS_FLOOR: f64 = 10.0;

/// What a slot is, for admission.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Admit {
    /// Not connecting.
    #[default]
    Idle,
    /// Waiting for room (`since_us`: when it began to wait).
    Waiting { since_us: u64, retry: bool },
    /// Between connect and bound: holds a place in the window.
    Pending { retry: bool },
}

#[derive(Debug)]
pub(super) struct Gate {
    cfg: Admission,
    pending: u32,
    waiting: VecDeque<u32>,
    tokens: f64,
    max_tokens: f64,
    last_refill: Tick,
}

impl Gate {
    pub(super) fn new(cfg: Admission, devices: u32) -> Self {
        let max_tokens = (f64::from(devices) * cfg.retry_ratio).max(MAX_TOKENS_FLOOR);
        Gate {
            cfg,
            pending: 0,
            waiting: VecDeque::new(),
            tokens: MAX_TOKENS_FLOOR.min(max_tokens),
            max_tokens,
            last_refill: Tick(0),
        }
    }

    fn window_full(&self) -> bool {
        self.cfg.max_pending > 0 && self.pending >= self.cfg.max_pending
    }

    fn deposit(&mut self, n: f64) {
        self.tokens = (self.tokens + n).min(self.max_tokens);
    }

    /// When the floor next makes a token, if a throttled retry waits for one.
    pub(super) fn next_token(&self, now: Tick) -> Option<Tick> {
        let head_is_retry = !self.waiting.is_empty() && self.tokens < 1.0;
        if !head_is_retry || self.cfg.retry_floor_per_sec <= 0.0 {
            return None;
        }
        let ms = ((1.0 - self.tokens) * 1000.0 / self.cfg.retry_floor_per_sec).ceil() as u64;
        Some(now.after(ms.max(1)))
    }

    pub(super) fn pending(&self) -> u32 {
        self.pending
    }

    /// Nobody in the window and nobody waiting for it.
    pub(super) fn idle(&self) -> bool {
        self.pending == 0 && self.waiting.is_empty()
    }
}

impl ShardCore {
    /// A device asked to connect: start it, or let it wait for the window or a token.
    pub(super) fn request_connect(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        let retry = s.connected_before;
        s.connected_before = true;
        // No reconnect is started during a graceful stop: the device waits, then stops.
        let stopping = self.stop != super::stop::Stop::Running;
        let blocked = stopping
            || self.gate.window_full()
            || !self.gate.waiting.is_empty()
            || (retry && self.gate.cfg.budgeted() && self.gate.tokens < 1.0);
        if blocked {
            s.admit = Admit::Waiting {
                since_us: self.now.us,
                retry,
            };
            self.gate.waiting.push_back(slot);
            if retry && self.gate.cfg.budgeted() && self.gate.tokens < 1.0 {
                self.shared.stats.counters.retries_throttled += 1;
            }
            return;
        }
        self.admit(slot, retry);
    }

    fn admit(&mut self, slot: u32, retry: bool) {
        if retry && self.gate.cfg.budgeted() {
            self.gate.tokens -= 1.0;
        }
        self.gate.pending += 1;
        self.slots[slot as usize].admit = Admit::Pending { retry };
        self.start_connect(slot);
    }

    /// After a device's input: release its place once it is bound (or gave up), earning
    /// tokens for a session that came up, then admit who waits.
    pub(super) fn update_admission(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        let Admit::Pending { retry } = s.admit else {
            return;
        };
        let phase = s.device.phase();
        let up = phase == Phase::Online
            && (s.device.is_bound() || !self.cfg.device.binds(s.device.index()));
        let connecting = matches!(
            phase,
            Phase::ExpectConnect | Phase::ExpectFastConnectOk | Phase::ExpectHandshakeOk
        ) || (phase == Phase::Online && !up);
        if connecting {
            return;
        }
        s.admit = Admit::Idle;
        self.gate.pending -= 1;
        if up {
            let earned = self.gate.cfg.retry_ratio + if retry { 1.0 } else { 0.0 };
            self.gate.deposit(earned);
        }
        self.admit_waiting();
    }

    /// Admits waiting devices while the window has room and (for retries) tokens last.
    pub(super) fn admit_waiting(&mut self) {
        let now = self.now.tick();
        let dt = now.since(self.gate.last_refill);
        self.gate.last_refill = now;
        let floor = self.gate.cfg.retry_floor_per_sec * dt as f64 / 1000.0;
        self.gate.deposit(floor);
        if self.stop != super::stop::Stop::Running {
            return;
        }
        while !self.gate.window_full() {
            let Some(&slot) = self.gate.waiting.front() else {
                break;
            };
            let s = &self.slots[slot as usize];
            let Admit::Waiting { since_us, retry } = s.admit else {
                self.gate.waiting.pop_front();
                continue;
            };
            if s.device.phase() != Phase::ExpectConnect {
                // Stopped while it waited.
                self.slots[slot as usize].admit = Admit::Idle;
                self.gate.waiting.pop_front();
                continue;
            }
            if retry && self.gate.cfg.budgeted() && self.gate.tokens < 1.0 {
                break; // the head waits for a token; order is kept
            }
            self.gate.waiting.pop_front();
            let waited = self.now.us.saturating_sub(since_us);
            self.shared
                .stats
                .latencies
                .record(Latency::WindowWait, waited);
            self.admit(slot, retry);
        }
    }
}
