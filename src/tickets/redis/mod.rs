//! Client tickets in Redis through fred ([`RedisTickets`]); the reference server's reusable
//! sessions in the same Redis are [`super::sessions::RedisSessions`], sharing [`RedisConfig`].
//!
//! Values are the Java tools' own (PROTOCOL.md 7, [`super::format`]), so a fleet shares a Redis
//! with a real MPUSH client or server. A shard never waits on Redis:
//!
//! - [`TicketStore::load`] / `save` / `delete` only queue. [`TicketStore::flush`] (once per
//!   shard turn) sends the queue as fred pipelines of at most [`MAX_PIPELINE`] commands on the
//!   store's one multiplexed connection, keeping at most `max_in_flight` commands unanswered; a
//!   spawned task awaits each pipeline, sends its replies back over a channel and calls the
//!   shard's [`Wake`]. The shard takes them with `drain_ready` on its next turn.
//! - Faults never block and never panic. While Redis is unreachable every request is answered
//!   at once as failed: a load answers `None` (the device handshakes), a save is dropped; each
//!   failure is counted in [`StoreCounters::errors`]. fred's reconnect policy keeps retrying,
//!   and requests go out again as soon as it is back. A slow Redis is cut off by the command
//!   timeout. The outage is logged once when it starts and once when it ends, for all the
//!   stores of one fleet together ([`RedisTickets::fleet`]), not once per device.
//! - A value that is not a ticket (not JSON, wrong field types, a key of the wrong length, not
//!   UTF-8, a key of another Redis type) is a counted error and a `None`.
//!
//! Writes are `SET key value PX ttl`, one atomic command (the seed's SET then EXPIRE leaves a
//! ticket without a TTL if the second command is lost).
//!
//! Here: the store itself and its [`TicketStore`] side. Beside it: `config` (how to reach
//! Redis, shared with the session store and the route lookup), `pipeline` (the requests on
//! the wire and a reply read as a ticket), `health` (the fleet-wide outage log).

mod config;
mod health;
mod pipeline;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use fred::prelude::{ClientLike, Config, Error as FredError, ErrorKind, EventInterface};

pub use self::config::{BadRedisUrl, RedisConfig, DEFAULT_TICKET_TTL};
use self::health::{is_outage, Health};
use self::pipeline::{decode, run_pipeline, Op, Reply, What};
use super::format::ClientTicket;
use super::store::{Loaded, StoreCounters, TicketStore, Wake};
use crate::device::{Identities, Template};

/// The most commands in one pipeline: one socket write of a few hundred KiB at most, so one
/// big turn does not hold up the next turn's requests behind it.
pub const MAX_PIPELINE: usize = 512;

/// One fred client in the runtime the store runs in.
struct Conn {
    client: fred::prelude::Client,
    /// Replies of this connection's pipelines. A fresh channel per connection, so a
    /// pipeline of an older connection can never be taken for one of this one.
    tx: Sender<Vec<Reply>>,
    rx: Receiver<Vec<Reply>>,
    /// The start-up wait is over (connected, failed, or `connect_grace` passed).
    warm: Arc<AtomicBool>,
}

/// The Redis ticket store of one shard. See the module doc.
pub struct RedisTickets {
    cfg: Arc<RedisConfig>,
    /// The fleet's device id template: keys are rendered here, at the edge, from the index.
    device_id: Arc<Template>,
    /// Devices named by the identity table instead of the template.
    identities: Identities,
    /// Reused while a key is built, so a key costs one exact-size allocation.
    key_buf: String,
    fred: Config,
    health: Arc<Health>,
    conn: Option<Conn>,
    wake: Wake,
    queue: VecDeque<Op>,
    /// Commands sent and not yet drained.
    in_flight: usize,
    /// Requests answered here without Redis (not connected, no runtime).
    failed: Vec<Reply>,
    counters: StoreCounters,
}

