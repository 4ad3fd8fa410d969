//! An in-memory pair: a [`ShardCore`] and the reference [`ServerSession`](crate::server::ServerSession)s
//! joined by a simulated network on a simulated clock. No sockets, no threads, no io_uring:
//! fleet scenarios run in milliseconds and replay exactly from their seed.
//!
//! The simulated driver works as the real one does: per turn it feeds every completion that
//! arrived, ends the turn with [`ShardCore::handle_timeout`], then starts the core's I/O. The
//! network delivers each write after `latency_ms`, in order per connection. Faults: a server
//! that stalls (takes no input until a time, then answers late), connections dropped, a
//! close-all, refused connects, raw bytes injected towards a client, a slow driver loop
//! (`turn_ms`: completions wait for the next turn, as in a loop busy with RSA).

mod server;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::SeedableRng;

pub use server::{ServerCounts, SimHttp};

use crate::device::Now;
use crate::proto::Flags;
use crate::server::session::Tick as ServerTick;
use crate::server::SessionConfig;
use crate::shard::core::{ConnId, CoreConfig, Io, ShardCore, SinkToken};
use crate::tickets::{Loaded, MemoryTickets, TicketStore};
use server::{ServerOut, SimServer};

/// Wall clock at simulated time 0 (any fixed value: scenarios replay exactly).
pub const WALL_AT_ZERO_MS: i64 = 1_764_000_000_000;

/// How the simulated network behaves.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// One-way latency, ms.
    pub latency_ms: u64,
    /// The driver wakes only every `turn_ms` (0: at every event).
    pub turn_ms: u64,
    /// Simulated time at the start, ms (the core's clock starts there too).
    pub start_ms: u64,
    /// The server's configuration.
    pub server: Arc<SessionConfig>,
    /// Records the simulated sink holds before it is full (with `CoreConfig::sink`).
    pub sink_capacity: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency_ms: 1,
            turn_ms: 0,
            start_ms: 0,
            server: Arc::new(SessionConfig::default()),
            sink_capacity: 1024,
        }
    }
}

#[derive(Debug)]
enum Net {
    /// A connect reaches the server (`ok`: accepted).
    Accept(ConnId, bool),
    /// The connect's answer reaches the client.
    Connect(ConnId, bool),
    ToServer(ConnId, Bytes),
    ToClient(ConnId, Bytes),
    /// The client's shutdown reaches the server.
    ClientShutdown(ConnId),
    /// The server's close reaches the client.
    ServerClosed(ConnId),
    WriteDone(ConnId),
}

/// A fleet shard and its server, in memory. See the module doc.
pub struct Sim {
    /// The shard under test.
    pub core: ShardCore,
    /// Its ticket store (the real in-memory one).
    pub tickets: MemoryTickets,
    cfg: SimConfig,
    now_ms: u64,
    seq: u64,
    /// Events for the server side (it acts at their exact time) and for the client side (the
    /// driver takes them at its next turn).
    server_q: BinaryHeap<Reverse<(u64, u64)>>,
    client_q: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Net>,
    server: SimServer,
    /// Server timers: (deadline, conn), stale entries skipped.
    server_timers: BinaryHeap<Reverse<(u64, ConnId)>>,
    stalled_until: u64,
    refuse_connects: bool,
    /// Connections per server address the core connected to (for spread checks).
    pub connects_by_source: HashMap<Option<std::net::IpAddr>, u64>,
    loaded: Vec<Loaded>,
    ios: Vec<Io>,
    read_buf: BytesMut,
    /// Records the sink holds, oldest first (taken with [`Sim::sink_take`]).
    pub sink: std::collections::VecDeque<SinkToken>,
    paused: HashSet<ConnId>,
    held_reads: Vec<(ConnId, Bytes)>,
    /// Turns run so far (a spin shows up here).
    pub turns: u64,
    /// Called with `true` before and `false` after each stretch of core work, so an allocation
    /// counter can count the core's allocations alone.
    pub core_guard: Option<fn(bool)>,
}

