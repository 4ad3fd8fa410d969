//! The raw io_uring driver of a [`ShardCore`]: one ring per shard thread, on the `io-uring`
//! crate. It reads the clock, moves completions into the core and the core's I/O out to the
//! ring, and forwards ticket requests and sink records. It makes no protocol decision.
//!
//! - `sys`: the ring, the `user_data` encoding (slot, generation, operation) and the eventfd
//!   that other threads (ticket store, sink) wake the shard with.
//! - `bufs`: the provided-buffer ring every socket's multishot receive draws from.
//! - `conn`: a connection's state and the table completions find it in.
//! - `ops`: starting the core's I/O and taking each completion.
//! - `store_rt`: the process's ticket-store runtime (fred needs tokio).
//!
//! A turn: reap every completion and feed it, take ticket answers and sink acceptances, end
//! the turn (`handle_timeout`), queue the turn's I/O, then one `io_uring_enter` submits it all
//! and waits for the next completion or the core's next deadline.

mod bufs;
mod conn;
mod ops;
mod store_rt;
mod sys;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender};

use self::bufs::BufRing;
use self::conn::Conns;
use self::sys::{Cqe, Ring, Waker};
use super::core::{ShardCore, SinkToken};
use super::glue::now;
use super::{Command, Report, ShardConfig, ShardExit};
use crate::device::Now;
use crate::stats::ShardStats;
use crate::tickets::{Loaded, TicketStore};

/// Receive buffers of the shard's pool, and their size. A frame larger than one buffer
/// gathers in its connection's buffer in the core while it arrives.
const RECV_BUFFERS: u16 = 512;
const RECV_BUFFER_SIZE: u32 = 2048;
/// How long the teardown waits for the kernel to give back every operation.
const TEARDOWN_WAIT: Duration = Duration::from_secs(5);

struct Driver {
    cfg: ShardConfig,
    core: ShardCore,
    store: Box<dyn TicketStore>,
    epoch: Instant,
    ring: Ring,
    bufs: BufRing,
    conns: Conns,
    waker: Arc<Waker>,
    /// The eventfd read's target; the kernel writes it while `wake_armed`.
    wake_buf: Box<u64>,
    wake_armed: bool,
    cqes: Vec<Cqe>,
    /// The turn's received bytes, handed to the core (reused).
    rx: BytesMut,
    loaded: Vec<Loaded>,
    sink_took: (Sender<SinkToken>, Receiver<SinkToken>),
    control: super::glue::ControlReplies,
    /// Replies owed for upstream commands.
    replies: super::glue::Replies,
    /// The core got input outside the feed (a write to a gone connection): run a turn now.
    again: bool,
    exiting: bool,
}

/// Runs a shard on this thread until the core has finished its graceful stop.
pub(super) fn run(
    cfg: ShardConfig,
    mut store: Box<dyn TicketStore>,
    (commands, command_wake): (Receiver<Command>, super::CommandWake),
    reports: Sender<Report>,
) -> ShardExit {
    let setup = Ring::new(cfg.ring_entries).and_then(|ring| {
        let bufs = BufRing::new(&ring.uring, RECV_BUFFERS, RECV_BUFFER_SIZE)?;
        Ok((ring, bufs, Waker::new()?))
    });
    let (ring, bufs, waker) = match setup {
        Ok(parts) => parts,
        Err(e) => {
            return ShardExit {
                stats: ShardStats::default(),
                store,
                error: Some(format!(
                    "io_uring is unavailable here ({e}); the fleet needs it"
                )),
            }
        }
    };
    // fred spawns its tasks on the current tokio runtime: the process's store runtime.
    let _store_rt = store_rt::handle().map(|h| h.enter());
    let waker = Arc::new(waker);
    let store_waker = waker.clone();
    store.attach(Arc::new(move || store_waker.wake()));
    // A command wakes the ring too (set before the first look at the channel, so none is
    // missed): the loop does not poll for them.
    let command_waker = waker.clone();
    let _ = command_wake.set(Arc::new(move || command_waker.wake()));
    let epoch = Instant::now();
    let slots = cfg.devices.end.saturating_sub(cfg.devices.start);
    let mut d = Driver {
        core: super::glue::core(&cfg, now(epoch)),
        cfg,
        store,
        epoch,
        ring,
        bufs,
        conns: Conns::new(slots),
        waker,
        wake_buf: Box::new(0),
        wake_armed: false,
        cqes: Vec::with_capacity(1024),
        rx: BytesMut::with_capacity(RECV_BUFFER_SIZE as usize),
        loaded: Vec::new(),
        sink_took: crossbeam_channel::unbounded(),
        control: Default::default(),
        replies: Default::default(),
        again: false,
        exiting: false,
    };
    d.arm_wake();
    d.main_loop(&commands, &reports);
    d.replies.abandon(&mut d.core);
    d.report(&reports);
    d.teardown();
    ShardExit {
        stats: d.core.stats().clone(),
        store: d.store,
        error: None,
    }
}

