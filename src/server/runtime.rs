//! Starting and stopping the server: the runtime, the accept loop, and [`ServerHandle`].
//!
//! Runtime choice: tokio multi-thread (epoll). The reference server is a peer for tests and
//! staging, not the product: tokio is mature, its readiness model lets an idle connection
//! wait with no buffer at all (an io_uring read must own one), one task per connection keeps
//! the code plain, and io_uring experiments stay with the fleet shards. Handshakes cost one
//! RSA-1024 CRT decryption each, done inline on the worker that reads the frame; with the
//! runtime's worker threads that is far more handshakes per second than a fleet ramps; the
//! capacity model ([`super::capacity`]) is how a test makes it fewer.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::admin;
use super::capacity::{CapacityChange, CapacityLimits};
use super::conn;
use super::gateway;
use super::session::CloseReason;
use super::shared::{AckMode, ConnCmd, FaultState, PushRecord, ServerStats, Shared};
use super::ServerConfig;
use crate::tickets::sessions::{MemoryStore, SessionStore, StoreError};

/// Where a push goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushTarget {
    /// Every connection this user is bound on (one per client type).
    User(String),
    /// Every bound connection.
    All,
}

/// The outcome of a push.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PushResult {
    /// How many connections it was handed to.
    pub sent: usize,
    /// The message ids, one per connection; acks come back with these.
    pub msg_ids: Vec<i32>,
}

/// The reference MPUSH server. See [`Server::start`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Binds the listener (and the admin listener, if configured), starts the runtime on
    /// its own threads and returns a handle. Port 0 picks a free port; read it back with
    /// [`ServerHandle::local_addr`]. Also raises the soft descriptor limit to the hard one.
    ///
    /// # Errors
    ///
    /// If the runtime cannot start or an address cannot be bound.
    pub fn start(config: ServerConfig) -> io::Result<ServerHandle> {
        Self::start_with_store(config, Arc::new(MemoryStore::new()))
    }

    /// As [`Server::start`], with a given session store.
    ///
    /// # Errors
    ///
    /// As [`Server::start`].
    pub fn start_with_store(
        config: ServerConfig,
        store: Arc<dyn SessionStore>,
    ) -> io::Result<ServerHandle> {
        if let Err(e) = raise_nofile_limit() {
            tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE");
        }
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name("mpush-serve");
        if let Some(n) = config.workers {
            builder.worker_threads(n.max(1));
        }
        let rt = builder.build()?;
        let cfg = Arc::new(config.session);
        let shared = Arc::new(Shared::new(cfg, store, config.capacity));
        shared.gateway.set_ack_race(config.gateway_ack_race);
        let (listener, admin_listener, gateway_listener) = rt.block_on(async {
            let listener = listen(config.listen)?;
            let admin = match config.admin {
                Some(addr) => Some(TcpListener::bind(addr).await?),
                None => None,
            };
            let gateway = config.gateway.map(listen).transpose()?;
            io::Result::Ok((listener, admin, gateway))
        })?;
        let gateway_addr = gateway_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        if let (Some(url), Some(gw)) = (&config.routes_redis, gateway_addr) {
            let store = rt
                .block_on(crate::gateway::route_store::RouteStore::connect(url))
                .map_err(|e| io::Error::other(format!("routes in Redis: {e:#}")))?;
            let _ = shared
                .remote
                .set(super::gateway::remote::RemoteRoutes::new(store, gw));
        }
        let local_addr = listener.local_addr()?;
        let admin_addr = admin_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        rt.spawn(accept_loop(shared.clone(), listener, stop_rx.clone()));
        if let Some(l) = gateway_listener {
            rt.spawn(gateway_accept_loop(shared.clone(), l, stop_rx.clone()));
        }
        let handle = ServerHandle {
            rt: Some(rt),
            ops: ServerOps { shared },
            local_addr,
            admin_addr,
            gateway_addr,
            stop: stop_tx,
        };
        if let Some(l) = admin_listener {
            let ops = handle.ops();
            let token = config.admin_token.map(|t| t.0);
            handle.runtime().spawn(admin::serve(l, ops, token, stop_rx));
        }
        Ok(handle)
    }
}

/// A running server. Dropping it shuts the server down. Its operations (push, kick, stats,
/// fault switches) are those of [`ServerOps`], which it dereferences to.
#[derive(Debug)]
pub struct ServerHandle {
    rt: Option<Runtime>,
    ops: ServerOps,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    gateway_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
}

impl ServerHandle {
    /// The MPUSH listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin API's address, if one was configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The gateway port's address, if one was configured.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway_addr
    }

    /// Fault: expire every reusable session (fast connects then get ERROR 103). Blocks the
    /// calling thread until the store has done it.
    ///
    /// # Errors
    ///
    /// The store's error.
    pub fn expire_sessions(&self) -> Result<u64, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let store = self.ops.shared.store.clone();
        self.runtime().spawn(async move {
            let _ = tx.send(store.expire_all().await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(StoreError::Backend("server stopped".into())))
    }

    /// The same operations as a cheap, cloneable value (what the admin API uses).
    pub fn ops(&self) -> ServerOps {
        self.ops.clone()
    }

    /// Stops accepting, closes every connection and stops the runtime.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn runtime(&self) -> &Runtime {
        // `rt` is only taken by `stop_now`, which consumes or drops the handle.
        self.rt.as_ref().expect("runtime present until shutdown")
    }

    fn stop_now(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.rt.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Blocking inside another runtime is not allowed; let the threads finish.
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
    }
}

