//! The shard loop: sockets and timers in, device calls, batched AES, writes out.

use std::cell::Cell;
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_uring::net::TcpStream;

use super::net::{self, Events, NetEvent, ReadGate, ReadShared};
use super::wheel::Wheel;
use super::{Command, Report, ShardConfig, ShardExit};
use crate::crypto::{AesBatch, JobId};
use crate::device::output::assemble;
use crate::device::{Ctx, Device, Effect, Event, Opened, Output, Seal, Tick};
use crate::proto::{Frame, FrameDecoder, MsgId, Unit};
use crate::sink::SinkRecord;
use crate::stats::{Latency, ShardStats};
use crate::tickets::{Loaded, TicketStore};

/// Read size of an idle connection: a heartbeat echo, an ack, a small push.
const IDLE_READ: u32 = 256;
/// Devices started per loop turn at most when the ramp has no rate, so the loop keeps
/// serving the sessions already up while a large fleet starts.
const MAX_STARTS_PER_TURN: usize = 512;
/// How often the loop looks at its command channel when nothing else wakes it.
const COMMAND_POLL: Duration = Duration::from_millis(50);

struct Conn {
    stream: Rc<TcpStream>,
    /// Bytes of a frame still arriving; empty (no allocation) between frames.
    rx: BytesMut,
    /// Read size and pause flag, shared with the reader task.
    read: Rc<ReadShared>,
    /// Bytes waiting for the write in flight.
    tx_waiting: BytesMut,
    writing: bool,
}

struct Slot {
    device: Device,
    conn: Option<Conn>,
    /// Connection generation: socket reports carry it, so a report about an old connection
    /// is recognised and dropped.
    gen: u32,
    /// The deadline this slot has in the wheel.
    armed: Tick,
}

/// A frame waiting for the turn's batch decryption.
struct Arrived {
    slot: u32,
    gen: u32,
    frame: Frame,
    job: Option<(JobId, u8)>,
}

/// Bytes a device produced this turn, with frames to seal spliced in later.
struct Outgoing {
    slot: u32,
    gen: u32,
    raw: Bytes,
    seals: Vec<Seal>,
    jobs: Vec<JobId>,
}

struct Shard {
    cfg: ShardConfig,
    slots: Vec<Slot>,
    wheel: Wheel,
    store: Box<dyn TicketStore>,
    events: Events,
    rng: StdRng,
    out: Output,
    stats: ShardStats,
    batch: AesBatch,
    arrived: Vec<Arrived>,
    outgoing: Vec<Outgoing>,
    loaded: Vec<Loaded>,
    decoder: FrameDecoder,
    epoch: Instant,
    now: Tick,
    now_us: u64,
    wall_ms: i64,
    started: usize,
    next_server: usize,
    next_source: usize,
    stopping: Stopping,
    /// Closed while draining; wakes paused readers.
    gate: Rc<ReadGate>,
    /// Pushes the sink had no room for, in arrival order; their connections do not read.
    backlog: VecDeque<(u32, SinkRecord)>,
    /// Slots whose reader is paused for the backlog.
    paused: Vec<u32>,
    /// Records handed to the sink whose `on_taken` has not come back.
    awaiting_sink: u64,
    /// Writes in flight (their completions still to come).
    writes_in_flight: u32,
}

/// A graceful stop, in order: stop starting devices and reading new pushes, let the sink take
/// what was received and send the acks it earned, then close every session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stopping {
    No,
    Draining { until: Instant },
    Closing { until: Instant },
}

