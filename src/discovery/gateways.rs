//! The gateways `push --zookeeper` sends to: every one registered in `/cluster/gs`, resolved,
//! and watched for the whole run, so a gateway that leaves gets no new requests and one that
//! joins takes its share.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;

use super::zk::{Cluster, DiscoveryError, Watch, Zk, ZkConfig};

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
