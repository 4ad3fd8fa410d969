//! ZooKeeper, as MPUSH uses it (PROTOCOL.md 10), through `zookeeper-client` (async, tokio):
//! the namespace as a chroot, the digest credentials as the session's auth, the clusters'
//! children listed and watched, and a server's own ephemeral registration.

use std::fmt;
use std::time::Duration;

use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError, OneshotWatcher};

use super::node::ServerNode;
use super::Endpoint;

/// The real server's `mp.zk.namespace`.
pub const DEFAULT_NAMESPACE: &str = "mpush";
/// The real server's `mp.zk.digest` (`addauth digest mpush` in zkCli).
pub const DEFAULT_DIGEST: &str = "mpush";
/// The real server's `mp.zk.session-timeout-ms`.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(5);
/// The real server's `mp.zk.connection-timeout-ms`.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the servers register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cluster {
    /// Connection servers, `/cluster/cs`.
    Connection,
    /// Gateway servers, `/cluster/gs`.
    Gateway,
}

impl Cluster {
    /// The path inside the namespace.
    pub fn path(self) -> &'static str {
        match self {
            Cluster::Connection => "/cluster/cs",
            Cluster::Gateway => "/cluster/gs",
        }
    }
}

/// How to reach the ensemble. `Debug` leaves the digest out.
#[derive(Clone)]
pub struct ZkConfig {
    /// The ensemble, `HOST:PORT[,HOST:PORT...]`.
    pub servers: Vec<Endpoint>,
    /// Namespace (chroot), without slashes.
    pub namespace: String,
    /// Digest credentials (`user:password`, or MPUSH's bare `mpush`); `None`: no auth, and
    /// nodes this process creates are open to anyone.
    pub digest: Option<String>,
}

impl fmt::Debug for ZkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkConfig")
            .field("servers", &self.servers)
            .field("namespace", &self.namespace)
            .field("digest", &self.digest.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ZkConfig {
    /// The ensemble with the real server's namespace and credentials.
    pub fn new(servers: Vec<Endpoint>) -> Self {
        ZkConfig {
            servers,
            namespace: DEFAULT_NAMESPACE.into(),
            digest: Some(DEFAULT_DIGEST.into()),
        }
    }

    /// Parses `HOST:PORT[,HOST:PORT...]`.
    ///
    /// # Errors
    ///
    /// An empty list or an entry that is no endpoint.
    pub fn parse_servers(list: &str) -> Result<Vec<Endpoint>, String> {
        let servers: Vec<Endpoint> = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.parse().map_err(|e| format!("--zookeeper: {e}")))
            .collect::<Result<_, _>>()?;
        if servers.is_empty() {
            return Err("--zookeeper: no HOST:PORT given".into());
        }
        Ok(servers)
    }

    fn root(&self) -> String {
        format!("/{}", self.namespace.trim_matches('/'))
    }

    fn acls(&self) -> Acls<'static> {
        if self.digest.is_some() {
            Acls::creator_all()
        } else {
            Acls::anyone_all()
        }
    }
}

/// What went wrong talking to ZooKeeper.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// No session with the ensemble.
    #[error("ZooKeeper {servers}: {source}")]
    Connect {
        /// The ensemble as given.
        servers: String,
        /// The client's error.
        source: ZkError,
    },
    /// An operation failed (permissions: the digest credentials do not match).
    #[error("ZooKeeper {op} {path}: {source}")]
    Op {
        /// What was attempted.
        op: &'static str,
        /// On which node (inside the namespace).
        path: String,
        /// The client's error.
        source: ZkError,
    },
}

fn op(op: &'static str, path: &str) -> impl FnOnce(ZkError) -> DiscoveryError {
    let path = path.to_string();
    move |source| DiscoveryError::Op { op, path, source }
}

/// What a [`Zk::list`] watches: the cluster's children and each child's data. Any one
/// firing means "list again" (ZooKeeper watches fire once).
pub struct Watch(Vec<OneshotWatcher>);

impl Watch {
    /// Completes when the children or a child's data changed, or the session ended.
    pub async fn changed(self) {
        if self.0.is_empty() {
            return std::future::pending().await;
        }
        let all = self.0.into_iter().map(|w| Box::pin(w.changed()));
        futures::future::select_all(all).await;
    }
}

/// A session with the ensemble, rooted at the namespace.
pub struct Zk {
    client: Client,
    cfg: ZkConfig,
}

impl Zk {
    /// Connects, authenticates with the digest credentials and creates the namespace if it is
    /// missing (with the ACL a real server gives it).
    ///
    /// # Errors
    ///
    /// No session within the session and connection timeouts (the ensemble's servers are
    /// tried in turn meanwhile), or the namespace cannot be created.
    pub async fn connect(cfg: &ZkConfig) -> Result<Zk, DiscoveryError> {
        let servers = cfg
            .servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut connector = Client::connector()
            .with_session_timeout(SESSION_TIMEOUT)
            .with_connection_timeout(CONNECTION_TIMEOUT);
        if let Some(digest) = &cfg.digest {
            connector = connector.with_auth("digest", digest.as_bytes());
        }
        let connect = connector.connect(&servers);
        let client = tokio::time::timeout(SESSION_TIMEOUT + CONNECTION_TIMEOUT, connect)
            .await
            .unwrap_or(Err(ZkError::Timeout))
            .map_err(|source| DiscoveryError::Connect {
                servers: servers.clone(),
                source,
            })?;
        let root = cfg.root();
        let options = CreateMode::Persistent.with_acls(cfg.acls());
        match client.create(&root, &[], &options).await {
            Ok(_) | Err(ZkError::NodeExists) => {}
            Err(e) => return Err(op("create", &root)(e)),
        }
        let client = client
            .chroot(root.clone())
            .map_err(|_| op("chroot", &root)(ZkError::BadArguments(&"bad namespace")))?;
        Ok(Zk {
            client,
            cfg: cfg.clone(),
        })
    }

