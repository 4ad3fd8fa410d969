//! The pusher of `run --push-rate`: a thread with a current-thread tokio runtime (the control
//! plane's tokio side; shards never wait on it) that sends GATEWAY_PUSH at a steady rate to
//! the fleet's own users while the control plane says they are held, through the gateway
//! client's codec and [`Tracker`]. It tells the control plane of every send and every end
//! (reply, no reply, no route) over a channel; the [`super::ledger::Ledger`] does the rest.
//!
//! Where a push goes: a fixed gateway (`--gateway`, connections round-robin over its
//! addresses), or each user's routes in Redis (`mp:ur:`, read pipelined per batch, cached per
//! user for 5 minutes as upstream does, forgotten on ROUTER_CHANGE or OFFLINE): one push per
//! online route, to that route's gateway with its client type; a user with none gets a "no
//! route" end without a request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::ledger::Reply;
use crate::device::Template;
use crate::gateway::driver::{read_replies, FromConn};
use crate::gateway::route_store::{RouteCache, RouteStore};
use crate::gateway::{encode_push, GatewayPush, Outcome, Tracker, WIRE_TIMEOUT_SLACK_MS};
use crate::proto::message::ErrorCode;
use crate::proto::Flags;
use crate::shard::core::push_probe;

/// Most pushes written in one turn of the loop.
const MAX_BATCH: u64 = 2_048;
/// How often the loop looks at the control plane's switches when it has nothing else to do.
const POLL: Duration = Duration::from_millis(5);

/// Where pushes go.
#[derive(Clone, Debug)]
pub enum Gateways {
    /// Every push to these addresses, round-robin over the connections.
    Fixed(Vec<SocketAddr>),
    /// Each user's routes in the Redis at this URL.
    Redis(String),
}

/// What the pusher does.
#[derive(Clone, Debug)]
pub struct PusherConfig {
    /// Where pushes go.
    pub gateways: Gateways,
    /// The fleet's user id template.
    pub user_id: Template,
    /// The fleet's first device index and device count: users are pushed round-robin.
    pub first_device: u64,
    /// Devices.
    pub devices: u64,
    /// Pushes per second while active.
    pub rate: f64,
    /// Stop sending after this many.
    pub count: Option<u64>,
    /// Header flags: 0, AUTO_ACK or BIZ_ACK.
    pub flags: Flags,
    /// Content length (at least the probe header's).
    pub size: usize,
    /// Client type with a fixed gateway.
    pub client_type: i32,
    /// The client's own timeout ("no reply" after it); the wire timeout is 500 ms less.
    pub timeout: Duration,
    /// Connections per gateway.
    pub connections: usize,
}

/// What the pusher tells the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushEvent {
    /// Push `seq` is being written now; its header carries `wall_us`.
    Sent {
        /// Sequence (1, 2, 3...).
        seq: u64,
        /// When.
        at: Instant,
        /// The header's send time.
        wall_us: u64,
    },
    /// Push `seq`'s request ended.
    Ended {
        /// Sequence.
        seq: u64,
        /// How.
        reply: Reply,
        /// When.
        at: Instant,
    },
}

/// Gateway connection figures of a pusher that ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PusherExit {
    /// Connects that failed.
    pub connect_failures: u64,
    /// Frames from a gateway that were no reply.
    pub bad_frames: u64,
    /// Replies that matched nothing in flight.
    pub unmatched: u64,
}

/// A running pusher.
pub struct Pusher {
    active: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sent_all: Arc<AtomicBool>,
    events: Receiver<PushEvent>,
    thread: Option<JoinHandle<PusherExit>>,
}

