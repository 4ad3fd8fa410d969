//! State every connection task and the admin API share: the connection registry, the route
//! table (user -> connection per client type), the push log with acks, counters and fault
//! switches. Plain mutexes and atomics: the reference server is not the hot path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use super::capacity::{Capacity, CapacityChange, CapacityLimits};
use super::routes::Routes;
use super::session::{ClientType, CloseReason, SessionConfig, SessionEvent, Tick};
use crate::proto::message::ErrorCode;
use crate::proto::{Flags, MsgId};
use crate::tickets::sessions::SessionStore;

/// A connection's number, unique within one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ConnId(pub u64);

/// Which ack a push asks for (the header flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// No flag: the device does not ack.
    #[default]
    None,
    /// AUTO_ACK: the device acks on receipt.
    Auto,
    /// BIZ_ACK: the device acks once the application took the message.
    Biz,
}

impl AckMode {
    /// The header flags.
    pub fn flags(self) -> Flags {
        match self {
            AckMode::None => Flags::NONE,
            AckMode::Auto => Flags::AUTO_ACK,
            AckMode::Biz => Flags::BIZ_ACK,
        }
    }
}

/// A command for one connection's task.
#[derive(Debug)]
pub(crate) enum ConnCmd {
    Push {
        msg_id: MsgId,
        content: Bytes,
        flags: Flags,
    },
    Kick {
        msg_id: MsgId,
        user_id: String,
    },
    /// A PUSH from the gateway port: the frame's flags ORed in, COMPRESS included (8.5);
    /// `done` hears when the write completed.
    GatewayPush {
        msg_id: MsgId,
        content: Bytes,
        flags: Flags,
        done: super::gateway::WriteDone,
    },
    Garbage,
    /// A forwarded HTTP_PROXY request's answer (see `http_proxy`).
    HttpAnswer {
        msg_id: MsgId,
        response: crate::proto::message::HttpResponse,
        raw: bool,
    },
    Close(CloseReason),
}

#[derive(Debug)]
pub(crate) struct ConnEntry {
    pub(crate) tx: super::inbox::InboxSender,
    pub(crate) peer: SocketAddr,
}

/// One push as the admin API sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PushRecord {
    /// The header message id the device acks with.
    pub msg_id: i32,
    /// The user it was routed to.
    pub user_id: String,
    /// The connection it went to.
    pub conn: ConnId,
    /// The ack it asked for.
    pub ack: AckMode,
    /// Whether an Ack with this id came back on that connection.
    pub acked: bool,
}

/// How many pushes the log remembers; the oldest are forgotten first.
const PUSH_LOG_CAP: usize = 100_000;

/// Counters, as `GET /stats` shows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServerStats {
    /// Connections open now.
    pub connections: u64,
    /// Connections accepted since start (rejected ones included).
    pub connections_total: u64,
    /// Successful handshakes.
    pub handshakes: u64,
    /// Successful fast connects.
    pub fast_connects: u64,
    /// Successful binds.
    pub binds: u64,
    /// Unbinds answered OK.
    pub unbinds: u64,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// KICKs sent.
    pub kicks: u64,
    /// Pushes written to connections.
    pub pushes_sent: u64,
    /// Ack frames received.
    pub acks_received: u64,
    /// Pushes the client sent up (cmd 15).
    pub client_pushes: u64,
    /// HTTP_PROXY requests answered.
    pub http_proxy: u64,
    /// ERROR frames sent, by code (0: the reason-only errors such as "Param invalid").
    pub errors_by_code: BTreeMap<u8, u64>,
    /// Closed connections, by [`CloseReason::name`].
    pub closes_by_reason: BTreeMap<&'static str, u64>,
    /// Handshakes and fast connects the capacity model made wait.
    pub capacity_delayed: u64,
    /// The sum of those waits, ms.
    pub capacity_wait_ms_total: u64,
    /// The capacity limits now in force.
    pub capacity: CapacityLimits,
    /// The gateway port's counters.
    pub gateway: super::gateway::GatewayStats,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    connections_total: AtomicU64,
    handshakes: AtomicU64,
    fast_connects: AtomicU64,
    binds: AtomicU64,
    unbinds: AtomicU64,
    heartbeats: AtomicU64,
    kicks: AtomicU64,
    pushes_sent: AtomicU64,
    acks_received: AtomicU64,
    client_pushes: AtomicU64,
    http_proxy: AtomicU64,
    capacity_delayed: AtomicU64,
    capacity_wait_ms_total: AtomicU64,
    errors_by_code: Mutex<BTreeMap<u8, u64>>,
    closes_by_reason: Mutex<BTreeMap<&'static str, u64>>,
}

