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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use fred::prelude::{
    Builder, ClientLike, Config, Error as FredError, ErrorKind, EventInterface, Expiration,
    KeysInterface, ReconnectPolicy, Value,
};
use fred::types::config::TcpConfig;

use super::format::{ClientTicket, CLIENT_TICKET_PREFIX};
use super::store::{Loaded, StoreCounters, TicketStore, Wake};
use crate::device::{Identities, Template};

/// The most commands in one pipeline: one socket write of a few hundred KiB at most, so one
/// big turn does not hold up the next turn's requests behind it.
pub const MAX_PIPELINE: usize = 512;

/// The seed client's ticket lifetime (its `SET` then `EXPIRE 300`).
pub const DEFAULT_TICKET_TTL: Duration = Duration::from_secs(300);

/// A Redis URL that fred does not accept. Holds fred's reason, never the URL, which may carry
/// a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad Redis URL: {0}")]
pub struct BadRedisUrl(pub String);

/// How to reach Redis and how to use it. Cheap to clone; nothing connects until a store runs
/// inside a runtime.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:pass@]HOST:PORT/DB`, `redis-cluster://HOST:PORT?node=HOST:PORT&...`,
    /// or `redis-sentinel://HOST:PORT/DB?sentinelServiceName=NAME&node=HOST:PORT&...`
    /// (fred's `Config::from_url`).
    pub url: String,
    /// Key prefix of tickets ([`CLIENT_TICKET_PREFIX`], `mp:fcd:`, by default).
    pub prefix: String,
    /// Longest a ticket lives; never beyond its own expireTime. Default 300 s, the seed's.
    pub ticket_ttl: Duration,
    /// Most commands unanswered at once, per store (per shard).
    pub max_in_flight: usize,
    /// A command unanswered this long fails (a slow Redis), and so does a connection attempt.
    pub command_timeout: Duration,
    /// How long a new store holds its first requests while its first connection comes up, so
    /// that a restarted fleet is not sent to handshake by a connection still being opened.
    /// A connection error ends the wait early.
    pub connect_grace: Duration,
}

impl RedisConfig {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: CLIENT_TICKET_PREFIX.to_owned(),
            ticket_ttl: DEFAULT_TICKET_TTL,
            max_in_flight: 4096,
            command_timeout: Duration::from_secs(1),
            connect_grace: Duration::from_secs(3),
        }
    }

    /// fred's configuration for our URL.
    ///
    /// # Errors
    /// [`BadRedisUrl`] when fred cannot parse it.
    pub fn fred_config(&self) -> Result<Config, BadRedisUrl> {
        let mut config = Config::from_url(&self.url).map_err(|e| BadRedisUrl(e.to_string()))?;
        // Redis down at start must not be fatal: keep retrying in the background.
        config.fail_fast = false;
        Ok(config)
    }

    /// A fred client for this configuration, not yet connected.
    pub(crate) fn build_client(&self, config: Config) -> Result<fred::prelude::Client, FredError> {
        let timeout = self.command_timeout;
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                // A command lost with its connection fails now (a load answers `None`, the
                // device handshakes) instead of being replayed after a reconnect.
                c.max_command_attempts = 1;
                c.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..TcpConfig::default()
                };
            })
            .with_performance_config(|p| p.default_command_timeout = timeout)
            // Unlimited attempts, 100 ms doubling to 2 s: back soon after Redis is, without
            // hammering it while it is down.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        builder.build()
    }
}

/// Whether Redis is reachable, shared by the stores of one fleet so that an outage is logged
/// once, not once per shard or per device.
#[derive(Debug, Default)]
struct Health {
    down: AtomicBool,
}

impl Health {
    fn failed(&self, error: &FredError) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %error,
                "Redis ticket store unreachable: devices handshake and tickets are not saved \
                 until it is back"
            );
        }
    }

    fn answered(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis ticket store reachable again: tickets load and save again");
        }
    }
}

/// A request waiting to be sent.
#[derive(Debug)]
enum Op {
    Load {
        device: u32,
        key: String,
    },
    Save {
        key: String,
        value: String,
        ttl_ms: i64,
    },
    Delete {
        key: String,
    },
}

/// What a reply answers.
#[derive(Debug, Clone, Copy)]
enum What {
    Load(u32),
    Save,
    Delete,
}

#[derive(Debug)]
struct Reply {
    what: What,
    result: Result<Value, FredError>,
}

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

/// A `GET` reply as a ticket: `Ok(None)` when absent.
fn decode(value: Value) -> Result<Option<ClientTicket>, &'static str> {
    let text = match &value {
        Value::Null => return Ok(None),
        Value::String(s) => &**s,
        Value::Bytes(b) => std::str::from_utf8(b).map_err(|_| "not UTF-8")?,
        _ => return Err("not a string value"),
    };
    ClientTicket::from_json(text)
        .map(Some)
        .map_err(|e| match e {
            super::format::TicketFormatError::Json => "not JSON",
            super::format::TicketFormatError::NotAnObject => "not a JSON object",
            super::format::TicketFormatError::MissingField(_) => "a field is missing",
            super::format::TicketFormatError::NotAString(_) => "a field is not a string",
            super::format::TicketFormatError::BadExpireTime => "bad expireTime",
            super::format::TicketFormatError::BadCipher(_) => "bad cipherStr",
            super::format::TicketFormatError::FieldCount(_) => "bad field count",
        })
}

