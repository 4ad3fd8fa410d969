//! Finding the servers: host names resolved (and resolved again when connects fail), and
//! MPUSH's ZooKeeper registry (PROTOCOL.md 10) read, watched and written.
//!
//! - [`Endpoint`]: `HOST:PORT` as given, resolved to every address the name has.
//! - [`BindAddr`]: `HOST:PORT` to listen on, a name resolved once at start.
//! - [`spread`]: servers and weights to the rotation a shard goes round.
//! - [`node`]: a registered server node's JSON data.
//! - [`zk`]: the ZooKeeper session (namespace, digest credentials), listing and watching a
//!   cluster's children, a server's own ephemeral registration.
//! - [`gateways`]: the gateways of `/cluster/gs`, watched for a push run.
//! - [`Registration`]: `serve`'s own node, kept while it runs, removed at stop.
//! - [`ServerSource`]: the control plane's current server list, kept up to date on a thread
//!   of its own; the control plane hands changes to shards as commands. Nothing here runs on
//!   a shard: shards get addresses, never names.
//! - [`ZkArgs`]: the ZooKeeper flags, shared by every command that finds or registers
//!   servers.

pub mod args;
pub mod bind;
pub mod endpoint;
pub mod gateways;
pub mod node;
pub mod register;
pub mod source;
pub mod spread;
pub mod zk;

pub use args::{DiscoverArgs, ZkArgs};
pub use bind::BindAddr;
pub use endpoint::{Endpoint, EndpointError};
pub use node::ServerNode;
pub use register::{RegisterArgs, Registration};
pub use source::{ServerSource, Spec, StartError};
pub use spread::Weighted;
