//! The shard as a sans-IO core, in the spirit of quinn-proto's `Endpoint`: it owns the slots,
//! devices, timers, ramp, ticket requests, sink records and backpressure, the batched AES of
//! the turn and the graceful stop. It takes completions and time, and returns I/O to start.
//! No sockets, clocks, tasks or channels in here; a driver (`shard::uring` on tokio-uring,
//! `sim` in memory) moves bytes and completions and nothing else.
//!
//! # Driving
//!
//! A driver works in turns. Each turn it reads the clock once, then:
//!
//! 1. feeds every completion it has: [`handle_connected`](ShardCore::handle_connected),
//!    [`handle_connect_failed`](ShardCore::handle_connect_failed),
//!    [`handle_read`](ShardCore::handle_read), [`handle_closed`](ShardCore::handle_closed),
//!    [`handle_write_done`](ShardCore::handle_write_done),
//!    [`handle_ticket`](ShardCore::handle_ticket),
//!    [`handle_sink_took`](ShardCore::handle_sink_took), [`handle_stop`](ShardCore::handle_stop);
//! 2. ends the turn with [`handle_timeout`](ShardCore::handle_timeout): timers fire only now,
//!    after all of the turn's input, so a reply that arrived is never judged a timeout; the
//!    ramp starts devices; the turn's sealed frames are encrypted in one batch;
//! 3. drains [`poll_io`](ShardCore::poll_io), [`poll_ticket`](ShardCore::poll_ticket) and the
//!    sink backlog ([`peek_delivery`](ShardCore::peek_delivery)), then sleeps until
//!    [`poll_timeout`](ShardCore::poll_timeout) or the next completion.
//!
//! # Ordering guarantees
//!
//! - A connection's frames reach its device in order, each before any close or stream error
//!   that came after it (frames are handed over as they are decoded, nothing is deferred).
//! - Bytes a device produced before it asked to close are given as [`Io::Write`] before the
//!   connection's [`Io::Shutdown`].
//! - Time is u64 milliseconds: nothing saturates or wraps.

mod admit;
mod by_server;
mod control;
mod drive;
mod io;
mod phases;
pub mod push_probe;
mod ramp;
mod read;
mod search;
mod sink;
mod stop;
mod timers;
mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

pub use admit::Admission;
pub use control::{Answer, DeviceCounters, DeviceState, Request};
pub use io::{ConnId, Io, TicketOp};
pub use push_probe::{PushReceipt, ReceiptKind};
pub use sink::{SinkItem, SinkToken};
pub use upstream::{UpstreamDone, UpstreamLoad, LOAD_TAG};

use crate::crypto::AesBatch;
use crate::device::{Device, DeviceConfig, Event, Now, Phase, Shared, Tick, Transmit};
use crate::proto::FrameDecoder;
use crate::stats::ShardStats;
use crate::tickets::format::ClientTicket;

use admit::{Admit, Gate};
use io::Conn;
use ramp::Ramp;
use sink::SinkQueue;
use stop::Stop;
use timers::Timers;

/// Read size of an idle connection: a heartbeat echo, an ack, a small push.
pub const IDLE_READ: usize = 256;
/// How soon the core looks at a full sink again: the sink gives no signal when it has room.
const SINK_RETRY_MS: u64 = 2;

/// What one shard core runs: its devices and where they connect.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Global index of the shard's first device; slots are `0..devices`.
    pub first_device: u32,
    /// How many devices the shard owns.
    pub devices: u32,
    /// New sessions per second this shard starts; 0 starts a bounded number per turn.
    pub rate_per_sec: f64,
    /// Server endpoints, used round-robin.
    pub servers: Vec<SocketAddr>,
    /// Local source addresses, used round-robin (empty: any).
    pub sources: Vec<IpAddr>,
    /// What every device shares.
    pub device: Arc<DeviceConfig>,
    /// Seed of the shard's RNG (keys, IVs, jitter).
    pub seed: u64,
    /// Whether received pushes go to a sink (otherwise the application takes each at once).
    pub sink: bool,
    /// How long a graceful stop may wait for the sink to take what was received, ms.
    pub drain_timeout_ms: u64,
    /// The admission window and the retry budget.
    pub admission: Admission,
    /// The phases to run (empty: the ramp at `rate_per_sec`, then running until stopped).
    pub plan: crate::stages::Plan,
    /// Device-originated load (device pushes, HTTP_PROXY requests) to generate.
    pub upstream: UpstreamLoad,
}

