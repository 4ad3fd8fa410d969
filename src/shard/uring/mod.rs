//! The tokio-uring driver of a [`ShardCore`]: it reads the clock, moves completions into the
//! core and the core's I/O out to sockets, and forwards ticket requests and sink records. It
//! makes no protocol decision; `core` makes them all.

mod conn;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::Notify;

use self::conn::{Completion, ConnIo, Queue};
use super::core::{ConnId, Io, ShardCore, SinkToken};
use super::glue::now;
use super::{Command, Report, ShardConfig, ShardExit};
use crate::device::Now;
use crate::tickets::{Loaded, TicketStore};

/// How often the loop looks at its command channel when nothing else wakes it.
const COMMAND_POLL: Duration = Duration::from_millis(50);

struct Driver {
    cfg: ShardConfig,
    core: ShardCore,
    store: Box<dyn TicketStore>,
    epoch: Instant,
    queue: Queue,
    wake: Arc<Notify>,
    conns: HashMap<ConnId, Rc<ConnIo>>,
    completions: VecDeque<Completion>,
    loaded: Vec<Loaded>,
    sink_took: (Sender<SinkToken>, Receiver<SinkToken>),
    control: super::glue::ControlReplies,
    /// Replies owed for upstream commands.
    replies: super::glue::Replies,
}

pub(super) async fn run(
    cfg: ShardConfig,
    mut store: Box<dyn TicketStore>,
    commands: Receiver<Command>,
    reports: Sender<Report>,
) -> ShardExit {
    let wake = Arc::new(Notify::new());
    let store_wake = wake.clone();
    store.attach(Arc::new(move || store_wake.notify_one()));
    let epoch = Instant::now();
    let mut d = Driver {
        core: super::glue::core(&cfg, now(epoch)),
        cfg,
        store,
        epoch,
        queue: Queue::new(wake.clone()),
        wake,
        conns: HashMap::new(),
        completions: VecDeque::new(),
        loaded: Vec::new(),
        sink_took: crossbeam_channel::unbounded(),
        control: Default::default(),
        replies: Default::default(),
    };
    d.main_loop(&commands, &reports).await;
    d.replies.abandon(&mut d.core);
    d.report(&reports);
    ShardExit {
        stats: d.core.stats().clone(),
        store: d.store,
        error: None,
    }
}

impl Driver {
    async fn main_loop(&mut self, commands: &Receiver<Command>, reports: &Sender<Report>) {
        let mut next_report = Instant::now() + self.cfg.report_every;
        loop {
            let now = now(self.epoch);
            super::glue::commands(
                commands,
                &mut self.core,
                &mut self.control,
                &mut self.replies,
                now,
            );
            self.feed(now);
            // The turn's input is in: now its timers.
            self.core.handle_timeout(now);
            self.flush();
            if self.core.is_finished() && !self.store.pending() {
                return;
            }
            if Instant::now() >= next_report {
                self.report(reports);
                next_report = Instant::now() + self.cfg.report_every;
            }
            let mut wake = (Instant::now() + COMMAND_POLL).min(next_report);
            if let Some(t) = self.core.poll_timeout() {
                wake = wake.min(self.epoch + Duration::from_millis(t.0));
            }
            let notified = self.wake.notified();
            tokio::select! {
                biased;
                () = notified => {}
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// Every completion, ticket answer and sink acceptance that is ready.
    fn feed(&mut self, now: Now) {
        self.queue.drain_into(&mut self.completions);
        while let Some(c) = self.completions.pop_front() {
            match c {
                Completion::Connected(id, stream) => {
                    let io = ConnIo::start(id, stream, &self.queue);
                    self.conns.insert(id, io);
                    self.core.handle_connected(now, id);
                }
                Completion::ConnectFailed(id) => self.core.handle_connect_failed(now, id),
                Completion::Readable(id) => {
                    let Some(io) = self.conns.get(&id).cloned() else {
                        continue;
                    };
                    let taken = io.read_buf.borrow_mut().take();
                    let Some(mut buf) = taken else { continue };
                    let size = self.core.handle_read(now, id, &mut buf);
                    io.give_back(buf, size);
                }
                Completion::Closed(id) => {
                    if let Some(io) = self.conns.remove(&id) {
                        io.shutdown(); // ends its writer
                    }
                    self.core.handle_closed(now, id);
                }
                Completion::WriteDone(id, ok) => self.core.handle_write_done(now, id, ok),
            }
        }
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

    /// Starts the turn's I/O, sends its ticket requests, hands its pushes to the sink.
    fn flush(&mut self) {
        self.deliver();
        self.control.answer(&mut self.core);
        while let Some(io) = self.core.poll_io() {
            self.start(io);
        }
        while let Some(op) = self.core.poll_ticket() {
            op.apply(self.store.as_mut());
        }
        self.store.flush();
    }

    fn start(&mut self, io: Io) {
        match io {
            Io::Connect { conn, src, dst } => {
                let timeout = Duration::from_millis(u64::from(self.cfg.device.connect_timeout_ms));
                tokio_uring::spawn(conn::connect(conn, src, dst, timeout, self.queue.clone()));
            }
            Io::Write { conn, data } => match self.conns.get(&conn) {
                Some(io) => io.write(&data),
                // Already gone: the write is done, unsent.
                None => self.core.handle_write_done(now(self.epoch), conn, false),
            },
            Io::Shutdown(conn) => {
                if let Some(io) = self.conns.get(&conn) {
                    io.shutdown();
                }
            }
            Io::PauseRead(conn) | Io::ResumeRead(conn) => {
                let paused = matches!(io, Io::PauseRead(_));
                if let Some(io) = self.conns.get(&conn) {
                    io.set_paused(paused);
                }
            }
        }
    }

    fn deliver(&mut self) {
        self.replies.deliver(&mut self.core);
        let wake = self.wake.clone();
        super::glue::deliver(&mut self.core, &self.cfg, &self.sink_took.0, &move || {
            wake.notify_one()
        });
    }

    fn report(&mut self, reports: &Sender<Report>) {
        super::glue::report(&mut self.core, self.cfg.id, self.epoch, reports);
    }
}