pub(super) async fn run(
    cfg: ShardConfig,
    mut store: Box<dyn TicketStore>,
    commands: Receiver<Command>,
    reports: Sender<Report>,
) -> ShardExit {
    let (events, mut inbox) = unbounded_channel();
    let wake_tx = events.clone();
    store.attach(Arc::new(move || {
        let _ = wake_tx.send(NetEvent::TicketsReady);
    }));
    let rng = match cfg.seed {
        Some(seed) => StdRng::seed_from_u64(seed ^ cfg.id as u64),
        None => StdRng::from_entropy(),
    };
    let slots = cfg
        .devices
        .clone()
        .map(|index| Slot {
            device: Device::new(index),
            conn: None,
            gen: 0,
            armed: Tick::NEVER,
        })
        .collect();
    let mut shard = Shard {
        out: Output::new(cfg.device.limits.compress_threshold),
        decoder: FrameDecoder::new(cfg.device.limits.max_body),
        cfg,
        slots,
        wheel: Wheel::default(),
        store,
        events,
        rng,
        stats: ShardStats::default(),
        batch: AesBatch::new(),
        arrived: Vec::new(),
        outgoing: Vec::new(),
        loaded: Vec::new(),
        epoch: Instant::now(),
        now: Tick(0),
        now_us: 0,
        wall_ms: 0,
        started: 0,
        next_server: 0,
        next_source: 0,
        stopping: Stopping::No,
        gate: Rc::new(ReadGate::default()),
        backlog: VecDeque::new(),
        paused: Vec::new(),
        awaiting_sink: 0,
        writes_in_flight: 0,
    };
    shard.main_loop(&mut inbox, &commands, &reports).await;
    ShardExit {
        stats: shard.stats,
        store: shard.store,
        error: None,
    }
}