/// One device and its connection.
#[derive(Debug)]
struct Slot {
    device: Device,
    /// Generation of the slot's latest connect.
    gen: u32,
    conn: Option<Conn>,
    /// The deadline this slot has in the timer heap.
    armed: Tick,
    /// Index into `sealing` of this turn's output waiting for encryption, if any.
    sealing: Option<u32>,
    /// Where the slot is in the admission window.
    admit: Admit,
    /// Whether the device connected before (its next connect is a retry).
    connected_before: bool,
    /// Index of its latest connect's server in `server_table`.
    server: u16,
}

/// A device's output of this turn that holds frames to encrypt in the turn's batch.
#[derive(Debug)]
struct Sealing {
    conn: ConnId,
    transmit: Transmit,
    shutdown_after: bool,
}

/// The sans-IO shard. See the module doc for the driving order.
#[derive(Debug)]
pub struct ShardCore {
    cfg: CoreConfig,
    shared: Shared,
    slots: Vec<Slot>,
    timers: Timers,
    ramp: Ramp,
    decoder: FrameDecoder,
    now: Now,
    /// Where devices' output lands; reused for every device.
    transmit: Transmit,
    /// This turn's outputs with frames to seal, and spare `Transmit`s for them.
    sealing: Vec<Sealing>,
    spare: Vec<Transmit>,
    batch: AesBatch,
    /// Bytes handed out as [`Io::Write`] data: slices of this one buffer, reclaimed once the
    /// driver dropped them.
    out: BytesMut,
    io: std::collections::VecDeque<Io>,
    tickets: std::collections::VecDeque<TicketOp>,
    sink: SinkQueue,
    gate: Gate,
    stop: Stop,
    phases: phases::Phases,
    next_server: usize,
    next_source: usize,
    writes_in_flight: u64,
    /// Every server address connected to, for per-server figures.
    server_table: Vec<SocketAddr>,
    /// Device-driven counters at the end of the last drive.
    seen: by_server::Seen,
    /// `run --push-rate`'s receipts, for the driver's next report.
    probe: push_probe::PushProbe,
    /// Added and removed devices, per-device counters, control answers.
    control: control::ControlState,
    /// Upstream outcomes for callers and the upstream load's pace.
    upstream: upstream::Upstream,
}

impl ShardCore {
    /// A core whose devices wait for the ramp; its clock starts at `now`.
    pub fn new(cfg: CoreConfig, now: Now) -> Self {
        let threshold = cfg.device.limits.compress_threshold;
        let slots = (0..cfg.devices)
            .map(|slot| Slot::new(cfg.first_device + slot))
            .collect();
        let mut shared = Shared::new(cfg.device.clone(), cfg.seed);
        shared.stats.stages.phases = phases::stage_stats(&cfg.plan);
        // With a plan, its phases move the ramp.
        let first = if cfg.plan.stages.is_empty() {
            cfg.devices
        } else {
            0
        };
        ShardCore {
            shared,
            decoder: FrameDecoder::new(cfg.device.limits.max_body),
            ramp: Ramp::new(first, cfg.rate_per_sec),
            slots,
            timers: Timers::default(),
            now,
            transmit: Transmit::new(threshold),
            sealing: Vec::new(),
            spare: Vec::new(),
            batch: AesBatch::new(),
            out: BytesMut::new(),
            io: Default::default(),
            tickets: Default::default(),
            sink: SinkQueue::default(),
            gate: Gate::new(cfg.admission, cfg.devices),
            stop: Stop::Running,
            phases: Default::default(),
            next_server: 0,
            next_source: 0,
            writes_in_flight: 0,
            server_table: Vec::new(),
            seen: by_server::Seen::default(),
            probe: push_probe::PushProbe::default(),
            control: Default::default(),
            upstream: Default::default(),
            cfg,
        }
        .counting_listed()
    }