impl Sim {
    /// A shard of `core` devices against one simulated server.
    pub fn new(core: CoreConfig, cfg: SimConfig) -> Self {
        let now = Now::at_ms(cfg.start_ms, WALL_AT_ZERO_MS);
        let seed = core.seed;
        Sim {
            core: ShardCore::new(core, now),
            tickets: MemoryTickets::new(),
            server: SimServer::new(cfg.server.clone(), StdRng::seed_from_u64(seed ^ 0x5EED)),
            now_ms: cfg.start_ms,
            cfg,
            seq: 0,
            server_q: BinaryHeap::new(),
            client_q: BinaryHeap::new(),
            events: HashMap::new(),
            server_timers: BinaryHeap::new(),
            stalled_until: 0,
            refuse_connects: false,
            connects_by_source: HashMap::new(),
            loaded: Vec::new(),
            ios: Vec::new(),
            read_buf: BytesMut::new(),
            sink: Default::default(),
            paused: HashSet::new(),
            held_reads: Vec::new(),
            turns: 0,
            core_guard: None,
        }
    }

    /// Simulated time, ms.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// What the server counted.
    pub fn server(&self) -> &ServerCounts {
        &self.server.counts
    }

    /// Connections the server holds.
    pub fn server_connections(&self) -> usize {
        self.server.conns.len()
    }

    /// The server takes no input until `until_ms`, then handles what waited (late answers).
    pub fn stall_server_until(&mut self, until_ms: u64) {
        self.stalled_until = until_ms;
    }

    /// Limits the server to `handshakes` and `fast_connects` per second (0: unlimited), as
    /// `serve --max-handshakes-per-sec` does: requests over it wait and are answered late.
    pub fn limit_server(&mut self, handshakes: f64, fast_connects: f64) {
        self.server.capacity.handshakes.set_rate(handshakes);
        self.server.capacity.fast_connects.set_rate(fast_connects);
    }

    /// Refuse (or accept again) new connections.
    pub fn refuse_connects(&mut self, refuse: bool) {
        self.refuse_connects = refuse;
    }

    /// The server closes every connection (the admin close-all).
    pub fn close_all(&mut self) {
        let mut out = ServerOut::default();
        self.server.close_all(&mut out);
        self.send_server_out(out);
    }

    /// The server forgets its reusable sessions (fast connects then get ERROR 103).
    pub fn expire_sessions(&mut self) {
        self.server.expire_sessions();
    }

    /// Pushes to `user`; returns how many connections took it.
    pub fn push(&mut self, user: &str, content: &[u8], flags: Flags) -> usize {
        let mut out = ServerOut::default();
        let n = self.server.push(user, content, flags, &mut out);
        self.send_server_out(out);
        n
    }

    /// How the server answers HTTP_PROXY requests from now on (it forwards them only with
    /// `SessionConfig::http_proxy` set; otherwise ERROR 101 and a close, as the real one).
    pub fn answer_http(&mut self, answer: SimHttp) {
        self.server.http = answer;
    }

    /// Starts a device-originated request now, as a driver does for a command: then the
    /// turn ends (its frames sealed and written).
    pub fn start_upstream(
        &mut self,
        device: u64,
        tag: u64,
        request: crate::device::UpstreamRequest,
        timeout_ms: u32,
    ) {
        let now = self.now();
        self.guard(true);
        self.core
            .start_upstream(now, device, tag, request, timeout_ms);
        self.core.handle_timeout(now);
        self.guard(false);
        self.start_io();
    }

    /// Sends raw bytes from the server to the client of `conn`.
    pub fn inject(&mut self, conn: ConnId, bytes: &[u8]) {
        self.schedule(
            self.cfg.latency_ms,
            Net::ToClient(conn, Bytes::copy_from_slice(bytes)),
        );
    }