impl std::ops::Deref for ServerHandle {
    type Target = ServerOps;

    fn deref(&self) -> &ServerOps {
        &self.ops
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// The server's operations without the ownership of its runtime: cloneable and `Send`, for
/// the admin API and for callers that share a server between threads.
#[derive(Clone)]
pub struct ServerOps {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ServerOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOps").finish_non_exhaustive()
    }
}

impl ServerOps {
    /// The counters.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    /// Peer addresses of the open connections, sorted.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.shared.peers()
    }

    /// Pushes `content` with "send" (session cipher) and the flags of `ack`.
    pub fn push(&self, target: PushTarget, content: Bytes, ack: AckMode) -> PushResult {
        let user = match &target {
            PushTarget::User(u) => Some(u.as_str()),
            PushTarget::All => None,
        };
        let msg_ids = self.shared.push(user, content, ack);
        PushResult {
            sent: msg_ids.len(),
            msg_ids,
        }
    }

    /// The pushes sent so far (the most recent 100,000) and whether each was acked.
    pub fn pushes(&self) -> Vec<PushRecord> {
        self.shared.pushes()
    }

    /// Sends KICK to every connection `user_id` is bound on; returns how many.
    pub fn kick(&self, user_id: &str) -> usize {
        self.shared.kick(user_id)
    }

    /// The fault switches' state.
    pub fn faults(&self) -> FaultState {
        self.shared.faults()
    }

    /// Fault: expire every reusable session (fast connects then get ERROR 103).
    /// [`ServerHandle::expire_sessions`] is the blocking form.
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn expire_sessions(&self) -> Result<u64, StoreError> {
        self.shared.store.expire_all().await
    }

    /// Fault: whether heartbeats are echoed (off: "stop answering heartbeats").
    pub fn set_heartbeat_echo(&self, on: bool) {
        self.shared.set_heartbeat_echo(on);
    }

    /// Fault: reproduce the real server's gateway ack race (PROTOCOL.md 8.6) on every ack
    /// push from now on: the device's ACK finds no wait, the gateway gets no reply.
    pub fn set_gateway_ack_race(&self, on: bool) {
        self.shared.gateway.set_ack_race(on);
    }

    /// Fault: close every new connection at accept.
    pub fn set_reject_new(&self, on: bool) {
        self.shared.set_reject_new(on);
    }

    /// Fault: delay every write by `ms` milliseconds (0 turns it off).
    pub fn set_delay_ms(&self, ms: u64) {
        self.shared.set_delay_ms(ms);
    }

    /// The capacity model's limits now in force.
    pub fn capacity(&self) -> CapacityLimits {
        self.shared.capacity_limits()
    }

    /// Changes the capacity model's limits live (a `None` rate stays; 0 = unlimited);
    /// returns the limits now in force. Requests already waiting keep their turn. A rate
    /// that is not a finite number >= 0 means unlimited ([`CapacityChange::validate`] is
    /// what `POST /capacity` checks first).
    pub fn set_capacity(&self, change: CapacityChange) -> CapacityLimits {
        self.shared.set_capacity(change)
    }

    /// Fault: close every open connection; returns how many were told to.
    pub fn close_all(&self) -> usize {
        self.shared
            .broadcast(|| ConnCmd::Close(CloseReason::CloseAll))
    }

    /// Fault: send one garbage frame to every connection; returns how many were told to.
    pub fn send_garbage(&self) -> usize {
        self.shared.broadcast(|| ConnCmd::Garbage)
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                shared.count_accept();
                if shared.faults().reject_new {
                    shared.count_close(CloseReason::Rejected);
                    drop(stream);
                    continue;
                }
                tokio::spawn(conn::run(shared.clone(), stream, peer, stop.clone()));
            }
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or a transient error: back off briefly
                // rather than spin; the open connections carry on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The gateway port's accept loop, and the sweep that forgets expired ack waits.
async fn gateway_accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let mut sweep = tokio::time::interval(Duration::from_millis(250));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = sweep.tick() => {
                shared.gateway.expire_waits(shared.now());
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                tokio::spawn(gateway::conn::run(shared.clone(), stream, stop.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "gateway accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Binds the MPUSH listener with a deep accept queue. tokio's `TcpListener::bind` asks for a
/// backlog of 1,024; a fleet reconnecting after a restart arrives faster than that drains, and
/// every overflow costs a client a 1 s (then 3 s, 7 s) SYN retransmit. The kernel caps the
/// request at `net.core.somaxconn` (see tuning/).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(65_535)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
///
/// # Errors
///
/// If the limit cannot be read or set.
pub fn raise_nofile_limit() -> io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current == lim.maximum {
        return Ok(lim.current.unwrap_or(u64::MAX));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    )?;
    Ok(lim.maximum.unwrap_or(u64::MAX))
}