/// The fault switches' current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FaultState {
    /// Whether heartbeats are echoed.
    pub heartbeat_echo: bool,
    /// Whether new connections are closed at accept.
    pub reject_new: bool,
    /// Delay before every write, ms (0: none).
    pub delay_ms: u64,
    /// Whether the gateway reproduces the real server's ack race (PROTOCOL.md 8.6).
    pub gateway_ack_race: bool,
}

#[derive(Debug)]
struct Faults {
    heartbeat_echo: AtomicBool,
    reject_new: AtomicBool,
    delay_ms: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) cfg: Arc<SessionConfig>,
    pub(crate) store: Arc<dyn SessionStore>,
    start: Instant,
    next_conn: AtomicU64,
    /// Server-originated message ids (pushes, kicks), one sequence as Java's `ID_SEQ`.
    next_msg_id: AtomicI32,
    conns: Mutex<HashMap<ConnId, ConnEntry>>,
    /// Indexed both ways: see `routes.rs` for the cost of each operation.
    routes: Mutex<Routes>,
    pushes: Mutex<BTreeMap<i32, PushRecord>>,
    counters: Counters,
    faults: Faults,
    /// Held only for one reservation or change: the wait itself happens outside.
    capacity: Mutex<Capacity>,
    /// The gateway port's ack waits, bind tags and counters.
    pub(crate) gateway: super::gateway::GatewayState,
    /// Users' routes in Redis, with `--redis` and a gateway port (set once at start).
    pub(crate) remote: std::sync::OnceLock<super::gateway::remote::RemoteRoutes>,
}