    /// The server's connections (for scripted faults).
    pub fn server_conns(&self) -> Vec<ConnId> {
        let mut v: Vec<_> = self.server.conns.keys().copied().collect();
        v.sort();
        v
    }

    /// The sink's consumer takes its `n` oldest records (a BIZ_ACK push is acked only now).
    pub fn sink_take(&mut self, n: usize) {
        let now = self.now();
        self.guard(true);
        for _ in 0..n {
            let Some(token) = self.sink.pop_front() else {
                break;
            };
            self.core.handle_sink_took(now, token);
        }
        self.guard(false);
        self.start_io();
    }

    /// Runs turns until `done` holds or `limit_ms` of simulated time has passed since now;
    /// returns whether `done` held.
    pub fn run_until(&mut self, limit_ms: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now_ms.saturating_add(limit_ms);
        loop {
            if done(self) {
                return true;
            }
            let Some(next) = self.next_time() else {
                return done(self);
            };
            if next > end {
                self.now_ms = end;
                return done(self);
            }
            self.step(next);
        }
    }

    /// Runs for `ms` of simulated time.
    pub fn run_for(&mut self, ms: u64) {
        self.run_until(ms, |_| false);
    }

    /// Stops the core, lets the network settle, and starts a new core for `cfg` with the same
    /// tickets and server: a fleet run again.
    pub fn restart(&mut self, cfg: CoreConfig, limit_ms: u64) -> bool {
        // Connection ids start again with the new core: nothing of the old may be in flight.
        let settled =
            |s: &Sim| s.server_connections() == 0 && s.client_q.is_empty() && s.server_q.is_empty();
        if !self.stop(limit_ms) || !self.run_until(limit_ms, settled) {
            return false;
        }
        self.core = ShardCore::new(cfg, self.now());
        true
    }

    /// Asks the core to stop gracefully and runs until it finished (bounded).
    pub fn stop(&mut self, limit_ms: u64) -> bool {
        let now = self.now();
        self.guard(true);
        self.core.handle_stop(now);
        self.guard(false);
        self.run_until(limit_ms, |s| s.core.is_finished())
    }

    fn now(&self) -> Now {
        Now::at_ms(self.now_ms, WALL_AT_ZERO_MS)
    }

    fn guard(&self, on: bool) {
        if let Some(g) = self.core_guard {
            g(on);
        }
    }

