//! What the core asks its driver to do, and the names it gives connections.

use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};

use crate::tickets::format::ClientTicket;
use crate::tickets::TicketStore;

/// One connection of one slot. The generation changes with every connect, so a completion for
/// a connection the core has given up is recognised and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// The device slot (index within the shard).
    pub slot: u32,
    /// The slot's connection generation.
    pub gen: u32,
}

/// I/O for the driver to start, in order. A driver performs one connection's operations in the
/// order given (a write before a later shutdown), and reports each `Connect` and `Write` back.
#[derive(Debug, PartialEq, Eq)]
pub enum Io {
    /// Open a TCP connection from `src` (any if `None`) to `dst`; answer with
    /// [`ShardCore::handle_connected`](super::ShardCore::handle_connected) or
    /// [`ShardCore::handle_connect_failed`](super::ShardCore::handle_connect_failed).
    Connect {
        /// The connection being opened.
        conn: ConnId,
        /// Source address to bind first.
        src: Option<IpAddr>,
        /// The server.
        dst: SocketAddr,
    },
    /// Append `data` to the connection's send stream; answer with
    /// [`ShardCore::handle_write_done`](super::ShardCore::handle_write_done).
    Write {
        /// The connection.
        conn: ConnId,
        /// Bytes to send (a slice of the core's reused output buffer).
        data: Bytes,
    },
    /// After writing what was given before, shut the connection down and forget it.
    Shutdown(ConnId),
    /// Stop reading this connection (its pushes wait for the sink).
    PauseRead(ConnId),
    /// Read this connection again.
    ResumeRead(ConnId),
}

/// A ticket-store request for the driver's [`TicketStore`](crate::tickets::TicketStore).
/// Devices are named by their global index; the store renders ids where it needs them.
#[derive(Debug, PartialEq, Eq)]
pub enum TicketOp {
    /// Look the device's ticket up; answer with
    /// [`ShardCore::handle_ticket`](super::ShardCore::handle_ticket).
    Load(u32),
    /// Store the device's ticket (wall-clock ms of the save, for the TTL).
    Save(u32, ClientTicket, i64),
    /// Drop the device's ticket.
    Delete(u32),
}

impl TicketOp {
    /// Hands the request to `store` (what every driver does with it).
    pub fn apply(self, store: &mut dyn TicketStore) {
        match self {
            TicketOp::Load(device) => store.load(device),
            TicketOp::Save(device, ticket, wall_ms) => store.save(device, &ticket, wall_ms),
            TicketOp::Delete(device) => store.delete(device),
        }
    }
}

/// A connection as the core sees it: the bytes of a frame still arriving, and backpressure.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) id: ConnId,
    /// Bytes of a frame still arriving; `None` between frames. Boxed: a frame split across
    /// reads is rare (a push larger than a receive buffer), and the idle session keeps 8
    /// bytes for it instead of a 32-byte `BytesMut`.
    pub(super) rx: Option<Box<BytesMut>>,
    /// Sink records of this connection not yet taken by the sink.
    pub(super) held: u32,
    /// Reading is paused (backpressure or drain).
    pub(super) paused: bool,
}

impl Conn {
    pub(super) fn new(id: ConnId) -> Self {
        Conn {
            id,
            rx: None,
            held: 0,
            paused: false,
        }
    }
}