impl std::fmt::Debug for RedisTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("RedisTickets")
            .field("prefix", &self.cfg.prefix)
            .field("connected", &self.conn.is_some())
            .field("queued", &self.queue.len())
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl RedisTickets {
    /// A store for one shard whose devices' ids come from `device_id` (the fleet's
    /// `device_id` template: device `i`'s key is the prefix + `device_id.render(i)`). Parses
    /// the URL and nothing more: it connects when the shard first attaches or flushes it, in
    /// the shard's runtime.
    ///
    /// # Errors
    /// [`BadRedisUrl`].
    pub fn new(config: RedisConfig, device_id: Template) -> Result<Self, BadRedisUrl> {
        Self::with_health(
            Arc::new(config),
            Arc::new(device_id),
            Identities::default(),
            Arc::default(),
        )
    }

    /// One store per shard, sharing one outage log.
    ///
    /// # Errors
    /// [`BadRedisUrl`].
    pub fn fleet(
        config: RedisConfig,
        device_id: Template,
        shards: usize,
    ) -> Result<Vec<Box<dyn TicketStore>>, BadRedisUrl> {
        Self::fleet_named(config, device_id, Identities::default(), shards)
    }

    /// [`RedisTickets::fleet`] for a fleet whose listed devices are named by `identities`
    /// (their keys hold their real ids; the rest are rendered from `device_id`).
    ///
    /// # Errors
    /// [`BadRedisUrl`].
    pub fn fleet_named(
        config: RedisConfig,
        device_id: Template,
        identities: Identities,
        shards: usize,
    ) -> Result<Vec<Box<dyn TicketStore>>, BadRedisUrl> {
        let (cfg, health) = (Arc::new(config), Arc::<Health>::default());
        let device_id = Arc::new(device_id);
        (0..shards)
            .map(|_| {
                Self::with_health(
                    cfg.clone(),
                    device_id.clone(),
                    identities.clone(),
                    health.clone(),
                )
                .map(|s| Box::new(s) as Box<dyn TicketStore>)
            })
            .collect()
    }

    fn with_health(
        cfg: Arc<RedisConfig>,
        device_id: Arc<Template>,
        identities: Identities,
        health: Arc<Health>,
    ) -> Result<Self, BadRedisUrl> {
        let fred = cfg.fred_config()?;
        Ok(RedisTickets {
            cfg,
            device_id,
            identities,
            key_buf: String::new(),
            fred,
            health,
            conn: None,
            wake: Arc::new(|| {}),
            queue: VecDeque::new(),
            in_flight: 0,
            failed: Vec::new(),
            counters: StoreCounters::default(),
        })
    }

    /// The Redis key of device `device`: the prefix and its rendered id (the same bytes as
    /// [`client_ticket_key`](super::format::client_ticket_key) of the id).
    fn key(&mut self, device: u32) -> String {
        self.key_buf.clear();
        self.key_buf.push_str(&self.cfg.prefix);
        self.identities
            .device_id_into(&self.device_id, device, &mut self.key_buf);
        self.key_buf.as_str().to_owned()
    }

    /// Starts a fred client in the current runtime.
    fn open(&self) -> Result<Conn, FredError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(FredError::new(ErrorKind::Config, "no tokio runtime here"));
        }
        let client = self.cfg.build_client(self.fred.clone())?;
        let mut errors = client.error_rx();
        // The connection task runs until the store's runtime ends; it reconnects on its own.
        drop(client.connect());
        let warm = Arc::new(AtomicBool::new(false));
        let (watch, done, wake) = (client.clone(), warm.clone(), self.wake.clone());
        let grace = self.cfg.connect_grace;
        tokio::spawn(async move {
            tokio::select! {
                _ = watch.wait_for_connect() => {}
                _ = errors.recv() => {}
                () = tokio::time::sleep(grace) => {}
            }
            done.store(true, Ordering::Release);
            wake();
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok(Conn {
            client,
            tx,
            rx,
            warm,
        })
    }

    /// Answers every queued request as failed with `error`.
    fn fail_queue(&mut self, error: &FredError) {
        for op in self.queue.drain(..) {
            let what = match op {
                Op::Load { device, .. } => What::Load(device),
                Op::Save { .. } => What::Save,
                Op::Delete { .. } => What::Delete,
            };
            self.failed.push(Reply {
                what,
                result: Err(error.clone()),
            });
        }
        (self.wake)();
    }

    fn settle(&mut self, reply: Reply, out: &mut Vec<Loaded>) {
        let value = match reply.result {
            Ok(value) => {
                self.health.answered();
                value
            }
            Err(error) => {
                self.counters.errors += 1;
                if is_outage(&error) {
                    self.health.failed(&error);
                } else {
                    tracing::debug!(error = %error, "Redis refused a ticket command");
                }
                if let What::Load(device) = reply.what {
                    out.push(Loaded {
                        device,
                        ticket: None,
                    });
                }
                return;
            }
        };
        match reply.what {
            What::Load(device) => {
                let ticket = match decode(value) {
                    Ok(ticket) => ticket,
                    Err(why) => {
                        // Neither the value nor the key: a ticket holds key material.
                        tracing::debug!(why, "unreadable ticket in Redis; the device handshakes");
                        self.counters.errors += 1;
                        None
                    }
                };
                out.push(Loaded { device, ticket });
            }
            What::Save => self.counters.saved += 1,
            What::Delete => {}
        }
    }
}