    /// The shard's counters and histograms.
    pub fn stats(&self) -> &ShardStats {
        &self.shared.stats
    }

    /// From now on keep each latency sample for the next [`ShardCore::stats_report`]. A
    /// driver that reports calls it before the first turn; a core nobody reports on (a
    /// simulation) does not keep them.
    pub fn keep_latency_samples(&mut self) {
        self.shared.stats.latencies.keep_recent();
    }

    /// A report of the statistics: counters, stages and servers so far, and the latency
    /// samples since the last report. Every report's samples together make this shard's
    /// histograms (from [`ShardCore::keep_latency_samples`] on).
    pub fn stats_report(&mut self) -> (ShardStats, Vec<crate::stats::Sample>) {
        let st = &mut self.shared.stats;
        let samples = st.latencies.take_recent();
        let without = ShardStats {
            counters: st.counters.clone(),
            latencies: Default::default(),
            stages: st.stages.clone(),
            servers: st.servers.clone(),
        };
        (without, samples)
    }

    /// The device in `slot` (tests, reports).
    pub fn device(&self, slot: u32) -> Option<&Device> {
        self.slots.get(slot as usize).map(|s| &s.device)
    }

    /// Adds the ticket store's counters (tickets saved, failed operations) to the shard's.
    pub fn count_store(&mut self, saved: u64, errors: u64) {
        self.shared.stats.counters.tickets_saved += saved;
        self.shared.stats.counters.ticket_errors += errors;
    }

