//! The simulated network's server side: the reference [`ServerSession`] per connection, with
//! the shell duties the real server's shell has (session store, routes and kicks, counters),
//! all in memory and answered at once.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;

use crate::proto::{Cmd, Flags, FrameDecoder, MsgId, Unit};
use crate::server::capacity::{Capacity, CapacityLimits};
use crate::server::session::{ClientType, Effect, SessionEvent, SessionLookup, Tick as ServerTick};
use crate::server::{ServerSession, SessionConfig};
use crate::shard::core::ConnId;
use crate::tickets::format::ReusableSession;

/// What the simulated server counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerCounts {
    /// Connections accepted.
    pub accepted: u64,
    /// Handshakes done.
    pub handshakes: u64,
    /// Fast connects done.
    pub fast_connects: u64,
    /// Binds done.
    pub binds: u64,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Pushes written.
    pub pushes: u64,
    /// Message ids the clients acked, in arrival order.
    pub acked: Vec<i32>,
    /// ERROR frames sent, by code.
    pub errors: HashMap<u8, u64>,
    /// Connections the server closed, and connections the clients closed.
    pub server_closes: u64,
    /// Connections the clients shut down.
    pub client_closes: u64,
}

/// How the simulated proxy answers an HTTP_PROXY request (it has no backends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimHttp {
    /// An HttpResponse with this status; `raw`: without the session cipher, as the proxy's
    /// own failures (504, 503, 408, 502) go.
    Status(i32, bool),
    /// No answer ever (a backend that never answers and a proxy without a read timeout).
    Silent,
}

impl Default for SimHttp {
    /// A proxy that cannot reach its backend: 502, raw.
    fn default() -> Self {
        SimHttp::Status(502, true)
    }
}

/// One accepted connection.
#[derive(Debug)]
pub(super) struct ServerConn {
    pub(super) session: ServerSession,
    rx: BytesMut,
    pub(super) open: bool,
    /// The next frame (a handshake or fast connect) may run only from this time: the
    /// capacity model made it wait, and the connection's later input waits behind it.
    ready_at: Option<u64>,
}

/// What the server wants the network to do after handling input.
#[derive(Debug, Default)]
pub(super) struct ServerOut {
    /// Bytes for the client, per connection, in order.
    pub(super) to_client: Vec<(ConnId, Bytes)>,
    /// Connections the server closes (after the bytes above).
    pub(super) closed: Vec<ConnId>,
}

/// The server of the simulated network.
#[derive(Debug)]
pub(super) struct SimServer {
    cfg: Arc<SessionConfig>,
    pub(super) conns: HashMap<ConnId, ServerConn>,
    sessions: HashMap<String, ReusableSession>,
    routes: HashMap<(String, ClientType), ConnId>,
    decoder: FrameDecoder,
    rng: StdRng,
    next_msg_id: i32,
    pub(super) counts: ServerCounts,
    /// Handshakes and fast connects per second the server can take (the `serve` model).
    pub(super) capacity: Capacity,
    /// How HTTP_PROXY requests are answered.
    pub(super) http: SimHttp,
}

impl SimServer {
    pub(super) fn new(cfg: Arc<SessionConfig>, rng: StdRng) -> Self {
        SimServer {
            decoder: FrameDecoder::new(cfg.limits.max_body),
            cfg,
            conns: HashMap::new(),
            sessions: HashMap::new(),
            routes: HashMap::new(),
            rng,
            next_msg_id: 0,
            counts: ServerCounts::default(),
            capacity: Capacity::new(CapacityLimits::default()),
            http: SimHttp::default(),
        }
    }

    pub(super) fn accept(&mut self, conn: ConnId, now: ServerTick) {
        self.counts.accepted += 1;
        let session = ServerSession::new(self.cfg.clone(), now);
        self.conns.insert(
            conn,
            ServerConn {
                session,
                rx: BytesMut::new(),
                open: true,
                ready_at: None,
            },
        );
    }

    /// Bytes from the client. Returns a time at which to call again (with no bytes) when the
    /// capacity model holds the connection's next request back.
    pub(super) fn receive(
        &mut self,
        conn: ConnId,
        data: &[u8],
        now: ServerTick,
        wall_ms: i64,
        out: &mut ServerOut,
    ) -> Option<u64> {
        let c = self.conns.get_mut(&conn).filter(|c| c.open)?;
        c.rx.extend_from_slice(data);
        loop {
            let c = self.conns.get_mut(&conn)?;
            if !c.open {
                return None;
            }
            if let Some(at) = self.hold_back(conn, now.0) {
                return Some(at);
            }
            let c = self.conns.get_mut(&conn)?;
            match self.decoder.decode(&mut c.rx) {
                Ok(Some(Unit::Heartbeat)) => c.session.handle_heartbeat(now),
                Ok(Some(Unit::Frame(f))) => c.session.handle_frame(now, wall_ms, &mut self.rng, f),
                Ok(None) => return None,
                Err(e) => {
                    c.session.handle_decode_error(&e);
                    c.rx.clear();
                }
            }
            self.drain(conn, out);
        }
    }

