//! Device-originated traffic at the shard level: requests started on a device for a caller
//! (a control API: "device X, push this, wait for the ACK"), their outcomes handed back by
//! tag, and the upstream load (`--device-push-rate`, `--http-proxy-rate`) paced per shard
//! across the online devices while the shard holds sessions.
//!
//! Every request's figures (counts by outcome, the push -> ACK and request -> response
//! histograms) are recorded by the device; the core only starts requests and routes outcomes.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::stop::Stop;
use super::ShardCore;
use crate::device::{
    HttpCall, Now, Phase, PushAck, Tick, UpstreamFinished, UpstreamOutcome, UpstreamRequest,
    MAX_IN_FLIGHT,
};

/// The tag of the core's own load requests: their outcomes are only counted, never output.
pub const LOAD_TAG: u64 = u64::MAX;
/// How many slots one paced request looks at for an online device before it is skipped: a
/// shard whose devices are mostly down must not scan them all per request.
const SCAN_LIMIT: usize = 64;

/// A finished upstream request, as [`ShardCore::poll_upstream`] gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamDone {
    /// The caller's tag.
    pub tag: u64,
    /// The device's global index.
    pub device: u64,
    /// How it ended.
    pub outcome: UpstreamOutcome,
    /// From the start to the outcome, µs.
    pub latency_us: u64,
}

/// The upstream load a shard generates (its share of the fleet's rates).
#[derive(Clone, Debug, Default)]
pub struct UpstreamLoad {
    /// Device pushes per second (0: none).
    pub push_rate: f64,
    /// The ack they ask for.
    pub push_ack: PushAck,
    /// Their content.
    pub push_content: Bytes,
    /// HTTP_PROXY requests per second (0: none).
    pub http_rate: f64,
    /// The request sent each time.
    pub http: Option<Arc<HttpCall>>,
    /// Each request's deadline, ms (0: the request's default).
    pub timeout_ms: u32,
}

/// Requests at a steady rate from the time it starts: `issued` trails `rate * elapsed`.
#[derive(Debug, Default)]
struct Pacer {
    start: Option<Tick>,
    issued: u64,
}

impl Pacer {
    /// Requests due at `now` (and counts them issued).
    fn due(&mut self, now: Tick, rate: f64) -> u64 {
        let start = *self.start.get_or_insert(now);
        let owed = (now.since(start) as f64 * rate / 1000.0) as u64;
        let n = owed.saturating_sub(self.issued);
        self.issued += n;
        n
    }

    fn next(&self, rate: f64) -> Option<Tick> {
        let start = self.start?;
        let ms = ((self.issued + 1) as f64 * 1000.0 / rate).ceil() as u64;
        Some(start.after(ms))
    }
}

/// The core's upstream state: outcomes for callers and the load's pacing.
#[derive(Debug, Default)]
pub(super) struct Upstream {
    done: VecDeque<UpstreamDone>,
    push: Pacer,
    http: Pacer,
    /// The next slot a paced request tries.
    cursor: usize,
}

impl ShardCore {
    /// Starts `request` on the device with global index `device`; its outcome comes out of
    /// [`poll_upstream`](Self::poll_upstream) with `tag` ([`LOAD_TAG`] is the core's own).
    /// `timeout_ms` 0 means the request's default. The request is written in this turn.
    pub fn start_upstream(
        &mut self,
        now: Now,
        device: u64,
        tag: u64,
        request: UpstreamRequest,
        timeout_ms: u32,
    ) {
        self.now = now;
        // The shard's own range, or a device added through the control API.
        let slot = u32::try_from(device).ok().and_then(|d| self.slot_of(d));
        let Some(slot) = slot else {
            return self.upstream_done(tag, device, UpstreamOutcome::NoSuchDevice, 0);
        };
        let started = self.slots[slot as usize].device.start_upstream(
            now,
            &mut self.shared,
            tag,
            request,
            timeout_ms,
        );
        match started {
            Ok(()) => self.drive(slot),
            Err(outcome) => self.upstream_done(tag, device, outcome, 0),
        }
    }

    /// The next finished request started with a caller's tag.
    #[must_use]
    pub fn poll_upstream(&mut self) -> Option<UpstreamDone> {
        self.upstream.done.pop_front()
    }

    /// A device's request finished (from its effects).
    pub(super) fn upstream_finished(&mut self, slot: u32, f: UpstreamFinished) {
        let device = u64::from(self.slots[slot as usize].device.index());
        self.upstream_done(f.tag, device, f.outcome, f.latency_us);
    }

    fn upstream_done(&mut self, tag: u64, device: u64, outcome: UpstreamOutcome, us: u64) {
        if tag != LOAD_TAG {
            self.upstream.done.push_back(UpstreamDone {
                tag,
                device,
                outcome,
                latency_us: us,
            });
        }
    }

    /// Whether outcomes wait for [`poll_upstream`](Self::poll_upstream).
    pub(super) fn has_upstream_output(&self) -> bool {
        !self.upstream.done.is_empty()
    }

    /// Starts the load's requests due at `now`, on online devices in turn. The pace runs
    /// only while some device is online and the shard is not stopping; it restarts from
    /// there, so a shard that had no session does not burst when one comes up.
    pub(super) fn pace_upstream(&mut self, now: Tick) {
        let load = &self.cfg.upstream;
        let (push_rate, http_rate) = (load.push_rate, load.http_rate);
        if push_rate <= 0.0 && (http_rate <= 0.0 || load.http.is_none()) {
            return;
        }
        if self.shared.stats.counters.online <= 0 || self.stop != Stop::Running {
            self.upstream.push = Pacer::default();
            self.upstream.http = Pacer::default();
            return;
        }
        if push_rate > 0.0 {
            for _ in 0..self.upstream.push.due(now, push_rate) {
                let request = UpstreamRequest::Push {
                    ack: self.cfg.upstream.push_ack,
                    content: self.cfg.upstream.push_content.clone(),
                };
                self.start_load(request);
            }
        }
        if let Some(call) = self.cfg.upstream.http.clone().filter(|_| http_rate > 0.0) {
            for _ in 0..self.upstream.http.due(now, http_rate) {
                self.start_load(UpstreamRequest::Http(call.clone()));
            }
        }
    }

    /// When the load's next request is due, if it runs.
    pub(super) fn upstream_next(&self) -> Option<Tick> {
        let load = &self.cfg.upstream;
        let push = (load.push_rate > 0.0)
            .then(|| self.upstream.push.next(load.push_rate))
            .flatten();
        let http = (load.http_rate > 0.0 && load.http.is_some())
            .then(|| self.upstream.http.next(load.http_rate))
            .flatten();
        match (push, http) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn start_load(&mut self, request: UpstreamRequest) {
        let n = self.slots.len();
        for _ in 0..n.min(SCAN_LIMIT) {
            let slot = self.upstream.cursor % n;
            self.upstream.cursor = self.upstream.cursor.wrapping_add(1);
            let d = &self.slots[slot].device;
            if d.phase() == Phase::Online && d.upstream_in_flight() < MAX_IN_FLIGHT {
                let device = u64::from(d.index());
                let timeout = self.cfg.upstream.timeout_ms;
                return self.start_upstream(self.now, device, LOAD_TAG, request, timeout);
            }
        }
        self.shared.stats.counters.upstream_no_device += 1;
    }
}
