//! The server's routes in Redis (PROTOCOL.md 8.2), as the real `RemoteRouterManager` keeps
//! them: written at bind (before the bind's OK goes out), the `connId` taken off at unbind
//! and close (the route kept, so it reads offline), and read by the gateway when a push finds
//! no local connection (8.5 step 3): missing or offline is OFFLINE, this server's own is
//! OFFLINE and marked offline, another server's is ROUTER_CHANGE.
//!
//! A route names this server's gateway (`host:port`): the gateway's listen address, with
//! loopback for an unspecified one. `connId` is this server's nonce and the connection's
//! number, so connections of two servers sharing one Redis never share an id. clientVersion
//! is written empty: the reference session does not keep it.

use crate::gateway::route_store::RouteStore;
use crate::gateway::Route;
use crate::server::session::ClientType;
use crate::server::shared::ConnId;

/// What a route in Redis says about a user this server holds no connection for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elsewhere {
    /// Missing or offline: OFFLINE.
    Offline,
    /// This server's, although it holds no connection: OFFLINE, and the route marked offline.
    Stale,
    /// Another server's: ROUTER_CHANGE.
    Moved,
}

#[derive(Debug)]
pub(crate) struct RemoteRoutes {
    store: RouteStore,
    host: String,
    port: u16,
    nonce: u32,
}

impl RemoteRoutes {
    pub(crate) fn new(store: RouteStore, gateway: std::net::SocketAddr) -> Self {
        let host = if gateway.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            gateway.ip().to_string()
        };
        RemoteRoutes {
            store,
            host,
            port: gateway.port(),
            nonce: rand::random(),
        }
    }

    fn conn_id(&self, conn: ConnId) -> String {
        format!("{:08x}{:x}", self.nonce, conn.0)
    }

    /// At bind: the route of (user, ct) now names this server and `conn`.
    pub(crate) async fn bind(
        &self,
        user: &str,
        ct: ClientType,
        conn: ConnId,
        device_id: &str,
        os_name: &str,
    ) {
        let route = Route {
            port: self.port,
            host: self.host.clone(),
            device_id: device_id.to_owned(),
            os_name: os_name.to_owned(),
            client_version: String::new(),
            conn_id: Some(self.conn_id(conn)),
        };
        if let Err(e) = self.store.put(user, i32::from(ct.0), &route).await {
            tracing::warn!(error = %e, "writing a route to Redis failed");
        }
    }

    /// At unbind or close: offline, if the route is still `conn`'s.
    pub(crate) async fn unbind(&self, user: &str, ct: ClientType, conn: ConnId) {
        let id = self.conn_id(conn);
        if let Err(e) = self.store.mark_offline(user, i32::from(ct.0), &id).await {
            tracing::warn!(error = %e, "clearing a route in Redis failed");
        }
    }

    /// A push for (user, ct) found no local connection: what Redis says (8.5 step 3). A
    /// failed read is OFFLINE, as a missing route.
    pub(crate) async fn elsewhere(&self, user: &str, ct: ClientType) -> Elsewhere {
        let route = match self.store.get(user, i32::from(ct.0)).await {
            Ok(Some(r)) if r.is_online() => r,
            Ok(_) => return Elsewhere::Offline,
            Err(e) => {
                tracing::warn!(error = %e, "reading a route from Redis failed");
                return Elsewhere::Offline;
            }
        };
        if route.host == self.host && route.port == self.port {
            if let Err(e) = self.store.mark_stale(user, i32::from(ct.0)).await {
                tracing::warn!(error = %e, "marking a stale route offline failed");
            }
            return Elsewhere::Stale;
        }
        Elsewhere::Moved
    }
}