/// Which capacity bucket a request draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CapacityKind {
    Handshake,
    FastConnect,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map operation: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn new(
        cfg: Arc<SessionConfig>,
        store: Arc<dyn SessionStore>,
        capacity: CapacityLimits,
    ) -> Self {
        Shared {
            cfg,
            store,
            start: Instant::now(),
            next_conn: AtomicU64::new(1),
            next_msg_id: AtomicI32::new(1),
            conns: Mutex::default(),
            routes: Mutex::default(),
            pushes: Mutex::default(),
            counters: Counters::default(),
            faults: Faults {
                heartbeat_echo: AtomicBool::new(true),
                reject_new: AtomicBool::new(false),
                delay_ms: AtomicU64::new(0),
            },
            capacity: Mutex::new(Capacity::new(capacity)),
            gateway: super::gateway::GatewayState::default(),
            remote: std::sync::OnceLock::new(),
        }
    }

    // ----- time -----

    pub(crate) fn now(&self) -> Tick {
        Tick(u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn instant_of(&self, tick: Tick) -> Instant {
        self.start + std::time::Duration::from_millis(tick.0)
    }

    pub(crate) fn next_msg_id(&self) -> MsgId {
        // Wraps like Java's AtomicInteger; 0 is skipped so no push shares the garbage frame's id.
        loop {
            let id = self.next_msg_id.fetch_add(1, Relaxed);
            if id != 0 {
                return MsgId(id);
            }
        }
    }

    // ----- connections -----

    pub(crate) fn count_accept(&self) {
        self.counters.connections_total.fetch_add(1, Relaxed);
    }

    pub(crate) fn add_conn(&self, peer: SocketAddr, tx: super::inbox::InboxSender) -> ConnId {
        let id = ConnId(self.next_conn.fetch_add(1, Relaxed));
        lock(&self.conns).insert(id, ConnEntry { tx, peer });
        self.counters.connections.fetch_add(1, Relaxed);
        id
    }

    /// Forgets a closed connection and every route to it (`LocalRouterManager` on
    /// `ConnectionCloseEvent`). O(1) in the number of connections: the route index finds
    /// this connection's routes without a scan.
    pub(crate) fn remove_conn(&self, id: ConnId, reason: CloseReason) {
        if lock(&self.conns).remove(&id).is_some() {
            self.counters.connections.fetch_sub(1, Relaxed);
        }
        lock(&self.routes).remove_conn(id);
        self.gateway.forget_conn(id);
        self.count_close(reason);
    }

    pub(crate) fn count_close(&self, reason: CloseReason) {
        *lock(&self.counters.closes_by_reason)
            .entry(reason.name())
            .or_default() += 1;
    }

    pub(crate) fn peers(&self) -> Vec<SocketAddr> {
        let mut peers: Vec<_> = lock(&self.conns).values().map(|e| e.peer).collect();
        peers.sort();
        peers
    }

    /// Sends `make()` to every connection; returns how many took it.
    pub(crate) fn broadcast(&self, make: impl Fn() -> ConnCmd) -> usize {
        lock(&self.conns)
            .values()
            .filter(|e| e.tx.send(make()).is_ok())
            .count()
    }

    pub(crate) fn send_to(&self, id: ConnId, cmd: ConnCmd) -> bool {
        lock(&self.conns)
            .get(&id)
            .is_some_and(|e| e.tx.send(cmd).is_ok())
    }

    // ----- routes -----

    /// Routes `user_id` to `me`; KICKs the connection it pointed to before, if another.
    /// `tags` are the bind's tags (the gateway's broadcast filter).
    pub(crate) fn register_route(&self, user_id: String, ct: ClientType, me: ConnId, tags: String) {
        self.gateway.set_tags(me, tags);
        let old = lock(&self.routes).insert(user_id.clone(), ct, me);
        if let Some(old) = old.filter(|old| *old != me) {
            let msg_id = self.next_msg_id();
            if self.send_to(old, ConnCmd::Kick { msg_id, user_id }) {
                self.counters.kicks.fetch_add(1, Relaxed);
            }
        }
    }

    pub(crate) fn unregister_route(&self, user_id: String, ct: ClientType, me: ConnId) {
        if lock(&self.routes).remove(&user_id, ct, me) {
            self.gateway.forget_conn(me);
        }
    }

    /// The (user, client type) routes that point at `conn`.
    pub(crate) fn routes_of_conn(&self, conn: ConnId) -> Vec<(String, ClientType)> {
        lock(&self.routes).of_conn(conn)
    }

    /// The connection `user_id`'s route of client type `ct` points to.
    pub(crate) fn route_of(&self, user_id: &str, ct: ClientType) -> Option<ConnId> {
        lock(&self.routes).get(user_id, ct)
    }

    /// Every connection some route points to, each once, in connection order.
    pub(crate) fn routed_conns(&self) -> Vec<ConnId> {
        self.targets(None).into_iter().map(|(_, c)| c).collect()
    }

    /// The connections `user_id` is routed to (one per client type; a lookup, not a scan),
    /// or every routed one; each connection once, in connection order.
    fn targets(&self, user_id: Option<&str>) -> Vec<(String, ConnId)> {
        let routes = lock(&self.routes);
        let mut seen = HashSet::new();
        let mut out: Vec<_> = match user_id {
            Some(user) => routes
                .of_user(user)
                .filter(|conn| seen.insert(*conn))
                .map(|conn| (user.to_owned(), conn))
                .collect(),
            None => routes
                .all()
                .filter(|(_, conn)| seen.insert(*conn))
                .map(|(u, conn)| (u.to_owned(), conn))
                .collect(),
        };
        out.sort_by_key(|(_, conn)| *conn);
        out
    }

    // ----- push, kick, acks -----

    /// Pushes `content` to `user_id` (or every bound user); returns the message ids sent.
    pub(crate) fn push(&self, user_id: Option<&str>, content: Bytes, ack: AckMode) -> Vec<i32> {
        let mut ids = Vec::new();
        for (user, conn) in self.targets(user_id) {
            let msg_id = self.next_msg_id();
            let record = PushRecord {
                msg_id: msg_id.0,
                user_id: user,
                conn,
                ack,
                acked: false,
            };
            self.log_push(record);
            let cmd = ConnCmd::Push {
                msg_id,
                content: content.clone(),
                flags: ack.flags(),
            };
            if self.send_to(conn, cmd) {
                ids.push(msg_id.0);
            } else {
                lock(&self.pushes).remove(&msg_id.0);
            }
        }
        ids
    }

    fn log_push(&self, record: PushRecord) {
        let mut log = lock(&self.pushes);
        while log.len() >= PUSH_LOG_CAP {
            log.pop_first();
        }
        log.insert(record.msg_id, record);
    }

    /// Sends KICK to every connection `user_id` is routed to; returns how many.
    pub(crate) fn kick(&self, user_id: &str) -> usize {
        let mut n = 0;
        for (user, conn) in self.targets(Some(user_id)) {
            let msg_id = self.next_msg_id();
            if self.send_to(
                conn,
                ConnCmd::Kick {
                    msg_id,
                    user_id: user,
                },
            ) {
                self.counters.kicks.fetch_add(1, Relaxed);
                n += 1;
            }
        }
        n
    }

    pub(crate) fn record_ack(&self, msg_id: MsgId, me: ConnId, wall_ms: i64) {
        self.counters.acks_received.fetch_add(1, Relaxed);
        self.gateway.on_ack(msg_id, self.now(), wall_ms);
        if let Some(rec) = lock(&self.pushes).get_mut(&msg_id.0) {
            if rec.conn == me {
                rec.acked = true;
            }
        }
    }

    pub(crate) fn pushes(&self) -> Vec<PushRecord> {
        lock(&self.pushes).values().cloned().collect()
    }

    // ----- counters -----

    pub(crate) fn count(&self, ev: SessionEvent) {
        let c = &self.counters;
        let counter = match ev {
            SessionEvent::Handshake => &c.handshakes,
            SessionEvent::FastConnect => &c.fast_connects,
            SessionEvent::Bind => &c.binds,
            SessionEvent::Unbind => &c.unbinds,
            SessionEvent::Heartbeat => &c.heartbeats,
            SessionEvent::PushSent => &c.pushes_sent,
            SessionEvent::ClientPush => &c.client_pushes,
            SessionEvent::HttpProxy => &c.http_proxy,
            SessionEvent::ErrorSent(ErrorCode(code)) => {
                *lock(&c.errors_by_code).entry(code).or_default() += 1;
                return;
            }
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn stats(&self) -> ServerStats {
        let c = &self.counters;
        ServerStats {
            connections: c.connections.load(Relaxed),
            connections_total: c.connections_total.load(Relaxed),
            handshakes: c.handshakes.load(Relaxed),
            fast_connects: c.fast_connects.load(Relaxed),
            binds: c.binds.load(Relaxed),
            unbinds: c.unbinds.load(Relaxed),
            heartbeats: c.heartbeats.load(Relaxed),
            kicks: c.kicks.load(Relaxed),
            pushes_sent: c.pushes_sent.load(Relaxed),
            acks_received: c.acks_received.load(Relaxed),
            client_pushes: c.client_pushes.load(Relaxed),
            http_proxy: c.http_proxy.load(Relaxed),
            errors_by_code: lock(&c.errors_by_code).clone(),
            closes_by_reason: lock(&c.closes_by_reason).clone(),
            capacity_delayed: c.capacity_delayed.load(Relaxed),
            capacity_wait_ms_total: c.capacity_wait_ms_total.load(Relaxed),
            capacity: self.capacity_limits(),
            gateway: self.gateway.stats(),
        }
    }

    // ----- capacity -----

    /// Reserves one request of `kind` arriving at `now`; returns when it may run, counting
    /// it as delayed if that is later than `now`.
    pub(crate) fn reserve_capacity(&self, kind: CapacityKind, now: Tick) -> Tick {
        let at = {
            let mut cap = lock(&self.capacity);
            match kind {
                CapacityKind::Handshake => cap.handshakes.reserve(now.0),
                CapacityKind::FastConnect => cap.fast_connects.reserve(now.0),
            }
        };
        if at > now.0 {
            self.counters.capacity_delayed.fetch_add(1, Relaxed);
            self.counters
                .capacity_wait_ms_total
                .fetch_add(at - now.0, Relaxed);
        }
        Tick(at)
    }

    pub(crate) fn capacity_limits(&self) -> CapacityLimits {
        lock(&self.capacity).limits()
    }

    pub(crate) fn set_capacity(&self, change: CapacityChange) -> CapacityLimits {
        lock(&self.capacity).apply(change)
    }

    // ----- faults -----

    pub(crate) fn faults(&self) -> FaultState {
        FaultState {
            heartbeat_echo: self.faults.heartbeat_echo.load(Relaxed),
            reject_new: self.faults.reject_new.load(Relaxed),
            delay_ms: self.faults.delay_ms.load(Relaxed),
            gateway_ack_race: self.gateway.ack_race(),
        }
    }

    pub(crate) fn set_heartbeat_echo(&self, on: bool) {
        self.faults.heartbeat_echo.store(on, Relaxed);
    }

    pub(crate) fn set_reject_new(&self, on: bool) {
        self.faults.reject_new.store(on, Relaxed);
    }

    pub(crate) fn set_delay_ms(&self, ms: u64) {
        self.faults.delay_ms.store(ms, Relaxed);
    }
}
