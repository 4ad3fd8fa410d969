//! The pusher's send loop, on its own thread's runtime: paces pushes at the configured rate
//! while the control plane says the fleet holds its users, finds where each user's push goes
//! (the fixed gateway, or its routes in Redis), encodes them onto the [`Pool`]'s connections,
//! and ends each request by its reply or at its timeout, telling the control plane of both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::Sender;
use tokio::sync::mpsc;

use super::pool::Pool;
use super::{Flags3, Gateways, PushEvent, PusherConfig, PusherExit};
use crate::control::push_load::ledger::Reply;
use crate::gateway::driver::FromConn;
use crate::gateway::route_store::{RouteCache, RouteStore};
use crate::gateway::{encode_push, GatewayPush, Outcome, Tracker, WIRE_TIMEOUT_SLACK_MS};
use crate::proto::message::ErrorCode;
use crate::shard::core::push_probe;

/// Most pushes written in one turn of the loop.
const MAX_BATCH: u64 = 2_048;
/// How often the loop looks at the control plane's switches when it has nothing else to do.
const POLL: Duration = Duration::from_millis(5);

/// The send loop's state.
pub(super) struct Run {
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
    pub(super) fn new(
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

    pub(super) async fn run(mut self) -> PusherExit {
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