/// Whether an error means Redis is unreachable or too slow (an outage to log), rather than a
/// refusal of one command (a key of another type, say).
fn is_outage(error: &FredError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::IO
            | ErrorKind::Canceled
            | ErrorKind::Timeout
            | ErrorKind::Backpressure
            | ErrorKind::Routing
            | ErrorKind::Cluster
            | ErrorKind::Sentinel
            | ErrorKind::Auth
            | ErrorKind::Config
            | ErrorKind::Url
            | ErrorKind::Protocol
            | ErrorKind::Unknown
    )
}

/// How long a ticket may live in Redis: the configured TTL, cut to the ticket's own expiry;
/// `None` when it has expired already.
pub fn ticket_ttl_ms(ticket: &ClientTicket, wall_ms: i64, max: Duration) -> Option<i64> {
    let max = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
    let left = ticket.expire_time_ms.saturating_sub(wall_ms);
    let ttl = max.min(left);
    (ttl > 0).then_some(ttl)
}

/// Sends one pipeline and hands its replies back to the store.
async fn run_pipeline(
    client: fred::prelude::Client,
    ops: Vec<Op>,
    tx: Sender<Vec<Reply>>,
    wake: Wake,
) {
    let pipe = client.pipeline();
    let mut sent = Vec::with_capacity(ops.len());
    let mut replies = Vec::with_capacity(ops.len());
    for op in ops {
        // Queuing only copies into the pipeline's buffer; an error here is a bad argument.
        let (what, queued): (What, Result<(), FredError>) = match op {
            Op::Load { device, key } => (What::Load(device), pipe.get(key).await),
            Op::Save { key, value, ttl_ms } => (
                What::Save,
                pipe.set(key, value, Some(Expiration::PX(ttl_ms)), None, false)
                    .await,
            ),
            Op::Delete { key } => (What::Delete, pipe.del(key).await),
        };
        match queued {
            Ok(()) => sent.push(what),
            Err(error) => replies.push(Reply {
                what,
                result: Err(error),
            }),
        }
    }
    let results: Vec<Result<Value, FredError>> = pipe.try_all().await;
    if results.len() == sent.len() {
        replies.extend(
            sent.into_iter()
                .zip(results)
                .map(|(what, result)| Reply { what, result }),
        );
    } else {
        // The pipeline failed as a whole (timeout, connection lost): one error for all.
        let error = results
            .into_iter()
            .find_map(Result::err)
            .unwrap_or_else(|| FredError::new(ErrorKind::Protocol, "pipeline reply count"));
        replies.extend(sent.into_iter().map(|what| Reply {
            what,
            result: Err(error.clone()),
        }));
    }
    if tx.send(replies).is_ok() {
        wake();
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::AesCipher;

    fn ticket(expire_time_ms: i64) -> ClientTicket {
        ClientTicket {
            session_id: "s".into(),
            expire_time_ms,
            cipher: AesCipher::new([1; 16], [2; 16]),
        }
    }

    #[test]
    fn ttl_never_outlives_the_ticket() {
        let max = Duration::from_secs(300);
        assert_eq!(ticket_ttl_ms(&ticket(1_000_000), 0, max), Some(300_000));
        assert_eq!(ticket_ttl_ms(&ticket(10_000), 2_000, max), Some(8_000));
        assert_eq!(ticket_ttl_ms(&ticket(2_000), 2_000, max), None);
        assert_eq!(ticket_ttl_ms(&ticket(i64::MIN), i64::MAX, max), None);
        assert_eq!(
            ticket_ttl_ms(&ticket(i64::MAX), 0, Duration::MAX),
            Some(i64::MAX)
        );
    }

    #[test]
    fn replies_decode_without_panics() {
        let good = ticket(5).to_json();
        assert_eq!(decode(Value::Null), Ok(None));
        assert_eq!(decode(Value::from(good.as_str())), Ok(Some(ticket(5))));
        assert_eq!(
            decode(Value::Bytes(good.clone().into_bytes().into())),
            Ok(Some(ticket(5)))
        );
        assert!(decode(Value::Bytes(vec![0xff, 0xfe].into())).is_err());
        assert!(decode(Value::Integer(3)).is_err());
        assert!(decode(Value::from("{\"expireTime\":1}")).is_err());
        assert!(decode(Value::from(good.replacen("|1|", "|300|", 1).as_str())).is_err());
    }

    fn open_store(url: &str) -> Result<RedisTickets, BadRedisUrl> {
        RedisTickets::new(RedisConfig::new(url), Template::new("d-{i}"))
    }

    #[test]
    fn keys_are_rendered_from_the_index_at_the_edge() {
        let mut store = open_store("redis://127.0.0.1:1/0").unwrap();
        assert_eq!(store.key(7), "mp:fcd:d-7");
        assert_eq!(store.key(u32::MAX), format!("mp:fcd:d-{}", u32::MAX));
        assert_eq!(
            store.key(12),
            crate::tickets::format::client_ticket_key(CLIENT_TICKET_PREFIX, "d-12")
        );
    }

    #[test]
    fn urls_parse_without_connecting() {
        let store = open_store("redis://127.0.0.1:1/0");
        assert!(store.is_ok());
        assert!(open_store("redis-cluster://127.0.0.1:7000").is_ok());
        assert!(
            open_store("redis-sentinel://127.0.0.1:26379/0?sentinelServiceName=mymaster").is_ok()
        );
        let bad = open_store("redis://user:secret@host:99999999/0").unwrap_err();
        assert!(!bad.to_string().contains("secret"), "{bad}");
        assert!(open_store("not a url").is_err());
    }
}