    fn next_time(&self) -> Option<u64> {
        let server = self.next_server_time();
        let client = self.next_turn();
        match (server, client) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn next_server_time(&self) -> Option<u64> {
        let q = self.server_q.peek().map(|Reverse((t, _))| *t);
        let timer = self.server_timers.peek().map(|Reverse((t, _))| *t);
        let t = match (q, timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(t.max(self.now_ms))
    }

    /// When the driver's next turn is: its next completion or deadline, on the turn grid.
    fn next_turn(&self) -> Option<u64> {
        let mut next = self.client_q.peek().map(|Reverse((t, _))| *t);
        let mut at = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(t) = self.core.poll_timeout() {
            at(t.0);
        }
        if !self.loaded.is_empty() {
            at(self.now_ms); // the store's answers are ready: the next turn takes them
        }
        let t = next?.max(self.now_ms);
        Some(match self.cfg.turn_ms {
            0 => t,
            n => t.div_ceil(n) * n,
        })
    }

    /// Advances to `t`: the server acts on what reached it, then, if a turn is due, the
    /// driver takes its turn.
    fn step(&mut self, t: u64) {
        self.now_ms = self.now_ms.max(t);
        self.server_side();
        if self.next_turn().is_some_and(|turn| turn <= self.now_ms) {
            self.turn();
        }
    }

    fn schedule(&mut self, after_ms: u64, ev: Net) {
        self.seq += 1;
        let entry = Reverse((self.now_ms + after_ms, self.seq));
        match ev {
            Net::Accept(..) | Net::ToServer(..) | Net::ClientShutdown(_) => {
                self.server_q.push(entry)
            }
            _ => self.client_q.push(entry),
        }
        self.events.insert(self.seq, ev);
    }

    fn pop_due(q: &mut BinaryHeap<Reverse<(u64, u64)>>, now: u64) -> Option<u64> {
        match q.peek() {
            Some(&Reverse((at, seq))) if at <= now => {
                q.pop();
                Some(seq)
            }
            _ => None,
        }
    }

    /// The server side at `now_ms`: connects, bytes and shutdowns that reached it, its timers.
    fn server_side(&mut self) {
        let wall = self.now().wall_ms;
        while let Some(seq) = Self::pop_due(&mut self.server_q, self.now_ms) {
            let Some(ev) = self.events.remove(&seq) else {
                continue;
            };
            match ev {
                Net::ToServer(conn, data) if self.now_ms < self.stalled_until => {
                    // Held until the stall ends, in order.
                    let wait = self.stalled_until - self.now_ms;
                    self.schedule(wait, Net::ToServer(conn, data));
                }
                Net::ToServer(conn, data) => {
                    let mut out = ServerOut::default();
                    let now = ServerTick(self.now_ms);
                    if let Some(at) = self.server.receive(conn, &data, now, wall, &mut out) {
                        // Held back by the capacity model: resume then, in order.
                        let wait = at.saturating_sub(self.now_ms);
                        self.schedule(wait, Net::ToServer(conn, Bytes::new()));
                    }
                    self.arm_server(conn);
                    self.send_server_out(out);
                }
                Net::ClientShutdown(conn) => self.server.client_closed(conn),
                Net::Accept(conn, ok) => {
                    if ok {
                        self.server.accept(conn, ServerTick(self.now_ms));
                        self.arm_server(conn);
                    }
                    self.schedule(self.cfg.latency_ms, Net::Connect(conn, ok));
                }
                // `schedule` queues client-side events elsewhere.
                Net::Connect(..) | Net::ToClient(..) | Net::ServerClosed(_) | Net::WriteDone(_) => {
                }
            }
        }
        self.server_timeouts();
    }

    /// One driver turn: the core gets every completion, then its timers, then its I/O starts.
    fn turn(&mut self) {
        self.turns += 1;
        let now = self.now();
        let mut for_core = Vec::new();
        while let Some(seq) = Self::pop_due(&mut self.client_q, self.now_ms) {
            if let Some(ev) = self.events.remove(&seq) {
                for_core.push(ev);
            }
        }
        self.guard(true);
        for ev in for_core {
            match ev {
                Net::Connect(conn, true) => self.core.handle_connected(now, conn),
                Net::Connect(conn, false) => self.core.handle_connect_failed(now, conn),
                Net::ToClient(conn, data) if self.paused.contains(&conn) => {
                    self.held_reads.push((conn, data));
                }
                Net::ToClient(conn, data) => {
                    self.read_buf.extend_from_slice(&data);
                    let mut buf = std::mem::take(&mut self.read_buf);
                    let _ = self.core.handle_read(now, conn, &mut buf);
                    buf.clear();
                    self.read_buf = buf;
                }
                Net::ServerClosed(conn) => self.core.handle_closed(now, conn),
                Net::WriteDone(conn) => self.core.handle_write_done(now, conn, true),
                Net::Accept(..) | Net::ToServer(..) | Net::ClientShutdown(_) => {}
            }
        }
        self.tickets.drain_ready(&mut self.loaded);
        for l in self.loaded.drain(..) {
            self.core.handle_ticket(now, l.device, l.ticket);
        }
        let c = self.tickets.take_counters();
        self.core.count_store(c.saved, c.errors);
        self.core.handle_timeout(now);
        self.guard(false);
        self.start_io();
    }

    fn start_io(&mut self) {
        self.guard(true);
        let mut ios = std::mem::take(&mut self.ios);
        while let Some(io) = self.core.poll_io() {
            ios.push(io);
        }
        while let Some(op) = self.core.poll_ticket() {
            op.apply(&mut self.tickets);
        }
        self.tickets.flush();
        self.tickets.drain_ready(&mut self.loaded);
        while let Some(item) = self.core.peek_delivery() {
            if self.sink.len() >= self.cfg.sink_capacity {
                self.core.sink_full();
                break;
            }
            let token = item.token;
            self.core.pop_delivery();
            self.sink.push_back(token);
        }
        while let Some(io) = self.core.poll_io() {
            ios.push(io);
        }
        self.guard(false);
        let latency = self.cfg.latency_ms;
        for io in ios.drain(..) {
            match io {
                Io::Connect { conn, src, .. } => {
                    *self.connects_by_source.entry(src).or_default() += 1;
                    let ok = !self.refuse_connects;
                    self.schedule(latency, Net::Accept(conn, ok));
                }
                Io::Write { conn, data } => {
                    // A driver copies into its socket's buffer and lets the core's go.
                    let copy = Bytes::copy_from_slice(&data);
                    drop(data);
                    self.schedule(latency, Net::ToServer(conn, copy));
                    self.schedule(0, Net::WriteDone(conn));
                }
                Io::Shutdown(conn) => {
                    // The socket is gone: so are its pause and the reads it held back.
                    self.paused.remove(&conn);
                    self.held_reads.retain(|(c, _)| *c != conn);
                    self.schedule(latency, Net::ClientShutdown(conn));
                }
                Io::PauseRead(conn) => {
                    self.paused.insert(conn);
                }
                Io::ResumeRead(conn) => {
                    self.paused.remove(&conn);
                    let held = std::mem::take(&mut self.held_reads);
                    for (c, data) in held {
                        if c == conn {
                            self.schedule(0, Net::ToClient(c, data));
                        } else {
                            self.held_reads.push((c, data));
                        }
                    }
                }
            }
        }
        self.ios = ios;
    }

    fn server_timeouts(&mut self) {
        while let Some(&Reverse((t, conn))) = self.server_timers.peek() {
            if t > self.now_ms {
                break;
            }
            self.server_timers.pop();
            if self.server.next_timeout(conn).map(|d| d.0) != Some(t) {
                continue; // stale
            }
            let mut out = ServerOut::default();
            self.server.timeout(conn, ServerTick(self.now_ms), &mut out);
            self.arm_server(conn);
            self.send_server_out(out);
        }
    }

    fn arm_server(&mut self, conn: ConnId) {
        if let Some(t) = self.server.next_timeout(conn) {
            self.server_timers.push(Reverse((t.0, conn)));
        }
    }

    fn send_server_out(&mut self, out: ServerOut) {
        let latency = self.cfg.latency_ms;
        for (conn, data) in out.to_client {
            self.schedule(latency, Net::ToClient(conn, data));
        }
        for conn in out.closed {
            self.schedule(latency, Net::ServerClosed(conn));
        }
    }
}

/// The core configuration the scenarios start from: `devices` from index 0 against one server,
/// no rate, no sink, no plan, a quick reconnect backoff (ceilings 50..400 ms), seed 7. Each
/// scenario changes what it is about.
#[cfg(test)]
fn scenario(devices: u32) -> CoreConfig {
    CoreConfig {
        first_device: 0,
        devices,
        rate_per_sec: 0.0,
        servers: vec!["127.0.0.1:3000".parse().expect("address")],
        sources: Vec::new(),
        device: Arc::new(crate::device::DeviceConfig {
            backoff_base_ms: 50,
            backoff_cap_ms: 400,
            ..crate::device::DeviceConfig::default()
        }),
        seed: 7,
        sink: false,
        drain_timeout_ms: 10_000,
        admission: Default::default(),
        plan: Default::default(),
        upstream: Default::default(),
    }
}

#[cfg(test)]
mod control_tests;
#[cfg(test)]
mod overload;
#[cfg(test)]
mod servers_tests;
#[cfg(test)]
mod stages;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod upstream_tests;