impl Shard {
    async fn main_loop(
        &mut self,
        inbox: &mut UnboundedReceiver<NetEvent>,
        commands: &Receiver<Command>,
        reports: &Sender<Report>,
    ) {
        let mut next_report = Instant::now() + self.cfg.report_every;
        loop {
            self.clock();
            // Commands.
            while let Ok(cmd) = commands.try_recv() {
                match cmd {
                    Command::Stop => self.stop(),
                }
            }
            if self.advance_stop() {
                self.report(reports);
                return;
            }
            // Socket reports that are ready, without waiting.
            while let Ok(ev) = inbox.try_recv() {
                self.on_net(ev);
            }
            self.fire_timers();
            self.ramp();
            self.take_tickets();
            self.drain_backlog();
            self.open_arrived();
            self.flush_outgoing();
            self.store.flush();
            if Instant::now() >= next_report {
                self.report(reports);
                next_report = Instant::now() + self.cfg.report_every;
            }
            // Sleep until something happens.
            let wake = self.next_wake().min(next_report);
            tokio::select! {
                biased;
                ev = inbox.recv() => {
                    if let Some(ev) = ev {
                        self.clock();
                        self.on_net(ev);
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    fn clock(&mut self) {
        let elapsed = self.epoch.elapsed();
        self.now_us = elapsed.as_micros() as u64;
        self.now = Tick(u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX - 1));
        self.wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + COMMAND_POLL;
        if let Some(t) = self.wheel.next() {
            wake = wake.min(self.epoch + Duration::from_millis(u64::from(t.0)));
        }
        if let Some(at) = self.next_start() {
            wake = wake.min(at);
        }
        if !self.backlog.is_empty() {
            // The sink gives no signal when it has room again: look again soon.
            wake = wake.min(Instant::now() + Duration::from_millis(2));
        }
        wake
    }

    /// When the ramp starts its next device, if it has devices left.
    fn next_start(&self) -> Option<Instant> {
        if self.stopping != Stopping::No || self.started >= self.slots.len() {
            return None;
        }
        if self.cfg.rate_per_sec <= 0.0 {
            return Some(Instant::now());
        }
        let secs = (self.started + 1) as f64 / self.cfg.rate_per_sec;
        Some(self.epoch + Duration::from_secs_f64(secs))
    }

    fn ramp(&mut self) {
        if self.stopping != Stopping::No {
            return;
        }
        let due = if self.cfg.rate_per_sec <= 0.0 {
            self.slots.len().min(self.started + MAX_STARTS_PER_TURN)
        } else {
            let secs = self.now_us as f64 / 1e6;
            ((secs * self.cfg.rate_per_sec) as usize).min(self.slots.len())
        };
        while self.started < due {
            let slot = self.started as u32;
            self.started += 1;
            self.call(slot, |d, ctx| d.handle_event(ctx, Event::Start));
        }
    }

    fn fire_timers(&mut self) {
        while let Some((t, slot)) = self.wheel.pop_due(self.now) {
            let s = &mut self.slots[slot as usize];
            if s.armed != t {
                continue; // stale
            }
            s.armed = Tick::NEVER;
            self.call(slot, |d, ctx| d.handle_timeout(ctx));
        }
    }

    fn take_tickets(&mut self) {
        self.store.drain_ready(&mut self.loaded);
        // Moved out and back so the buffer is reused and each ticket moves, uncloned.
        let mut loaded = std::mem::take(&mut self.loaded);
        for l in loaded.drain(..) {
            // Answers carry the global index; a stray one (not this shard's) is dropped.
            if !self.cfg.devices.contains(&l.device) {
                continue;
            }
            let slot = l.device - self.cfg.devices.start;
            self.call(slot, |d, ctx| d.handle_event(ctx, Event::Ticket(l.ticket)));
        }
        self.loaded = loaded;
        let c = self.store.take_counters();
        self.stats.counters.tickets_saved += c.saved;
        self.stats.counters.ticket_errors += c.errors;
    }

    /// Calls into one device, then dispatches what it produced.
    fn call(&mut self, slot: u32, f: impl FnOnce(&mut Device, &mut Ctx<'_>)) {
        let s = &mut self.slots[slot as usize];
        let mut ctx = Ctx {
            now: self.now,
            now_us: self.now_us,
            wall_ms: self.wall_ms,
            cfg: &self.cfg.device,
            rng: &mut self.rng,
            out: &mut self.out,
            stats: &mut self.stats,
        };
        f(&mut s.device, &mut ctx);
        let deadline = s.device.poll_timeout();
        self.wheel.arm(slot, &mut s.armed, deadline);
        if !self.out.nothing_to_send() {
            let raw = self.out.tx.split().freeze();
            let seals = std::mem::take(&mut self.out.seals);
            self.outgoing.push(Outgoing {
                slot,
                gen: s.gen,
                raw,
                seals,
                jobs: Vec::new(),
            });
        }
        let mut effects = std::mem::take(&mut self.out.effects);
        for effect in effects.drain(..) {
            self.apply(slot, effect);
        }
        self.out.effects = effects;
    }

    fn apply(&mut self, slot: u32, effect: Effect) {
        let index = self.slots[slot as usize].device.index();
        match effect {
            Effect::LoadTicket => self.store.load(index),
            Effect::SaveTicket(ticket) => self.store.save(index, &ticket, self.wall_ms),
            Effect::DeleteTicket => self.store.delete(index),
            Effect::Connect => self.connect(slot),
            Effect::Close(reason) => {
                tracing::debug!(device = index, ?reason, "closing");
                self.drop_conn(slot);
            }
            Effect::Deliver(d) => {
                let Some(sink) = self.cfg.sink.clone() else {
                    // No sink: the application takes the push at once.
                    if d.ack_on_take {
                        let id = d.msg_id;
                        self.call(slot, |dev, ctx| dev.handle_event(ctx, Event::SinkTook(id)));
                    }
                    return;
                };
                let gen = self.slots[slot as usize].gen;
                let (msg_id, ack, received_us) = (d.msg_id.0, d.ack_on_take, self.now_us);
                let events = self.events.clone();
                let record = SinkRecord {
                    device_id: self.cfg.device.device_id.render(index.into()),
                    user_id: self.cfg.device.user_id.render(index.into()),
                    msg_id,
                    flags: d.flags.0,
                    content: d.content,
                    received_at_ms: self.wall_ms,
                    on_taken: Some(Box::new(move || {
                        let _ = events.send(NetEvent::SinkTook {
                            slot,
                            gen,
                            msg_id,
                            ack,
                            received_us,
                        });
                    })),
                };
                self.awaiting_sink += 1;
                // Keep arrival order: nothing overtakes the backlog.
                let record = if self.backlog.is_empty() {
                    sink.try_send(record).err()
                } else {
                    Some(record)
                };
                if let Some(record) = record {
                    self.hold(slot, record);
                }
            }
        }
    }

    /// Keeps a push the sink had no room for and stops reading its connection until the
    /// backlog has drained: a slow sink slows the affected connections, never drops a push,
    /// and never lets a buffer grow without bound.
    fn hold(&mut self, slot: u32, record: SinkRecord) {
        self.backlog.push_back((slot, record));
        let s = &self.slots[slot as usize];
        if let Some(conn) = &s.conn {
            if !conn.read.paused.replace(true) {
                self.paused.push(slot);
            }
        }
    }

    fn drain_backlog(&mut self) {
        if self.backlog.is_empty() && self.paused.is_empty() {
            return;
        }
        let Some(sink) = self.cfg.sink.clone() else {
            return;
        };
        while let Some((slot, record)) = self.backlog.pop_front() {
            if let Err(record) = sink.try_send(record) {
                self.backlog.push_front((slot, record));
                break;
            }
        }
        if self.paused.is_empty() {
            return;
        }
        let waiting: HashSet<u32> = self.backlog.iter().map(|(slot, _)| *slot).collect();
        let mut resumed = false;
        let slots = &self.slots;
        self.paused.retain(|slot| {
            if waiting.contains(slot) {
                return true;
            }
            if let Some(conn) = &slots[*slot as usize].conn {
                conn.read.paused.set(false);
            }
            resumed = true;
            false
        });
        if resumed {
            self.gate.reopened.notify_waiters();
        }
    }

    fn connect(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.gen = s.gen.wrapping_add(1);
        let dst = self.cfg.servers[self.next_server % self.cfg.servers.len()];
        self.next_server = self.next_server.wrapping_add(1);
        let src = (!self.cfg.sources.is_empty()).then(|| {
            let src = self.cfg.sources[self.next_source % self.cfg.sources.len()];
            self.next_source = self.next_source.wrapping_add(1);
            src
        });
        let timeout = Duration::from_millis(u64::from(self.cfg.device.connect_timeout_ms));
        tokio_uring::spawn(net::connect(
            slot,
            s.gen,
            src,
            dst,
            timeout,
            self.events.clone(),
        ));
    }

    /// Ends the slot's connection: `shutdown` completes its read, whose task then ends and
    /// releases the socket.
    fn drop_conn(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.gen = s.gen.wrapping_add(1);
        if let Some(conn) = s.conn.take() {
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::TicketsReady => {}
            NetEvent::SinkTook {
                slot,
                gen,
                msg_id,
                ack,
                received_us,
            } => {
                self.awaiting_sink = self.awaiting_sink.saturating_sub(1);
                let took = self.now_us.saturating_sub(received_us);
                self.stats.latencies.record(Latency::PushToSink, took);
                // An ack belongs to the connection the push came on; after a reconnect the
                // server redelivers instead.
                if ack && self.slots[slot as usize].gen == gen {
                    let id = MsgId(msg_id);
                    self.call(slot, |d, ctx| d.handle_event(ctx, Event::SinkTook(id)));
                }
            }
            NetEvent::Connected { slot, gen, stream } => {
                let s = &mut self.slots[slot as usize];
                if s.gen != gen || matches!(self.stopping, Stopping::Closing { .. }) {
                    return; // abandoned; dropping the stream closes it
                }
                let stream = Rc::new(TcpStream::from_std(stream));
                let read = Rc::new(ReadShared {
                    size: Cell::new(IDLE_READ),
                    paused: Cell::new(false),
                });
                tokio_uring::spawn(net::read_loop(
                    slot,
                    gen,
                    stream.clone(),
                    read.clone(),
                    self.gate.clone(),
                    self.events.clone(),
                ));
                s.conn = Some(Conn {
                    stream,
                    rx: BytesMut::new(),
                    read,
                    tx_waiting: BytesMut::new(),
                    writing: false,
                });
                self.call(slot, |d, ctx| d.handle_event(ctx, Event::Connected));
            }
            NetEvent::ConnectFailed { slot, gen } => {
                if self.slots[slot as usize].gen == gen {
                    self.call(slot, |d, ctx| d.handle_event(ctx, Event::ConnectFailed));
                }
            }
            NetEvent::Closed { slot, gen } => {
                if self.slots[slot as usize].gen == gen {
                    self.drop_conn(slot);
                    self.call(slot, |d, ctx| d.handle_event(ctx, Event::Closed));
                }
            }
            NetEvent::WriteDone { slot, gen, ok } => self.on_write_done(slot, gen, ok),
            NetEvent::Data { slot, gen, buf } => self.on_data(slot, gen, buf),
        }
    }

    fn on_data(&mut self, slot: u32, gen: u32, buf: BytesMut) {
        let s = &mut self.slots[slot as usize];
        let Some(conn) = s.conn.as_mut().filter(|_| s.gen == gen) else {
            return;
        };
        if conn.rx.is_empty() {
            conn.rx = buf;
        } else {
            conn.rx.extend_from_slice(&buf);
        }
        let mut heartbeats = 0u32;
        let mut error = None;
        loop {
            match self.decoder.decode(&mut conn.rx) {
                Ok(Some(Unit::Heartbeat)) => heartbeats += 1,
                Ok(Some(Unit::Frame(frame))) => {
                    self.arrived.push(Arrived {
                        slot,
                        gen,
                        frame,
                        job: None,
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        // Grow the next read only while a big frame is arriving; release the buffer between
        // frames so an idle session holds only its reader's small buffer.
        let needed = self.decoder.bytes_needed(&conn.rx).unwrap_or(0);
        let want = needed.saturating_sub(conn.rx.len()).max(IDLE_READ as usize);
        conn.read.size.set(u32::try_from(want).unwrap_or(u32::MAX));
        if conn.rx.is_empty() {
            conn.rx = BytesMut::new();
        }
        for _ in 0..heartbeats {
            self.call(slot, |d, ctx| d.handle_heartbeat(ctx));
        }
        if let Some(e) = error {
            self.call(slot, |d, ctx| d.handle_stream_error(ctx, e));
        }
    }

    /// Decrypts every encrypted frame of the turn in one batch, then hands the frames to
    /// their devices in arrival order.
    fn open_arrived(&mut self) {
        if self.arrived.is_empty() {
            return;
        }
        self.batch.clear();
        for a in &mut self.arrived {
            let s = &self.slots[a.slot as usize];
            if s.gen != a.gen
                || a.frame.body.is_empty()
                || !a.frame.flags.contains(crate::proto::Flags::CRYPTO)
            {
                continue;
            }
            if let Some((cipher, generation)) = s.device.cipher_for_open() {
                a.job = Some((self.batch.push_decrypt(cipher, &a.frame.body), generation));
            }
        }
        self.batch.run();
        let arrived = std::mem::take(&mut self.arrived);
        for a in arrived {
            if self.slots[a.slot as usize].gen != a.gen {
                continue; // the device gave this connection up earlier in the turn
            }
            let opened = a.job.map(|(job, generation)| Opened {
                generation,
                body: self.batch.output(job).map(Bytes::copy_from_slice),
            });
            self.call(a.slot, |d, ctx| d.handle_frame(ctx, a.frame, opened));
        }
    }

    /// Seals every frame of the turn in one batch, then writes each connection's bytes.
    fn flush_outgoing(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        self.batch.clear();
        for o in &mut self.outgoing {
            for seal in &o.seals {
                o.jobs
                    .push(self.batch.push_encrypt(&seal.cipher, &seal.plain));
            }
        }
        self.batch.run();
        let outgoing = std::mem::take(&mut self.outgoing);
        for o in outgoing {
            let s = &mut self.slots[o.slot as usize];
            let Some(conn) = s.conn.as_mut().filter(|_| s.gen == o.gen) else {
                continue;
            };
            let batch = &self.batch;
            // Encryption cannot fail; an empty slice would only mean a lost job id.
            assemble(
                &o.raw,
                &o.seals,
                |i| batch.output(o.jobs[i]).unwrap_or(&[]),
                &mut conn.tx_waiting,
            );
            if !conn.writing {
                let buf = conn.tx_waiting.split();
                conn.writing = true;
                self.writes_in_flight += 1;
                tokio_uring::spawn(net::write_all(
                    o.slot,
                    o.gen,
                    conn.stream.clone(),
                    buf,
                    self.events.clone(),
                ));
            }
        }
    }

    fn on_write_done(&mut self, slot: u32, gen: u32, ok: bool) {
        self.writes_in_flight = self.writes_in_flight.saturating_sub(1);
        let s = &mut self.slots[slot as usize];
        let Some(conn) = s.conn.as_mut().filter(|_| s.gen == gen) else {
            return;
        };
        conn.writing = false;
        if !ok {
            self.drop_conn(slot);
            self.call(slot, |d, ctx| d.handle_event(ctx, Event::Closed));
            return;
        }
        if !conn.tx_waiting.is_empty() {
            let buf = conn.tx_waiting.split();
            conn.writing = true;
            self.writes_in_flight += 1;
            tokio_uring::spawn(net::write_all(
                slot,
                gen,
                conn.stream.clone(),
                buf,
                self.events.clone(),
            ));
        } else {
            // Release the write buffer between writes.
            conn.tx_waiting = BytesMut::new();
        }
    }

    /// Begins a graceful stop: no more starts, no more reads; what was received drains.
    fn stop(&mut self) {
        if self.stopping == Stopping::No {
            self.gate.closed.set(true);
            self.stats.counters.draining_shards = 1;
            self.stopping = Stopping::Draining {
                until: Instant::now() + self.cfg.drain_timeout,
            };
        }
    }

    /// Moves a graceful stop along; true once the shard may end.
    fn advance_stop(&mut self) -> bool {
        match self.stopping {
            Stopping::No => false,
            Stopping::Draining { until } => {
                // Acks the sink earned must be on the wire before the sockets close.
                let drained = self.backlog.is_empty()
                    && self.awaiting_sink == 0
                    && self.outgoing.is_empty()
                    && self.writes_in_flight == 0;
                if drained || Instant::now() >= until {
                    if !drained {
                        tracing::warn!(
                            shard = self.cfg.id,
                            held = self.backlog.len(),
                            awaiting = self.awaiting_sink,
                            "drain timed out; pushes not taken by the sink stay unacked"
                        );
                    }
                    for slot in 0..self.slots.len() as u32 {
                        self.call(slot, |d, ctx| d.handle_event(ctx, Event::Stop));
                    }
                    self.stats.counters.draining_shards = 0;
                    self.stopping = Stopping::Closing {
                        until: Instant::now() + Duration::from_secs(5),
                    };
                }
                false
            }
            Stopping::Closing { until } => {
                (self.writes_in_flight == 0 && !self.store.pending()) || Instant::now() >= until
            }
        }
    }

    fn report(&mut self, reports: &Sender<Report>) {
        let _ = reports.send(Report::Stats {
            shard: self.cfg.id,
            stats: Box::new(self.stats.clone()),
        });
    }
}
