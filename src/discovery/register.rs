//! A server's own registration (`serve --zookeeper`): an ephemeral node in `/cluster/cs` as
//! the real server writes it, kept while the server runs (registered again if the session
//! expires) and removed at stop, before the listener closes, so fleets stop sending connects
//! first.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;

use super::node::ServerNode;
use super::zk::{Cluster, DiscoveryError, Zk, ZkConfig};
use super::ZkArgs;

/// Longest wait between two attempts to register again after the session was lost.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// `serve`'s registration flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RegisterArgs {
    /// The ensemble and its credentials.
    #[command(flatten)]
    pub zk: ZkArgs,
    /// Host to register (`host`); default: the --listen address (required when that is
    /// 0.0.0.0 or ::).
    #[arg(long, value_name = "HOST", requires = "zookeeper")]
    pub register_host: Option<String>,
    /// `attrs.public_ip` to register (where clients from outside connect).
    #[arg(long, value_name = "IP", requires = "zookeeper")]
    pub public_ip: Option<String>,
    /// `attrs.weight` to register: this server's share of connects relative to the others.
    #[arg(long, default_value_t = 1, requires = "zookeeper")]
    pub weight: u32,
}

impl RegisterArgs {
    /// The ensemble and the node to register for a server listening on `listen`, or `None`
    /// without `--zookeeper`.
    ///
    /// # Errors
    ///
    /// Malformed flags, or an unspecified listen address without `--register-host`.
    pub fn plan(&self, listen: SocketAddr) -> Result<Option<(ZkConfig, ServerNode)>, String> {
        let Some(cfg) = self.zk.config()? else {
            return Ok(None);
        };
        let host = match &self.register_host {
            Some(h) => h.clone(),
            None if listen.ip().is_unspecified() => {
                return Err(format!(
                    "--zookeeper: --listen {listen} is no address clients can use; \
                     give --register-host"
                ))
            }
            None => listen.ip().to_string(),
        };
        let node = ServerNode {
            host,
            port: listen.port(),
            weight: self.weight,
            public_ip: self.public_ip.clone(),
        };
        node.endpoint(false)
            .map_err(|e| format!("--register-host: {e}"))?;
        Ok(Some((cfg, node)))
    }
}

/// A running registration; [`Registration::stop`] removes it.
pub struct Registration {
    path: String,
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
}

impl Registration {
    /// Registers `node` now (so a failure is a start error), then keeps it registered on a
    /// task of the current tokio runtime.
    ///
    /// # Errors
    ///
    /// ZooKeeper unreachable, or the node cannot be written (credentials).
    pub async fn start(
        cfg: ZkConfig,
        node: ServerNode,
        cluster: Cluster,
    ) -> Result<Registration, DiscoveryError> {
        let zk = Zk::connect(&cfg).await?;
        let path = zk.register(cluster, &node).await?;
        let (stop, stop_rx) = oneshot::channel();
        tokio::spawn(keep(cfg, node, cluster, zk, path.clone(), stop_rx));
        Ok(Registration {
            path,
            stop: Some(stop),
        })
    }

    /// The node's path inside the namespace (the first one: a new session registers anew).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Removes the registration and waits (bounded) until ZooKeeper confirmed it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let (done, done_rx) = oneshot::channel();
            if stop.send(done).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
            }
        }
    }
}

async fn keep(
    cfg: ZkConfig,
    node: ServerNode,
    cluster: Cluster,
    mut zk: Zk,
    mut path: String,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            done = &mut stop => {
                if let Err(e) = zk.deregister(&path).await {
                    tracing::warn!("{e}");
                }
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            () = zk.ended() => {}
        }
        tracing::warn!("ZooKeeper session ended; registering again");
        loop {
            let again = async {
                let zk = Zk::connect(&cfg).await?;
                let path = zk.register(cluster, &node).await?;
                Ok::<_, DiscoveryError>((zk, path))
            };
            tokio::select! {
                done = &mut stop => {
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                r = again => match r {
                    Ok((z, p)) => {
                        tracing::info!(node = %p, "registered again");
                        (zk, path) = (z, p);
                        backoff = Duration::from_millis(100);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("{e}; trying again in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                }
            }
        }
    }
}
