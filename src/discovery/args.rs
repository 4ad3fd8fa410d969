//! The ZooKeeper flags: `run`, `serve` and any later command flatten [`ZkArgs`] in.

use super::zk::{ZkConfig, DEFAULT_DIGEST, DEFAULT_NAMESPACE};

/// Flags naming the ZooKeeper ensemble; defaults as the real server's `mp.zk.*`. `Debug`
/// leaves the credentials out.
#[derive(clap::Args, Clone, Default)]
pub struct ZkArgs {
    /// ZooKeeper ensemble where the MPUSH servers register (`mp.zk.server-address`):
    /// `HOST:PORT[,HOST:PORT...]`.
    #[arg(long, value_name = "HOST:PORT,...")]
    pub zookeeper: Option<String>,
    /// ZooKeeper namespace (`mp.zk.namespace`).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_NAMESPACE)]
    pub zk_namespace: String,
    /// ZooKeeper digest credentials (`mp.zk.digest`); empty for none.
    #[arg(long, value_name = "CREDENTIALS", env = "MPUSH_ZK_DIGEST", hide_env_values = true,
          hide_default_value = true, default_value = DEFAULT_DIGEST)]
    pub zk_digest: String,
}

impl std::fmt::Debug for ZkArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkArgs")
            .field("zookeeper", &self.zookeeper)
            .field("zk_namespace", &self.zk_namespace)
            .field("zk_digest", &"<redacted>")
            .finish()
    }
}

impl ZkArgs {
    /// The ensemble's configuration, if `--zookeeper` was given.
    ///
    /// # Errors
    ///
    /// A malformed `--zookeeper` list or namespace (a usage error).
    pub fn config(&self) -> Result<Option<ZkConfig>, String> {
        let Some(list) = &self.zookeeper else {
            return Ok(None);
        };
        let servers = ZkConfig::parse_servers(list)?;
        let namespace = self.zk_namespace.trim_matches('/').to_string();
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if namespace.is_empty() || !namespace.chars().all(ok) {
            return Err(format!(
                "--zk-namespace {:?}: use letters, digits, '-', '_', '.'",
                self.zk_namespace
            ));
        }
        Ok(Some(ZkConfig {
            servers,
            namespace,
            digest: (!self.zk_digest.is_empty()).then(|| self.zk_digest.clone()),
        }))
    }
}

/// The flags of a command that finds the connection servers (`run`, later `push`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DiscoverArgs {
    /// The ensemble and its credentials.
    #[command(flatten)]
    pub zk: ZkArgs,
    /// Connect to a discovered server's registered `public_ip` attribute when it has one
    /// (otherwise, and by default, to its registered `host`).
    #[arg(long, requires = "zookeeper")]
    pub zk_public_ip: bool,
}

impl DiscoverArgs {
    /// Where the servers come from: ZooKeeper when `--zookeeper` is given, else `servers`
    /// (`None` when both are absent).
    ///
    /// # Errors
    ///
    /// A malformed ZooKeeper flag (a usage error).
    pub fn spec(&self, servers: &[super::Endpoint]) -> Result<Option<super::Spec>, String> {
        if let Some(cfg) = self.zk.config()? {
            return Ok(Some(super::Spec::ZooKeeper {
                cfg,
                public: self.zk_public_ip,
            }));
        }
        Ok((!servers.is_empty()).then(|| super::Spec::Static(servers.to_vec())))
    }
}
