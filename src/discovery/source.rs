//! [`ServerSource`]: the control plane's view of where devices connect, kept current by a
//! thread of its own (DNS lookups and ZooKeeper block or wait; shards never do either). The
//! control plane polls it between status lines and hands a changed rotation to the shards
//! over their command channels.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use super::spread::{rotation, Weighted};
use super::zk::{Cluster, Zk, ZkConfig, CONNECTION_TIMEOUT, SESSION_TIMEOUT};
use super::Endpoint;

/// Resolutions are at least this far apart, however many connects fail meanwhile.
const RESOLVE_EVERY: Duration = Duration::from_secs(1);
/// How long one name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait between two attempts to get a ZooKeeper session back.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Where the servers come from.
#[derive(Clone, Debug)]
pub enum Spec {
    /// `--server` endpoints (names resolved at start and again after failed connects).
    Static(Vec<Endpoint>),
    /// The connection servers registered in ZooKeeper, watched; `public` connects to their
    /// `public_ip` where they registered one.
    ZooKeeper {
        /// The ensemble and credentials.
        cfg: ZkConfig,
        /// Use `attrs.public_ip` when present.
        public: bool,
    },
}

/// Why the servers cannot be found at start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A `--server` name that does not resolve (a usage error: exit 2).
    #[error("--server {endpoint}: {reason}")]
    Unresolvable {
        /// The endpoint as given.
        endpoint: Endpoint,
        /// The resolver's answer.
        reason: String,
    },
    /// ZooKeeper is unreachable, refuses, or lists no usable server.
    #[error("{0}")]
    Discovery(String),
}

#[derive(Default)]
struct Published {
    version: u64,
    servers: Vec<Weighted>,
}

struct Shared {
    published: Mutex<Published>,
    nudge: Notify,
}

impl Shared {
    fn publish(&self, servers: Vec<Weighted>) {
        let mut p = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if p.servers != servers {
            p.servers = servers;
            p.version += 1;
        }
    }
}

/// The servers devices connect to, kept current. Dropping it stops its thread.
pub struct ServerSource {
    shared: Arc<Shared>,
    seen: u64,
    failures_seen: u64,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerSource {
    /// Finds the servers once (resolving names, or listing ZooKeeper), then starts the thread
    /// that keeps them current.
    ///
    /// # Errors
    ///
    /// A name that does not resolve, or ZooKeeper unreachable or listing no server.
    pub fn start(spec: Spec) -> Result<ServerSource, StartError> {
        let shared = Arc::new(Shared {
            published: Mutex::default(),
            nudge: Notify::new(),
        });
        let (first_tx, first_rx) = mpsc::sync_channel(1);
        let mut resolved = HashMap::new();
        if let Spec::Static(endpoints) = &spec {
            for e in endpoints {
                let addrs = e.resolve().map_err(|err| StartError::Unresolvable {
                    endpoint: e.clone(),
                    reason: err.to_string(),
                })?;
                resolved.insert(e.clone(), addrs);
            }
            shared.publish(weigh(endpoints.iter().map(|e| (e, 1)), &resolved));
        }
        let (stop, stop_rx) = oneshot::channel();
        let thread_shared = shared.clone();
        let no_runtime_tx = first_tx.clone();
        let thread = crate::tokio_thread::spawn(
            "discovery",
            move || async move {
                match spec {
                    Spec::Static(endpoints) => {
                        let _ = first_tx.send(Ok(()));
                        static_loop(endpoints, resolved, &thread_shared, stop_rx).await;
                    }
                    Spec::ZooKeeper { cfg, public } => {
                        zk_loop(cfg, public, &thread_shared, first_tx, stop_rx).await;
                    }
                }
            },
            move |e| {
                let _ = no_runtime_tx.send(Err(format!("discovery runtime: {e}")));
            },
        )
        .map_err(|e| StartError::Discovery(format!("spawning discovery: {e}")))?;
        let mut source = ServerSource {
            shared,
            seen: 0,
            failures_seen: 0,
            stop: Some(stop),
            thread: Some(thread),
        };
        let wait = SESSION_TIMEOUT + CONNECTION_TIMEOUT + RESOLVE_TIMEOUT;
        match first_rx.recv_timeout(wait) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StartError::Discovery(e)),
            Err(_) => return Err(StartError::Discovery("discovery did not answer".into())),
        }
        source.seen = source.version();
        Ok(source)
    }

    fn version(&self) -> u64 {
        self.lock().version
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        self.shared
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The servers and their weights now.
    pub fn servers(&self) -> Vec<Weighted> {
        self.lock().servers.clone()
    }

    /// The rotation shards go round now (see [`rotation`]).
    pub fn rotation(&self) -> Vec<SocketAddr> {
        rotation(&self.lock().servers)
    }

    /// The new rotation, if the servers changed since the last call (never empty: when every
    /// server is gone, devices keep trying the last ones).
    pub fn poll(&mut self) -> Option<Vec<SocketAddr>> {
        let p = self.lock();
        if p.version == self.seen {
            return None;
        }
        let (version, r) = (p.version, rotation(&p.servers));
        drop(p);
        self.seen = version;
        (!r.is_empty()).then_some(r)
    }

    /// Tells the source how many connects have failed so far (the fleet's counter): when it
    /// grew, names are resolved again (ZooKeeper listed again), at most once a second.
    pub fn connects_failed(&mut self, total: u64) {
        if total > self.failures_seen {
            self.failures_seen = total;
            self.shared.nudge.notify_one();
        }
    }
}

