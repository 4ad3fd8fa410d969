//! How to reach the Redis of the ticket store: [`RedisConfig`] (URL, key prefix, TTL, in-flight
//! bound, timeouts) and the fred client built from it. Shared with the reference server's
//! session store (`super::super::sessions::RedisSessions`) and the gateway's route lookup, so it
//! stands apart from the store that uses it.

use std::time::Duration;

use fred::prelude::{Builder, Config, Error as FredError, ReconnectPolicy};
use fred::types::config::TcpConfig;

use crate::tickets::format::CLIENT_TICKET_PREFIX;

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