impl Driver {
    fn main_loop(&mut self, commands: &Receiver<Command>, reports: &Sender<Report>) {
        let mut next_report = Instant::now() + self.cfg.report_every;
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            let now = now(self.epoch);
            super::glue::commands(
                commands,
                &mut self.core,
                &mut self.control,
                &mut self.replies,
                now,
            );
            self.ring.reap(&mut cqes);
            for cqe in cqes.drain(..) {
                self.complete(now, cqe);
            }
            self.feed_others(now);
            // The turn's input is in: now its timers.
            self.core.handle_timeout(now);
            self.flush(now);
            if self.core.is_finished() && !self.store.pending() {
                break;
            }
            if Instant::now() >= next_report {
                self.report(reports);
                next_report = Instant::now() + self.cfg.report_every;
            }
            let mut wake = next_report;
            if let Some(t) = self.core.poll_timeout() {
                wake = wake.min(self.epoch + Duration::from_millis(t.0));
            }
            let wait = if std::mem::take(&mut self.again) {
                Duration::ZERO
            } else {
                wake.saturating_duration_since(Instant::now())
            };
            self.ring.submit_and_wait(wait);
        }
        self.cqes = cqes;
    }

    /// Ticket answers and sink acceptances that are ready.
    fn feed_others(&mut self, now: Now) {
        self.store.drain_ready(&mut self.loaded);
        for l in self.loaded.drain(..) {
            self.core.handle_ticket(now, l.device, l.ticket);
        }
        while let Ok(token) = self.sink_took.1.try_recv() {
            self.core.handle_sink_took(now, token);
        }
        let c = self.store.take_counters();
        self.core.count_store(c.saved, c.errors);
    }

    /// Queues the turn's I/O, sends its ticket requests, hands its pushes to the sink.
    fn flush(&mut self, now: Now) {
        self.deliver();
        self.control.answer(&mut self.core);
        while let Some(io) = self.core.poll_io() {
            self.start(now, io);
        }
        while let Some(op) = self.core.poll_ticket() {
            op.apply(self.store.as_mut());
        }
        self.store.flush();
        // A store that answers at once (the in-memory one) has no one to wake the ring: take
        // its answers now and turn again rather than wait for the next timer.
        self.store.drain_ready(&mut self.loaded);
        if !self.loaded.is_empty() {
            self.again = true;
        }
    }

    fn deliver(&mut self) {
        self.replies.deliver(&mut self.core);
        let waker = self.waker.clone();
        super::glue::deliver(&mut self.core, &self.cfg, &self.sink_took.0, &move || {
            waker.wake()
        });
    }

    fn report(&mut self, reports: &Sender<Report>) {
        super::glue::report(&mut self.core, self.cfg.id, self.epoch, reports);
    }

    /// Cancels every operation in flight and waits for each completion, so that no socket is
    /// closed and no buffer freed while the kernel may still use it. If the kernel has not
    /// given everything back in time, the memory is leaked rather than freed.
    fn teardown(&mut self) {
        self.exiting = true;
        self.cancel_all();
        let deadline = Instant::now() + TEARDOWN_WAIT;
        let mut cqes = std::mem::take(&mut self.cqes);
        while (self.wake_armed || self.conns.any_in_flight()) && Instant::now() < deadline {
            self.ring.submit_and_wait(Duration::from_millis(50));
            self.ring.reap(&mut cqes);
            for cqe in cqes.drain(..) {
                self.complete_exiting(cqe);
            }
        }
        if self.wake_armed || self.conns.any_in_flight() {
            tracing::warn!(
                shard = self.cfg.id,
                "operations still in flight at exit: their buffers are leaked, not freed"
            );
            std::mem::forget(std::mem::take(&mut self.conns));
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
            // The buffer ring stays registered, so `BufRing`'s drop leaks it too.
            return;
        }
        self.bufs.unregister(&self.ring.uring);
    }
}
