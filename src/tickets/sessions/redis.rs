//! The reference server's reusable sessions in Redis: `mp:rs:<sessionId>` holding
//! [`ReusableSession::encode`], with a TTL of `session-expired-time`, as the real server
//! stores them (PROTOCOL.md 7). A real MPUSH client and mpush-fleet resume each other's
//! sessions through it.

use std::time::Duration;

use fred::prelude::{
    Client, ClientLike, Error as FredError, Expiration, KeysInterface, Options, Value,
};
use futures::StreamExt as _;
use tokio::sync::OnceCell;

use super::{SessionStore, StoreError, StoreFuture};
use crate::tickets::format::{reusable_session_key, ReusableSession, REUSABLE_SESSION_PREFIX};
use crate::tickets::redis::{BadRedisUrl, RedisConfig};

/// Keys deleted per pipeline by [`SessionStore::expire_all`].
const DELETE_BATCH: usize = 512;

/// A [`SessionStore`] in Redis. Cheap to create; it connects on first use, in the runtime of
/// that use (the server's), and reconnects on its own after an outage.
pub struct RedisSessions {
    cfg: RedisConfig,
    fred: fred::prelude::Config,
    client: OnceCell<Client>,
}

impl std::fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("RedisSessions")
            .field("prefix", &self.cfg.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisSessions {
    /// A store at `url` with the real server's prefix `mp:rs:`.
    ///
    /// # Errors
    /// [`BadRedisUrl`].
    pub fn new(url: &str) -> Result<Self, BadRedisUrl> {
        let mut cfg = RedisConfig::new(url);
        cfg.prefix = REUSABLE_SESSION_PREFIX.to_owned();
        Self::with_config(cfg)
    }

    /// A store with every setting given (`prefix` is the session key prefix here).
    ///
    /// # Errors
    /// [`BadRedisUrl`].
    pub fn with_config(cfg: RedisConfig) -> Result<Self, BadRedisUrl> {
        let fred = cfg.fred_config()?;
        Ok(RedisSessions {
            cfg,
            fred,
            client: OnceCell::new(),
        })
    }

    async fn client(&self) -> Result<&Client, StoreError> {
        self.client
            .get_or_try_init(|| async {
                let client = self.cfg.build_client(self.fred.clone()).map_err(backend)?;
                drop(client.connect());
                // Bounded: a Redis that is down at start fails the first requests (ERROR 100
                // to fast connects, unsaved sessions) instead of holding them.
                let _ =
                    tokio::time::timeout(self.cfg.connect_grace, client.wait_for_connect()).await;
                Ok(client)
            })
            .await
    }

    /// Options of every command: fail at once while disconnected (the caller answers its
    /// client now, not after a reconnect), no replay, the configured timeout.
    fn options(&self) -> Options {
        Options {
            fail_fast: true,
            max_attempts: Some(1),
            timeout: Some(self.cfg.command_timeout),
            ..Options::default()
        }
    }
}

fn backend(error: FredError) -> StoreError {
    StoreError::Backend(error.to_string())
}

impl SessionStore for RedisSessions {
    fn get<'a>(&'a self, session_id: &'a str) -> StoreFuture<'a, Option<ReusableSession>> {
        Box::pin(async move {
            let client = self.client().await?;
            let key = reusable_session_key(&self.cfg.prefix, session_id);
            let value: Value = client
                .with_options(&self.options())
                .get(key)
                .await
                .map_err(backend)?;
            let text = match &value {
                Value::Null => return Ok(None),
                Value::String(s) => &**s,
                Value::Bytes(b) => match std::str::from_utf8(b) {
                    Ok(s) => s,
                    Err(_) => return Ok(None),
                },
                _ => return Ok(None),
            };
            // Undecodable is missing (the real server answers 103 for both).
            Ok(ReusableSession::decode(text).ok())
        })
    }

    fn put<'a>(
        &'a self,
        session_id: &'a str,
        session: &'a ReusableSession,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            if ttl_ms <= 0 {
                return Ok(()); // expired on arrival: Redis refuses a zero TTL anyway
            }
            let client = self.client().await?;
            let key = reusable_session_key(&self.cfg.prefix, session_id);
            let () = client
                .with_options(&self.options())
                .set(
                    key,
                    session.encode(),
                    Some(Expiration::PX(ttl_ms)),
                    None,
                    false,
                )
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    fn expire_all(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let client = self.client().await?;
            let pattern = format!("{}*", self.cfg.prefix);
            let mut keys = if client.is_clustered() {
                client
                    .scan_cluster_buffered(pattern, Some(1000), None)
                    .boxed()
            } else {
                client.scan_buffered(pattern, Some(1000), None).boxed()
            };
            let mut dropped = 0;
            let mut batch = Vec::with_capacity(DELETE_BATCH);
            loop {
                let next = keys.next().await;
                let done = next.is_none();
                if let Some(key) = next {
                    batch.push(key.map_err(backend)?);
                }
                if batch.len() >= DELETE_BATCH || (done && !batch.is_empty()) {
                    // One key per command: keys of a cluster live on different slots.
                    let pipe = client.pipeline();
                    for key in batch.drain(..) {
                        let () = pipe.unlink(key).await.map_err(backend)?;
                    }
                    let counts: Vec<i64> = pipe.all().await.map_err(backend)?;
                    dropped += counts.iter().map(|&n| n.max(0) as u64).sum::<u64>();
                }
                if done {
                    return Ok(dropped);
                }
            }
        })
    }
}