    /// Whether the connection's next whole frame is a handshake or fast connect that the
    /// capacity model makes wait; reserves its time once.
    fn hold_back(&mut self, conn: ConnId, now: u64) -> Option<u64> {
        let c = self.conns.get_mut(&conn)?;
        if let Some(at) = c.ready_at {
            if now < at {
                return Some(at);
            }
            c.ready_at = None;
            return None; // its time came: the frame runs now
        }
        let skip = c.rx.iter().take_while(|b| **b == 0xDF).count();
        let head = c.rx.get(skip..skip + 13)?;
        let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]).max(0) as usize;
        if c.rx.len() < skip + 13 + len {
            return None; // not whole yet
        }
        let bucket = match head[4] {
            x if x == Cmd::Handshake as u8 => &mut self.capacity.handshakes,
            x if x == Cmd::FastConnect as u8 => &mut self.capacity.fast_connects,
            _ => return None,
        };
        let at = bucket.reserve(now);
        if at <= now {
            return None;
        }
        c.ready_at = Some(at);
        Some(at)
    }

    /// The client shut the connection down.
    pub(super) fn client_closed(&mut self, conn: ConnId) {
        if let Some(mut c) = self.conns.remove(&conn) {
            self.counts.client_closes += 1;
            if let Some(user) = c.session.user_id().map(str::to_owned) {
                self.routes
                    .retain(|(u, _), to| !(u == &user && *to == conn));
            }
            c.open = false;
        }
    }

    pub(super) fn timeout(&mut self, conn: ConnId, now: ServerTick, out: &mut ServerOut) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.handle_timeout(now);
            self.drain(conn, out);
        }
    }

    /// Pushes `content` to every connection `user` is routed to; returns how many took it.
    pub(super) fn push(
        &mut self,
        user: &str,
        content: &[u8],
        flags: Flags,
        out: &mut ServerOut,
    ) -> usize {
        let targets: Vec<ConnId> = self
            .routes
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|(_, c)| *c)
            .collect();
        let mut n = 0;
        for conn in targets {
            self.next_msg_id += 1;
            let id = MsgId(self.next_msg_id);
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            if c.session
                .handle_push(id, Bytes::copy_from_slice(content), flags)
            {
                n += 1;
                self.counts.pushes += 1;
            }
            self.drain(conn, out);
        }
        n
    }

    /// Closes every connection, as the admin close-all does.
    pub(super) fn close_all(&mut self, out: &mut ServerOut) {
        let all: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in all {
            self.close(conn, out);
        }
    }

    pub(super) fn close(&mut self, conn: ConnId, out: &mut ServerOut) {
        if self.conns.remove(&conn).is_some() {
            self.counts.server_closes += 1;
            self.routes.retain(|_, to| *to != conn);
            out.closed.push(conn);
        }
    }

    pub(super) fn next_timeout(&self, conn: ConnId) -> Option<ServerTick> {
        self.conns.get(&conn).and_then(|c| c.session.poll_timeout())
    }

    /// Drains one session after an input: bytes, then effects (answered at once).
    fn drain(&mut self, conn: ConnId, out: &mut ServerOut) {
        let mut tx = BytesMut::new();
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            if c.session.poll_transmit(&mut tx) {
                out.to_client.push((conn, tx.split().freeze()));
            }
            let Some(effect) = c.session.poll_effect() else {
                return;
            };
            match effect {
                Effect::Close(_) => {
                    self.close(conn, out);
                    return;
                }
                Effect::LoadSession { session_id } => {
                    let lookup = match self.sessions.get(&session_id) {
                        Some(s) => SessionLookup::Found(s.clone()),
                        None => SessionLookup::Missing,
                    };
                    c.session.handle_session_loaded(lookup);
                }
                Effect::StoreSession {
                    session_id,
                    session,
                    ..
                } => {
                    self.sessions.insert(session_id, session);
                }
                Effect::RegisterRoute {
                    user_id,
                    client_type,
                    ..
                } => {
                    let old = self.routes.insert((user_id.clone(), client_type), conn);
                    if let Some(old) = old.filter(|old| *old != conn) {
                        self.next_msg_id += 1;
                        let id = MsgId(self.next_msg_id);
                        if let Some(o) = self.conns.get_mut(&old) {
                            o.session.handle_kick(id, &user_id);
                            self.drain(old, out);
                        }
                    }
                }
                Effect::UnregisterRoute {
                    user_id,
                    client_type,
                } => {
                    let key = (user_id, client_type);
                    if self.routes.get(&key) == Some(&conn) {
                        self.routes.remove(&key);
                    }
                }
                Effect::Acked(id) => self.counts.acked.push(id.0),
                // The simulated network has no HTTP backends: the answer is scripted.
                Effect::HttpProxy { msg_id, request } => {
                    let SimHttp::Status(status_code, raw) = self.http else {
                        continue;
                    };
                    let resp = crate::proto::message::HttpResponse {
                        status_code,
                        reason_phrase: format!("status {status_code}"),
                        headers: "x-sim:1\n".into(),
                        // The backend echoes the request body.
                        body: request.body,
                    };
                    c.session.handle_http_response(msg_id, resp, raw);
                }
                Effect::Event(ev) => self.count(ev),
            }
        }
    }

    fn count(&mut self, ev: SessionEvent) {
        let c = &mut self.counts;
        match ev {
            SessionEvent::Handshake => c.handshakes += 1,
            SessionEvent::FastConnect => c.fast_connects += 1,
            SessionEvent::Bind => c.binds += 1,
            SessionEvent::Heartbeat => c.heartbeats += 1,
            SessionEvent::ErrorSent(code) => *c.errors.entry(code.0).or_default() += 1,
            _ => {}
        }
    }

    /// Forgets every stored session (the next fast connects get ERROR 103).
    pub(super) fn expire_sessions(&mut self) {
        self.sessions.clear();
    }
}