    /// Devices between connect and bound now (in the admission window).
    pub fn pending(&self) -> u32 {
        self.gate.pending()
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// New server endpoints (resolved or discovered by the control plane): connects from now
    /// on go round these. An empty list is ignored (the core keeps the last).
    pub fn set_servers(&mut self, servers: Vec<SocketAddr>) {
        if !servers.is_empty() && servers != self.cfg.servers {
            self.cfg.servers = servers;
            self.next_server = 0;
        }
    }

    // ----- input -----

    /// The TCP connection `conn` is up.
    pub fn handle_connected(&mut self, now: Now, conn: ConnId) {
        self.now = now;
        let closing = matches!(self.stop, Stop::Closing { .. } | Stop::Done);
        let Some(s) = self.slots.get_mut(conn.slot as usize) else {
            return;
        };
        let current = s.gen == conn.gen && s.conn.is_none();
        if !current || closing || s.device.phase() != Phase::ExpectConnect {
            // Abandoned meanwhile: the driver closes the socket.
            self.io.push_back(Io::Shutdown(conn));
            return;
        }
        let mut c = Conn::new(conn);
        if matches!(self.stop, Stop::Draining { .. }) {
            c.paused = true;
            self.io.push_back(Io::PauseRead(conn));
        }
        s.conn = Some(c);
        self.event(conn.slot, Event::Connected);
    }

    /// The connect of `conn` failed or timed out.
    pub fn handle_connect_failed(&mut self, now: Now, conn: ConnId) {
        self.now = now;
        if self
            .slots
            .get(conn.slot as usize)
            .is_some_and(|s| s.gen == conn.gen && s.conn.is_none())
        {
            self.event(conn.slot, Event::ConnectFailed);
        }
    }

    /// The peer closed `conn`, or reading it failed.
    pub fn handle_closed(&mut self, now: Now, conn: ConnId) {
        self.now = now;
        if self.current_conn(conn).is_some() {
            let s = &mut self.slots[conn.slot as usize];
            s.conn = None;
            self.io.push_back(Io::Shutdown(conn));
            self.event(conn.slot, Event::Closed);
        }
    }

    /// A write of `conn` completed (`ok: false`: it failed, the connection is lost).
    pub fn handle_write_done(&mut self, now: Now, conn: ConnId, ok: bool) {
        self.now = now;
        self.writes_in_flight = self.writes_in_flight.saturating_sub(1);
        if !ok {
            self.handle_closed(now, conn);
        }
    }

    /// The answer to [`TicketOp::Load`] for global device index `device`.
    pub fn handle_ticket(&mut self, now: Now, device: u32, ticket: Option<ClientTicket>) {
        self.now = now;
        if let Some(slot) = self.slot_of(device) {
            self.event(slot, Event::Ticket(ticket));
        }
    }

    /// Ends the turn: fires the timers due at `now` (after all of the turn's input), starts
    /// the devices the ramp has reached, moves the stop along and seals the turn's output.
    pub fn handle_timeout(&mut self, now: Now) {
        self.now = now;
        let tick = now.tick();
        while let Some((t, slot)) = self.timers.pop_due(tick) {
            let s = &mut self.slots[slot as usize];
            if s.armed != t {
                continue; // stale
            }
            s.armed = Tick::NEVER;
            s.device.handle_timeout(now, &mut self.shared);
            self.drive(slot);
        }
        self.run_stages(tick);
        self.admit_waiting();
        self.sink.full = false;
        self.resume_drained();
        self.advance_stop(tick);
        self.advance_retiring(tick);
        self.pace_upstream(tick);
        self.seal_turn();
    }

    // ----- output -----

    /// The next I/O to start.
    #[must_use]
    pub fn poll_io(&mut self) -> Option<Io> {
        let io = self.io.pop_front();
        if matches!(io, Some(Io::Write { .. })) {
            self.writes_in_flight += 1;
        }
        io
    }

    /// The next ticket-store request.
    #[must_use]
    pub fn poll_ticket(&mut self) -> Option<TicketOp> {
        self.tickets.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Tick> {
        let now = self.now.tick();
        let mut next = self.timers.next();
        let mut at = |t: Option<Tick>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        at(self.ramp.next_start(now));
        at(self.gate.next_token(now));
        at(self.stages_next(now));
        at(self.upstream_next());
        if !self.sink.backlog.is_empty() {
            at(Some(now.after(SINK_RETRY_MS)));
        }
        match self.stop {
            Stop::Draining { until } | Stop::Closing { until } => at(Some(until)),
            Stop::Running | Stop::Done => {}
        }
        next
    }

    /// Whether a graceful stop has finished: every session closed and its last writes done.
    pub fn is_finished(&self) -> bool {
        self.stop == Stop::Done
    }

    /// Whether the core has I/O or requests the driver has not taken.
    pub fn has_output(&self) -> bool {
        !self.io.is_empty()
            || !self.tickets.is_empty()
            || self.peek_delivery().is_some()
            || self.has_upstream_output()
    }

    // ----- internals -----

    fn current_conn(&mut self, conn: ConnId) -> Option<&mut Conn> {
        self.slots
            .get_mut(conn.slot as usize)?
            .conn
            .as_mut()
            .filter(|c| c.id == conn)
    }

    fn event(&mut self, slot: u32, event: Event) {
        let now = self.now;
        self.slots[slot as usize]
            .device
            .handle_event(now, &mut self.shared, event);
        self.drive(slot);
    }

    fn server_for_connect(&mut self) -> (Option<IpAddr>, SocketAddr) {
        let dst = self.cfg.servers[self.next_server % self.cfg.servers.len()];
        self.next_server = self.next_server.wrapping_add(1);
        let src = (!self.cfg.sources.is_empty()).then(|| {
            let src = self.cfg.sources[self.next_source % self.cfg.sources.len()];
            self.next_source = self.next_source.wrapping_add(1);
            src
        });
        (src, dst)
    }

    fn write(&mut self, conn: ConnId, data: Bytes) {
        self.io.push_back(Io::Write { conn, data });
    }
}

#[cfg(test)]
mod tests;