impl Drop for ServerSource {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Each endpoint's addresses with its weight; endpoints with no known address are left out.
fn weigh<'a>(
    endpoints: impl Iterator<Item = (&'a Endpoint, u32)>,
    resolved: &HashMap<Endpoint, Vec<SocketAddr>>,
) -> Vec<Weighted> {
    let mut out = Vec::new();
    for (e, weight) in endpoints {
        for &addr in resolved.get(e).into_iter().flatten() {
            out.push(Weighted { addr, weight });
        }
    }
    out
}

/// Resolves every endpoint, keeping the previous addresses of one that fails to resolve now
/// (a resolver hiccup must not empty the rotation).
async fn resolve_all(endpoints: &[&Endpoint], resolved: &mut HashMap<Endpoint, Vec<SocketAddr>>) {
    for &e in endpoints {
        if let Some(a) = e.literal() {
            resolved.insert(e.clone(), vec![a]);
            continue;
        }
        let lookup = tokio::net::lookup_host((e.host.as_str(), e.port));
        match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => {
                let mut v: Vec<SocketAddr> = Vec::new();
                addrs.for_each(|a| {
                    if !v.contains(&a) {
                        v.push(a);
                    }
                });
                if v.is_empty() {
                    tracing::warn!(endpoint = %e, "resolves to nothing now; keeping its addresses");
                } else {
                    if resolved.get(e) != Some(&v) {
                        tracing::info!(endpoint = %e, addrs = ?v, "resolved");
                    }
                    resolved.insert(e.clone(), v);
                }
            }
            Ok(Err(err)) => tracing::warn!(endpoint = %e, "{err}; keeping its addresses"),
            Err(_) => tracing::warn!(endpoint = %e, "resolving timed out; keeping its addresses"),
        }
    }
    resolved.retain(|k, _| endpoints.contains(&k));
}

async fn static_loop(
    endpoints: Vec<Endpoint>,
    mut resolved: HashMap<Endpoint, Vec<SocketAddr>>,
    shared: &Shared,
    mut stop: oneshot::Receiver<()>,
) {
    if endpoints.iter().all(|e| e.literal().is_some()) {
        let _ = stop.await; // nothing to resolve, ever
        return;
    }
    let refs: Vec<&Endpoint> = endpoints.iter().collect();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = shared.nudge.notified() => {}
        }
        resolve_all(&refs, &mut resolved).await;
        shared.publish(weigh(endpoints.iter().map(|e| (e, 1)), &resolved));
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(RESOLVE_EVERY) => {}
        }
    }
}

async fn zk_loop(
    cfg: ZkConfig,
    public: bool,
    shared: &Shared,
    first: mpsc::SyncSender<Result<(), String>>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut first = Some(first);
    let mut resolved = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let zk = match Zk::connect(&cfg).await {
            Ok(zk) => zk,
            Err(e) => {
                if let Some(f) = first.take() {
                    let _ = f.send(Err(e.to_string()));
                    return;
                }
                tracing::warn!("{e}; trying again in {backoff:?}");
                tokio::select! {
                    _ = &mut stop => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let (nodes, watcher) = match zk.list(Cluster::Connection).await {
                Ok(v) => v,
                Err(e) => {
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(e.to_string()));
                        return;
                    }
                    tracing::warn!("{e}; reconnecting");
                    break;
                }
            };
            let mut endpoints = Vec::with_capacity(nodes.len());
            for (id, node) in &nodes {
                match node.endpoint(public) {
                    Ok(e) => endpoints.push((e, node.weight)),
                    Err(e) => tracing::warn!(node = %id, "ignoring a registration: {e}"),
                }
            }
            let refs: Vec<&Endpoint> = endpoints.iter().map(|(e, _)| e).collect();
            resolve_all(&refs, &mut resolved).await;
            let servers = weigh(endpoints.iter().map(|(e, w)| (e, *w)), &resolved);
            if let Some(f) = first.take() {
                if servers.is_empty() {
                    let path = format!("/{}{}", cfg.namespace, Cluster::Connection.path());
                    let _ = f.send(Err(format!(
                        "no connection server is registered in ZooKeeper under {path}"
                    )));
                    return;
                }
                shared.publish(servers);
                let _ = f.send(Ok(()));
            } else if servers.is_empty() {
                tracing::warn!("no connection server registered; devices keep the last ones");
            } else {
                tracing::info!(servers = servers.len(), "connection servers changed");
                shared.publish(servers);
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = watcher.changed() => {}
                () = shared.nudge.notified() => {
                    // Failed connects: list and resolve again, at most once a second.
                    tokio::select! {
                        _ = &mut stop => return,
                        () = tokio::time::sleep(RESOLVE_EVERY) => {}
                    }
                }
            }
            if zk.is_terminated() {
                tracing::warn!("ZooKeeper session ended; reconnecting");
                break;
            }
        }
    }
}