impl Pusher {
    /// Starts the pusher, inactive; with Redis, once it connected.
    ///
    /// # Errors
    ///
    /// The thread cannot start, or Redis cannot be reached.
    pub fn start(cfg: PusherConfig) -> anyhow::Result<Pusher> {
        let (tx, events) = crossbeam_channel::unbounded();
        let active = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let sent_all = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = crossbeam_channel::bounded(1);
        let flags = Flags3 {
            active: active.clone(),
            stop: stop.clone(),
            sent_all: sent_all.clone(),
        };
        let no_runtime_tx = ready_tx.clone();
        let thread = crate::tokio_thread::spawn(
            "pusher",
            move || async move {
                let store = match &cfg.gateways {
                    Gateways::Redis(url) => match RouteStore::connect(url).await {
                        Ok(s) => Some(s),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.context("--push-rate routes in Redis")));
                            return PusherExit::default();
                        }
                    },
                    Gateways::Fixed(_) => None,
                };
                let _ = ready_tx.send(Ok(()));
                Run::new(cfg, store, tx, flags).run().await
            },
            move |e| {
                let _ = no_runtime_tx.send(Err(anyhow::anyhow!("pusher runtime: {e}")));
                PusherExit::default()
            },
        )?;
        ready
            .recv()
            .map_err(|_| anyhow::anyhow!("the pusher ended at start"))??;
        Ok(Pusher {
            active,
            stop,
            sent_all,
            events,
            thread: Some(thread),
        })
    }

    /// Sends while `on` (the fleet holds its users), pauses otherwise.
    pub fn set_active(&self, on: bool) {
        self.active.store(on, Relaxed);
    }

    /// Its sends and ends so far.
    pub fn events(&self) -> &Receiver<PushEvent> {
        &self.events
    }

    /// Whether it sent its `count`.
    pub fn sent_all(&self) -> bool {
        self.sent_all.load(Relaxed)
    }

    /// Stops sending; the requests in flight still end (reply or no reply at the timeout).
    pub fn stop_sending(&self) {
        self.stop.store(true, Relaxed);
    }

    /// Whether it ended (every request in flight ended after [`Pusher::stop_sending`]).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().map_or(true, JoinHandle::is_finished)
    }

    /// Waits for it to end (its events stay readable).
    pub fn join(&mut self) -> PusherExit {
        self.stop_sending();
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

struct Flags3 {
    active: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sent_all: Arc<AtomicBool>,
}

struct PoolConn {
    addr: SocketAddr,
    writer: Option<OwnedWriteHalf>,
    out: BytesMut,
}

/// Gateway connections, `per_addr` to each address, opened on first use and after a close.
struct Pool {
    conns: Vec<PoolConn>,
    by_addr: HashMap<SocketAddr, (Vec<usize>, usize)>,
    per_addr: usize,
    tx: mpsc::UnboundedSender<FromConn>,
    exit: PusherExit,
}

impl Pool {
    /// The connection the next push to `addr` goes on.
    fn pick(&mut self, addr: SocketAddr) -> usize {
        let (list, next) = self.by_addr.entry(addr).or_insert_with(|| {
            let first = self.conns.len();
            for _ in 0..self.per_addr {
                self.conns.push(PoolConn {
                    addr,
                    writer: None,
                    out: BytesMut::new(),
                });
            }
            ((first..first + self.per_addr).collect(), 0)
        });
        let i = list[*next % list.len()];
        *next = next.wrapping_add(1);
        i
    }

    /// Writes every connection's pending bytes, connecting first where needed. A failed
    /// connect or write drops the bytes: their requests end as "no reply" at the timeout.
    async fn flush(&mut self) {
        for i in 0..self.conns.len() {
            if self.conns[i].out.is_empty() {
                continue;
            }
            if self.conns[i].writer.is_none() {
                match TcpStream::connect(self.conns[i].addr).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        let (rd, wr) = stream.into_split();
                        tokio::spawn(read_replies(rd, i as u64, self.tx.clone()));
                        self.conns[i].writer = Some(wr);
                    }
                    Err(_) => self.exit.connect_failures += 1,
                }
            }
            let c = &mut self.conns[i];
            if let Some(w) = c.writer.as_mut() {
                if w.write_all(&c.out).await.is_err() {
                    c.writer = None;
                }
            }
            c.out.clear();
        }
    }
}

