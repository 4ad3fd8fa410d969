//! Users' routes in Redis (PROTOCOL.md 8.2), through fred: what the reference server writes
//! at bind and clears at unbind or close, and what an app server reads to find a user's
//! gateway. One multiplexed connection; lookups of many users go as one pipeline.
//!
//! The client caches what it read for [`CACHE_TTL`], as upstream's PushSender does (5 min),
//! and forgets a user's routes when a reply says they are stale (ROUTER_CHANGE, OFFLINE).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fred::prelude::{Client, ClientLike, HashesInterface, Value};

use super::route::{route_key, Route};
use crate::tickets::redis::RedisConfig;

/// How long a user's routes are trusted once read (upstream: 5 minutes).
pub const CACHE_TTL: Duration = Duration::from_secs(300);

/// Users looked up per pipeline.
const PIPELINE: usize = 512;

/// A route with its client type (the hash field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypedRoute {
    /// The client type (1 mobile, 2 pc, 3 web).
    pub client_type: i32,
    /// The route.
    pub route: Route,
}

/// A connection to the Redis that holds the routes.
#[derive(Clone)]
pub struct RouteStore {
    client: Client,
}

impl std::fmt::Debug for RouteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("RouteStore").finish_non_exhaustive()
    }
}

impl RouteStore {
    /// Connects to `url` (inside a tokio runtime), waiting up to the configuration's connect
    /// grace for the first connection.
    ///
    /// # Errors
    ///
    /// A bad URL, or a Redis that cannot be reached within the grace.
    pub async fn connect(url: &str) -> anyhow::Result<RouteStore> {
        let cfg = RedisConfig::new(url);
        let client = cfg.build_client(cfg.fred_config()?)?;
        drop(client.connect());
        tokio::time::timeout(
            cfg.connect_grace.max(Duration::from_secs(2)),
            client.wait_for_connect(),
        )
        .await
        .map_err(|_| anyhow::anyhow!("Redis did not answer in time"))??;
        Ok(RouteStore { client })
    }

    /// Writes `user`'s route of `client_type` (at bind).
    ///
    /// # Errors
    ///
    /// Redis failed.
    pub async fn put(&self, user: &str, client_type: i32, route: &Route) -> anyhow::Result<()> {
        let () = self
            .client
            .hset(route_key(user), (client_type.to_string(), route.to_json()))
            .await?;
        Ok(())
    }

    /// Marks `user`'s route of `client_type` offline (its `connId` removed, the route kept) if
    /// it is still the connection `conn_id`'s: a later bind elsewhere is left alone. A read
    /// then a write, as the real server's (not atomic across servers either).
    ///
    /// # Errors
    ///
    /// Redis failed.
    pub async fn mark_offline(
        &self,
        user: &str,
        client_type: i32,
        conn_id: &str,
    ) -> anyhow::Result<()> {
        let key = route_key(user);
        let field = client_type.to_string();
        let value: Option<String> = self.client.hget(&key, &field).await?;
        let Some(mut route) = value.as_deref().and_then(Route::parse) else {
            return Ok(());
        };
        if route.conn_id.as_deref() != Some(conn_id) {
            return Ok(());
        }
        route.conn_id = None;
        let () = self.client.hset(key, (field, route.to_json())).await?;
        Ok(())
    }

    /// Marks `user`'s route of `client_type` offline whatever connection it names (the route
    /// names this server, which holds no connection for it: 8.5 step 3).
    ///
    /// # Errors
    ///
    /// Redis failed.
    pub async fn mark_stale(&self, user: &str, client_type: i32) -> anyhow::Result<()> {
        let key = route_key(user);
        let field = client_type.to_string();
        let value: Option<String> = self.client.hget(&key, &field).await?;
        if let Some(mut route) = value.as_deref().and_then(Route::parse) {
            route.conn_id = None;
            let () = self.client.hset(key, (field, route.to_json())).await?;
        }
        Ok(())
    }

    /// `user`'s route of `client_type`, if there is one that parses.
    ///
    /// # Errors
    ///
    /// Redis failed.
    pub async fn get(&self, user: &str, client_type: i32) -> anyhow::Result<Option<Route>> {
        let value: Option<String> = self
            .client
            .hget(route_key(user), client_type.to_string())
            .await?;
        Ok(value.as_deref().and_then(Route::parse))
    }

    /// Every route of each of `users`, in order, pipelined; values that are not routes are
    /// left out.
    ///
    /// # Errors
    ///
    /// Redis failed.
    pub async fn routes_of(&self, users: &[String]) -> anyhow::Result<Vec<Vec<TypedRoute>>> {
        let mut out = Vec::with_capacity(users.len());
        for chunk in users.chunks(PIPELINE) {
            let pipe = self.client.pipeline();
            for u in chunk {
                let () = pipe.hgetall(route_key(u)).await?;
            }
            let replies: Vec<Value> = pipe.all().await?;
            for reply in replies {
                out.push(typed_routes(reply));
            }
        }
        Ok(out)
    }
}

fn typed_routes(reply: Value) -> Vec<TypedRoute> {
    let Ok(map) = reply.convert::<HashMap<String, String>>() else {
        return Vec::new();
    };
    let mut routes: Vec<TypedRoute> = map
        .iter()
        .filter_map(|(field, value)| {
            Some(TypedRoute {
                client_type: field.parse().ok()?,
                route: Route::parse(value)?,
            })
        })
        .collect();
    routes.sort_by_key(|r| r.client_type);
    routes
}

/// The client's cache of looked-up routes.
#[derive(Debug, Default)]
pub struct RouteCache {
    entries: HashMap<String, (Instant, Vec<TypedRoute>)>,
}

impl RouteCache {
    /// The routes of `user` read within [`CACHE_TTL`] of `now`.
    pub fn get(&self, user: &str, now: Instant) -> Option<&[TypedRoute]> {
        let (at, routes) = self.entries.get(user)?;
        (now.saturating_duration_since(*at) < CACHE_TTL).then_some(routes.as_slice())
    }

    /// Keeps `routes` of `user` read at `now`.
    pub fn put(&mut self, user: String, routes: Vec<TypedRoute>, now: Instant) {
        self.entries.insert(user, (now, routes));
    }

    /// Forgets `user` (a reply said the route is stale).
    pub fn forget(&mut self, user: &str) {
        self.entries.remove(user);
    }
}
