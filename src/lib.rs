//! mpush-fleet: holds hundreds of thousands of MPUSH device sessions from one Linux machine.
#![warn(missing_docs, unreachable_pub)]

pub mod crypto;
pub mod proto;
pub mod server;
pub mod tickets;
pub mod device;
pub mod stats;
pub mod shard;
pub mod control;