    /// Whether the session has ended (expired, closed, auth failed): a new one is needed.
    pub fn is_terminated(&self) -> bool {
        self.client.state().is_terminated()
    }

    /// Completes when the session has ended.
    pub async fn ended(&self) {
        let mut states = self.client.state_watcher();
        if self.client.state().is_terminated() {
            return;
        }
        while !states.changed().await.is_terminated() {}
    }

    /// The servers registered in `cluster` now, and a [`Watch`] that fires when its children
    /// change (or, if the path does not exist yet, when it is created) or when one of them
    /// has its data set (a changed `weight`). Nodes with bad data are left out with a
    /// warning (still watched: a fix is picked up); nodes that vanish while being read are
    /// left out.
    ///
    /// # Errors
    ///
    /// Listing or reading fails for another reason than a vanished node.
    pub async fn list(
        &self,
        cluster: Cluster,
    ) -> Result<(Vec<(String, ServerNode)>, Watch), DiscoveryError> {
        let path = cluster.path();
        let children = match self.client.list_and_watch_children(path).await {
            Ok(v) => v,
            Err(ZkError::NoNode) => {
                let (stat, watcher) = self
                    .client
                    .check_and_watch_stat(path)
                    .await
                    .map_err(op("watch", path))?;
                if stat.is_some() {
                    // Created in between: list again right away.
                    return Box::pin(self.list(cluster)).await;
                }
                return Ok((Vec::new(), Watch(vec![watcher])));
            }
            Err(e) => return Err(op("list", path)(e)),
        };
        let (mut names, watcher) = children;
        names.sort();
        let reads = names.iter().map(|name| {
            let child = format!("{path}/{name}");
            async move { (self.client.get_and_watch_data(&child).await, child) }
        });
        let mut watchers = vec![watcher];
        let mut out = Vec::with_capacity(names.len());
        for ((read, child), name) in futures::future::join_all(reads)
            .await
            .into_iter()
            .zip(names)
        {
            match read {
                Ok((data, _, data_watcher)) => {
                    watchers.push(data_watcher);
                    match ServerNode::parse(&data) {
                        Ok(node) => out.push((name, node)),
                        Err(e) => tracing::warn!(node = %child, "ignoring a registration: {e}"),
                    }
                }
                Err(ZkError::NoNode) => {}
                Err(e) => return Err(op("read", &child)(e)),
            }
        }
        Ok((out, Watch(watchers)))
    }

    /// Registers `node` in `cluster` as the real server does: an ephemeral
    /// `<cluster>/<uuid>`, gone when the session ends. Returns the node's path.
    ///
    /// # Errors
    ///
    /// The parent cannot be created or the node not written.
    pub async fn register(
        &self,
        cluster: Cluster,
        node: &ServerNode,
    ) -> Result<String, DiscoveryError> {
        let parent = cluster.path();
        let dirs = CreateMode::Persistent.with_acls(self.cfg.acls());
        self.client
            .mkdir(parent, &dirs)
            .await
            .map_err(op("create", parent))?;
        let path = format!("{parent}/{}", uuid_v4());
        let ephemeral = CreateMode::Ephemeral.with_acls(self.cfg.acls());
        self.client
            .create(&path, &node.to_json(), &ephemeral)
            .await
            .map_err(op("create", &path))?;
        Ok(path)
    }

    /// Removes a registration (the session's end would too, after its timeout).
    ///
    /// # Errors
    ///
    /// The node cannot be deleted (it is already gone: not an error).
    pub async fn deregister(&self, path: &str) -> Result<(), DiscoveryError> {
        match self.client.delete(path, None).await {
            Ok(()) | Err(ZkError::NoNode) => Ok(()),
            Err(e) => Err(op("delete", path)(e)),
        }
    }
}

/// A random (version 4) UUID in its usual text form, as the real server names its nodes.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "{}-{}-{}-{}-{}",
        h(0..4),
        h(4..6),
        h(6..8),
        h(8..10),
        h(10..16)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_look_like_the_real_servers_node_ids() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(u.as_bytes()[14], b'4');
        assert_ne!(u, uuid_v4());
    }

    #[test]
    fn debug_hides_the_digest() {
        let mut cfg = ZkConfig::new(ZkConfig::parse_servers("127.0.0.1:2181,zk:2181").unwrap());
        cfg.digest = Some("fleet:s3cret".into());
        let text = format!("{cfg:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("redacted"));
        assert!(ZkConfig::parse_servers(" , ").is_err());
        assert!(ZkConfig::parse_servers("zk").is_err());
    }
}
