//! The gateways `push --zookeeper` sends to: every one registered in `/cluster/gs`, resolved,
//! and watched for the whole run, so a gateway that leaves gets no new requests and one that
//! joins takes its share. And `push --gateway NAME`'s addresses, resolved again when connects
//! fail, so a DNS change during a run is followed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;

use super::zk::{Cluster, DiscoveryError, Watch, Zk, ZkConfig};

/// Resolutions of a gateway name are at least this far apart.
const RESOLVE_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to get a ZooKeeper session back.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How long one gateway's name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The gateways registered now, resolved (bad or unresolvable registrations are left out
/// with a warning), and the watch that fires when the list or a node's data changes.
async fn list(zk: &Zk) -> Result<(Vec<SocketAddr>, Watch), DiscoveryError> {
    let (nodes, watch) = zk.list(Cluster::Gateway).await?;
    let mut out = Vec::new();
    for (name, node) in nodes {
        let endpoint = match node.endpoint(false) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(node = %name, "gateway with a bad host: {e}");
                continue;
            }
        };
        if let Some(a) = endpoint.literal() {
            out.push(a);
            continue;
        }
        let lookup = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port));
        let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await;
        match resolved {
            Ok(Ok(addrs)) => out.extend(addrs),
            Ok(Err(e)) => tracing::warn!(node = %name, "gateway {endpoint} does not resolve: {e}"),
            Err(_) => tracing::warn!(node = %name, "gateway {endpoint}: resolving timed out"),
        }
    }
    out.sort();
    out.dedup();
    Ok((out, watch))
}

/// Every gateway registered in `/cluster/gs` now, kept current by a task on the current
/// tokio runtime (it ends when the receiver is dropped). When every gateway is gone the list
/// keeps the last ones (sending nowhere helps nobody; their connects fail and show).
///
/// # Errors
///
/// ZooKeeper unreachable or unreadable, or no gateway registered (or none resolves).
pub async fn watch(cfg: ZkConfig) -> anyhow::Result<watch::Receiver<Vec<SocketAddr>>> {
    let zk = Zk::connect(&cfg).await?;
    let (first, changes) = list(&zk).await?;
    anyhow::ensure!(
        !first.is_empty(),
        "no gateway registered in /{}{}",
        cfg.namespace,
        Cluster::Gateway.path()
    );
    let (tx, rx) = watch::channel(first);
    tokio::spawn(keep(cfg, zk, changes, tx));
    Ok(rx)
}

async fn keep(cfg: ZkConfig, mut zk: Zk, mut changes: Watch, tx: watch::Sender<Vec<SocketAddr>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            () = changes.changed() => {}
            () = tx.closed() => return,
        }
        loop {
            if zk.is_terminated() {
                tracing::warn!("ZooKeeper session ended; reconnecting");
                match Zk::connect(&cfg).await {
                    Ok(z) => zk = z,
                    Err(e) => {
                        tracing::warn!("{e}; trying again in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RECONNECT_MAX);
                        continue;
                    }
                }
            }
            match list(&zk).await {
                Ok((now, w)) => {
                    changes = w;
                    backoff = Duration::from_millis(100);
                    if now.is_empty() {
                        tracing::warn!("no gateway registered; keeping the last ones");
                    } else {
                        tx.send_if_modified(|v| {
                            let differs = *v != now;
                            *v = now;
                            differs
                        });
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!("{e}; listing again in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
    }
}

/// `endpoint`'s addresses (`first`: resolved at start), resolved again on a task of the
/// current tokio runtime each time `failures` (the run's failed connects) grows, at most once
/// a second. A name that resolves to nothing now keeps its last addresses.
pub fn follow_name(
    endpoint: super::Endpoint,
    first: Vec<SocketAddr>,
    mut failures: watch::Receiver<u64>,
) -> watch::Receiver<Vec<SocketAddr>> {
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = failures.changed() => if r.is_err() { return },
                () = tx.closed() => return,
            }
            let lookup = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port));
            let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await;
            match resolved {
                Ok(Ok(addrs)) => {
                    let mut now: Vec<SocketAddr> = addrs.collect();
                    now.sort();
                    now.dedup();
                    if now.is_empty() {
                        tracing::warn!(gateway = %endpoint, "resolves to nothing now; keeping its addresses");
                    } else {
                        tx.send_if_modified(|v| {
                            let mut was = v.clone();
                            was.sort();
                            let differs = was != now;
                            if differs {
                                tracing::info!(gateway = %endpoint, addrs = ?now, "resolved again");
                                *v = now;
                            }
                            differs
                        });
                    }
                }
                Ok(Err(e)) => tracing::warn!(gateway = %endpoint, "{e}; keeping its addresses"),
                Err(_) => {
                    tracing::warn!(gateway = %endpoint, "resolving timed out; keeping its addresses")
                }
            }
            tokio::time::sleep(RESOLVE_EVERY).await;
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_is_resolved_again_when_connects_fail() {
        // The addresses "from start" are stale (127.0.0.2 is not what localhost is): a
        // failed connect has them replaced by what the name resolves to now.
        let stale = vec![SocketAddr::from(([127, 0, 0, 2], 3001))];
        let (failures, failures_rx) = watch::channel(0);
        let name: super::super::Endpoint = "localhost:3001".parse().unwrap();
        let mut list = follow_name(name, stale.clone(), failures_rx);
        assert_eq!(*list.borrow(), stale, "nothing failed yet");
        failures.send(1).unwrap();
        tokio::time::timeout(RESOLVE_TIMEOUT * 2, list.changed())
            .await
            .expect("resolved again")
            .unwrap();
        let now = list.borrow().clone();
        assert!(!now.is_empty() && now != stale, "{now:?}");
        assert!(
            now.iter().all(|a| a.ip().is_loopback() && a.port() == 3001),
            "{now:?}"
        );
    }
}