/// How long a ticket may live in Redis: the configured TTL, cut to the ticket's own expiry;
/// `None` when it has expired already.
pub fn ticket_ttl_ms(ticket: &ClientTicket, wall_ms: i64, max: Duration) -> Option<i64> {
    let max = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
    let left = ticket.expire_time_ms.saturating_sub(wall_ms);
    let ttl = max.min(left);
    (ttl > 0).then_some(ttl)
}

impl TicketStore for RedisTickets {
    fn attach(&mut self, wake: Wake) {
        self.wake = wake;
        // A new run, maybe in a new runtime: the old client's tasks died with the old one (or
        // will idle until theirs ends), and their unanswered requests belong to the old run.
        self.conn = None;
        self.queue.clear();
        self.failed.clear();
        self.in_flight = 0;
        match self.open() {
            Ok(conn) => self.conn = Some(conn),
            Err(error) => self.health.failed(&error),
        }
    }

    fn load(&mut self, device: u32) {
        let key = self.key(device);
        self.queue.push_back(Op::Load { device, key });
    }

    fn save(&mut self, device: u32, ticket: &ClientTicket, wall_ms: i64) {
        let Some(ttl_ms) = ticket_ttl_ms(ticket, wall_ms, self.cfg.ticket_ttl) else {
            return; // expired: nothing worth keeping
        };
        let key = self.key(device);
        self.queue.push_back(Op::Save {
            key,
            value: ticket.to_json(),
            ttl_ms,
        });
    }

    fn delete(&mut self, device: u32) {
        let key = self.key(device);
        self.queue.push_back(Op::Delete { key });
    }

    fn flush(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        if self.conn.is_none() {
            match self.open() {
                Ok(conn) => self.conn = Some(conn),
                Err(error) => {
                    self.fail_queue(&error);
                    return;
                }
            }
        }
        let Some(conn) = &self.conn else { return };
        if !conn.client.is_connected() {
            if !conn.warm.load(Ordering::Acquire) {
                return; // first connection still coming up: hold the requests
            }
            let error = FredError::new(ErrorKind::Canceled, "not connected to Redis");
            self.fail_queue(&error);
            return;
        }
        let max = self.cfg.max_in_flight.max(1);
        while !self.queue.is_empty() && self.in_flight < max {
            let n = self.queue.len().min(max - self.in_flight).min(MAX_PIPELINE);
            let ops: Vec<Op> = self.queue.drain(..n).collect();
            self.in_flight += n;
            tokio::spawn(run_pipeline(
                conn.client.clone(),
                ops,
                conn.tx.clone(),
                self.wake.clone(),
            ));
        }
    }

    fn drain_ready(&mut self, out: &mut Vec<Loaded>) {
        let mut batches = Vec::new();
        if let Some(conn) = &self.conn {
            batches.extend(conn.rx.try_iter());
        }
        for batch in batches {
            self.in_flight = self.in_flight.saturating_sub(batch.len());
            for reply in batch {
                self.settle(reply, out);
            }
        }
        for reply in std::mem::take(&mut self.failed) {
            self.settle(reply, out);
        }
    }

    fn pending(&self) -> bool {
        self.in_flight > 0 || !self.queue.is_empty() || !self.failed.is_empty()
    }

    fn take_counters(&mut self) -> StoreCounters {
        std::mem::take(&mut self.counters)
    }
}