struct Run {
    cfg: PusherConfig,
    store: Option<RouteStore>,
    cache: RouteCache,
    resolved: HashMap<String, Option<SocketAddr>>,
    tracker: Tracker<(u64, u64)>,
    pool: Pool,
    replies: mpsc::UnboundedReceiver<FromConn>,
    events: Sender<PushEvent>,
    flags: Flags3,
    start: Instant,
    seq: u64,
    cursor: u64,
    content: Vec<u8>,
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Run {
    fn new(
        cfg: PusherConfig,
        store: Option<RouteStore>,
        events: Sender<PushEvent>,
        flags: Flags3,
    ) -> Run {
        let (tx, replies) = mpsc::unbounded_channel();
        let timeout_us = u64::try_from(cfg.timeout.as_micros()).unwrap_or(u64::MAX);
        Run {
            pool: Pool {
                conns: Vec::new(),
                by_addr: HashMap::new(),
                per_addr: cfg.connections.max(1),
                tx,
                exit: PusherExit::default(),
            },
            cfg,
            store,
            cache: RouteCache::default(),
            resolved: HashMap::new(),
            tracker: Tracker::new(timeout_us),
            replies,
            events,
            flags,
            start: Instant::now(),
            seq: 0,
            cursor: 0,
            content: Vec::new(),
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn count_reached(&self) -> bool {
        self.cfg.count.is_some_and(|c| self.seq >= c)
    }

    async fn run(mut self) -> PusherExit {
        let mut active_time = Duration::ZERO;
        let mut paced = 0u64; // pushes the pacing has let out (seqs of users with no route too)
        let mut last = Instant::now();
        let mut done = Vec::new();
        loop {
            let now = Instant::now();
            let stopping = self.flags.stop.load(Relaxed);
            let active = self.flags.active.load(Relaxed) && !stopping;
            if active {
                active_time += now - last;
            }
            last = now;
            if self.count_reached() {
                self.flags.sent_all.store(true, Relaxed);
            }
            if stopping && self.tracker.in_flight() == 0 {
                break;
            }
            let sending = active && !self.count_reached();
            let mut next_send = None;
            if sending {
                let due = (active_time.as_secs_f64() * self.cfg.rate) as u64 + 1;
                let batch = due.saturating_sub(paced).min(MAX_BATCH);
                if batch > 0 {
                    paced += batch;
                    self.send_batch(batch).await;
                }
                let at = Duration::from_secs_f64(paced as f64 / self.cfg.rate.max(1e-9));
                next_send = Some(now + at.saturating_sub(active_time));
            }
            let deadline = self
                .tracker
                .poll_timeout()
                .map(|us| self.start + Duration::from_micros(us));
            let wake = [next_send, deadline, Some(Instant::now() + POLL)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + POLL);
            tokio::select! {
                msg = self.replies.recv() => {
                    let mut msg = msg;
                    while let Some(m) = msg.take() {
                        self.on_conn(m);
                        msg = self.replies.try_recv().ok();
                    }
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
            self.tracker.handle_timeout(self.now_us(), &mut done);
            for c in done.drain(..) {
                self.end(c.tag.0, Reply::Gateway(c.outcome), c.tag.1);
            }
        }
        self.pool.exit.unmatched = self.tracker.unmatched();
        self.pool.exit
    }

    fn on_conn(&mut self, m: FromConn) {
        match m {
            FromConn::Reply(id, reply) => {
                if let Some(c) = self.tracker.handle_reply(self.now_us(), id, &reply) {
                    self.end(c.tag.0, Reply::Gateway(c.outcome), c.tag.1);
                }
            }
            FromConn::Bad => self.pool.exit.bad_frames += 1,
            FromConn::Closed(i) => {
                let i = usize::try_from(i).unwrap_or(usize::MAX);
                if let Some(c) = self.pool.conns.get_mut(i) {
                    c.writer = None;
                }
            }
        }
    }

    fn end(&mut self, seq: u64, reply: Reply, device: u64) {
        let stale = matches!(
            reply,
            Reply::Gateway(Outcome::Error(c)) if c == ErrorCode::OFFLINE.0 || c == ErrorCode::ROUTER_CHANGE.0
        );
        if stale && self.store.is_some() {
            self.cache.forget(&self.cfg.user_id.render(device));
        }
        let _ = self.events.send(PushEvent::Ended {
            seq,
            reply,
            at: Instant::now(),
        });
    }

    /// The next `n` users' pushes, encoded per connection, then written.
    async fn send_batch(&mut self, n: u64) {
        let span = self.cfg.devices.max(1);
        let devices: Vec<u64> = (0..n)
            .map(|k| self.cfg.first_device + (self.cursor + k) % span)
            .collect();
        self.cursor = (self.cursor + n) % span;
        let users: Vec<String> = devices
            .iter()
            .map(|&d| self.cfg.user_id.render(d))
            .collect();
        let targets = self.targets(&users).await;
        let timeout_ms = u64::try_from(self.cfg.timeout.as_millis()).unwrap_or(u64::MAX);
        let wire =
            i32::try_from(timeout_ms.saturating_sub(WIRE_TIMEOUT_SLACK_MS)).unwrap_or(i32::MAX);
        for ((device, user), targets) in devices.into_iter().zip(users).zip(targets) {
            if targets.is_empty() {
                if self.count_reached() {
                    break;
                }
                self.seq += 1;
                let at = Instant::now();
                let _ = self.events.send(PushEvent::Sent {
                    seq: self.seq,
                    at,
                    wall_us: wall_us(),
                });
                self.end(self.seq, Reply::NoRoute, device);
                continue;
            }
            for (addr, client_type) in targets {
                if self.count_reached() {
                    break;
                }
                self.seq += 1;
                let wall = wall_us();
                self.content.clear();
                push_probe::write_header(&mut self.content, self.seq, wall);
                while self.content.len() < self.cfg.size {
                    self.content.push(b'a' + (self.content.len() % 26) as u8);
                }
                let push = GatewayPush {
                    user_id: user.clone(),
                    client_type,
                    timeout: wire,
                    content: Bytes::copy_from_slice(&self.content),
                    ..GatewayPush::default()
                };
                let id = self.tracker.start(self.now_us(), (self.seq, device));
                let conn = self.pool.pick(addr);
                encode_push(&mut self.pool.conns[conn].out, &push, id, self.cfg.flags);
                let _ = self.events.send(PushEvent::Sent {
                    seq: self.seq,
                    at: Instant::now(),
                    wall_us: wall,
                });
            }
        }
        self.pool.flush().await;
    }

    /// Where each user's push goes: (gateway, client type) per online route.
    async fn targets(&mut self, users: &[String]) -> Vec<Vec<(SocketAddr, i32)>> {
        let Some(store) = &self.store else {
            let Gateways::Fixed(addrs) = &self.cfg.gateways else {
                return vec![Vec::new(); users.len()];
            };
            let ct = self.cfg.client_type;
            return users
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    let a = addrs[(self.cursor as usize + i) % addrs.len().max(1)];
                    vec![(a, ct)]
                })
                .collect();
        };
        let now = Instant::now();
        let missing: Vec<String> = users
            .iter()
            .filter(|u| self.cache.get(u, now).is_none())
            .cloned()
            .collect();
        if !missing.is_empty() {
            match store.routes_of(&missing).await {
                Ok(found) => {
                    for (u, routes) in missing.into_iter().zip(found) {
                        self.cache.put(u, routes, now);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "route lookup failed"),
            }
        }
        let mut out = Vec::with_capacity(users.len());
        for u in users {
            let routes: Vec<(String, i32)> = self
                .cache
                .get(u, now)
                .unwrap_or(&[])
                .iter()
                .filter(|r| r.route.is_online())
                .map(|r| (r.route.gateway(), r.client_type))
                .collect();
            let mut t = Vec::new();
            for (gw, ct) in routes {
                if let Some(addr) = self.resolve(&gw).await {
                    t.push((addr, ct));
                }
            }
            out.push(t);
        }
        out
    }

    async fn resolve(&mut self, gateway: &str) -> Option<SocketAddr> {
        if let Some(a) = self.resolved.get(gateway) {
            return *a;
        }
        let addr = match gateway.parse() {
            Ok(a) => Some(a),
            Err(_) => tokio::net::lookup_host(gateway)
                .await
                .ok()
                .and_then(|mut it| it.next()),
        };
        self.resolved.insert(gateway.to_owned(), addr);
        addr
    }
}
