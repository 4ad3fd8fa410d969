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
//!
//! Here: the pusher's configuration, its events and its handle. Beside it: `run` (the send
//! loop on the pusher's thread: pacing, route lookup, replies and timeouts) and `pool` (the
//! gateway connections the loop writes to).

mod pool;
mod run;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use self::run::Run;
use super::ledger::Reply;
use crate::device::Template;
use crate::gateway::route_store::RouteStore;
use crate::proto::Flags;

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

/// The control plane's switches, as the send loop sees them.
struct Flags3 {
    active: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sent_all: Arc<AtomicBool>,
}
