//! One connection's state on the ring, and the table that finds it from a completion.
//!
//! A connection lives in its slot's entry while the core knows it. Once the core forgot it
//! (`Io::Shutdown`, a failed connect, a newer connect of the slot) while operations of it are
//! still in flight, it moves to `retiring` until the last completion; only then is its socket
//! closed and its memory freed, so the kernel never sees a closed descriptor or a freed buffer.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use bytes::Bytes;
use io_uring::types;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::sys::GEN_MASK;
use crate::shard::core::ConnId;

/// Flag bits of a [`Conn`]. The first four are operations in flight.
pub(super) mod flag {
    pub(crate) const CONNECT: u8 = 1;
    pub(crate) const TIMEOUT: u8 = 1 << 1;
    pub(crate) const RECV: u8 = 1 << 2;
    pub(crate) const SEND: u8 = 1 << 3;
    pub(crate) const IN_FLIGHT: u8 = CONNECT | TIMEOUT | RECV | SEND;
    /// Connected: reads may be armed.
    pub(crate) const CONNECTED: u8 = 1 << 4;
    /// Reading paused by the core.
    pub(crate) const PAUSED: u8 = 1 << 5;
    /// The core forgot it: nothing more is reported, it is closed once idle.
    pub(crate) const FORGOTTEN: u8 = 1 << 6;
    /// Ended: the peer closed, a read or write failed, or it was shut down.
    pub(crate) const ENDED: u8 = 1 << 7;
}

/// What a connect keeps until both its completions (connect, linked timeout) are in. Boxed: the
/// kernel holds pointers into it while the `Conn` itself may move between tables.
pub(super) struct Connecting {
    pub(super) addr: SockAddr,
    pub(super) timeout: types::Timespec,
}

/// `Conn::sending` when no write is in flight.
pub(super) const NO_SEND: u32 = u32::MAX;

/// One connection: 40 bytes while idle (no receive buffer, no write queue, the write in
/// flight held in the shard's [`Sends`], not here).
pub(super) struct Conn {
    pub(super) id: ConnId,
    pub(super) sock: Option<Socket>,
    pub(super) connecting: Option<Box<Connecting>>,
    /// The write in flight (its index in [`Sends`], or [`NO_SEND`]), and how much is sent.
    pub(super) sending: u32,
    pub(super) sent: u32,
    /// Writes given while one is in flight (boxed and allocated only then: an idle session
    /// keeps 8 bytes for it, not a queue header).
    #[allow(clippy::box_collection)]
    pub(super) queued: Option<Box<VecDeque<Bytes>>>,
    /// Shut the socket down once the queued writes are sent.
    pub(super) shut_after_writes: bool,
    pub(super) flags: u8,
}

impl Conn {
    pub(super) fn new(id: ConnId, sock: Socket, connecting: Box<Connecting>) -> Conn {
        Conn {
            id,
            sock: Some(sock),
            connecting: Some(connecting),
            sending: NO_SEND,
            sent: 0,
            queued: None,
            shut_after_writes: false,
            flags: flag::CONNECT | flag::TIMEOUT,
        }
    }

    pub(super) fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    pub(super) fn set(&mut self, f: u8) {
        self.flags |= f;
    }

    pub(super) fn clear(&mut self, f: u8) {
        self.flags &= !f;
    }

    pub(super) fn fd(&self) -> Option<types::Fd> {
        self.sock.as_ref().map(|s| types::Fd(s.as_raw_fd()))
    }

    /// Whether a multishot receive should be armed now.
    pub(super) fn wants_recv(&self) -> bool {
        self.has(flag::CONNECTED)
            && !self.has(flag::RECV | flag::PAUSED | flag::FORGOTTEN | flag::ENDED)
            && self.sock.is_some()
    }

    /// Ends the stream both ways (which completes an armed receive with 0 bytes).
    pub(super) fn shutdown(&mut self) {
        if let Some(sock) = &self.sock {
            if self.has(flag::CONNECTED) {
                let _ = sock.shutdown(std::net::Shutdown::Both);
            }
        }
        self.set(flag::ENDED);
    }
}

/// The writes in flight of the shard's connections, each until its send completes: a
/// connection keeps a 4-byte index instead of a 32-byte `Option<Bytes>` that an idle session
/// would carry for nothing. Freed entries are reused, so steady state allocates nothing.
#[derive(Default)]
pub(super) struct Sends {
    held: Vec<Option<Bytes>>,
    free: Vec<u32>,
}

impl Sends {
    /// Keeps `data` until [`release`](Self::release); its index.
    pub(super) fn hold(&mut self, data: Bytes) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.held[i as usize] = Some(data);
                i
            }
            None => {
                self.held.push(Some(data));
                (self.held.len() - 1) as u32
            }
        }
    }

    pub(super) fn get(&self, i: u32) -> Option<&Bytes> {
        self.held.get(i as usize)?.as_ref()
    }

    /// Drops the write at `i` (nothing for [`NO_SEND`]).
    pub(super) fn release(&mut self, i: u32) {
        if let Some(e) = self.held.get_mut(i as usize) {
            if e.take().is_some() {
                self.free.push(i);
            }
        }
    }
}

/// Every connection of the shard, found by slot and generation, and their writes in flight.
#[derive(Default)]
pub(super) struct Conns {
    current: Vec<Option<Conn>>,
    retiring: HashMap<(u32, u32), Conn>,
    sends: Sends,
}

impl Conns {
    pub(super) fn new(slots: u32) -> Conns {
        Conns {
            current: (0..slots).map(|_| None).collect(),
            retiring: HashMap::new(),
            sends: Sends::default(),
        }
    }

    /// The connection of `slot` whose generation's low bits are `gen`.
    pub(super) fn get(&mut self, slot: u32, gen: u32) -> Option<&mut Conn> {
        self.get_with_sends(slot, gen).map(|(c, _)| c)
    }

    /// [`get`](Self::get), with the writes in flight.
    pub(super) fn get_with_sends(
        &mut self,
        slot: u32,
        gen: u32,
    ) -> Option<(&mut Conn, &mut Sends)> {
        let gen = gen & GEN_MASK;
        let Conns {
            current,
            retiring,
            sends,
        } = self;
        let c = match current.get_mut(slot as usize) {
            Some(Some(c)) if c.id.gen & GEN_MASK == gen => c,
            _ => retiring.get_mut(&(slot, gen))?,
        };
        Some((c, sends))
    }

    /// A new connection of its slot; the slot's previous one, if any, retires.
    pub(super) fn insert(&mut self, conn: Conn) {
        let slot = conn.id.slot as usize;
        if slot >= self.current.len() {
            // A device added through the control API: the table grows with the core's slots.
            self.current.resize_with(slot + 1, || None);
        }
        let Some(entry) = self.current.get_mut(slot) else {
            return;
        };
        if let Some(mut old) = entry.replace(conn) {
            old.set(flag::FORGOTTEN);
            if old.has(flag::IN_FLIGHT) {
                self.retiring
                    .insert((old.id.slot, old.id.gen & GEN_MASK), old);
            } else {
                self.sends.release(old.sending);
            }
        }
    }

    /// Frees the connection if the core forgot it and nothing of it is in flight: closes the
    /// socket and drops its buffers. Returns whether it did.
    pub(super) fn release_if_idle(&mut self, slot: u32, gen: u32) -> bool {
        let gen = gen & GEN_MASK;
        let idle = |c: &Conn| c.has(flag::FORGOTTEN) && !c.has(flag::IN_FLIGHT);
        if let Some(entry) = self.current.get_mut(slot as usize) {
            if entry
                .as_ref()
                .is_some_and(|c| c.id.gen & GEN_MASK == gen && idle(c))
            {
                if let Some(c) = entry.take() {
                    self.sends.release(c.sending);
                }
                return true;
            }
        }
        if self.retiring.get(&(slot, gen)).is_some_and(idle) {
            if let Some(c) = self.retiring.remove(&(slot, gen)) {
                self.sends.release(c.sending);
            }
            return true;
        }
        false
    }

    /// Every connection, for the teardown.
    pub(super) fn all_mut(&mut self) -> impl Iterator<Item = &mut Conn> {
        self.current
            .iter_mut()
            .flatten()
            .chain(self.retiring.values_mut())
    }

    /// Whether any operation of any connection is still in flight.
    pub(super) fn any_in_flight(&self) -> bool {
        self.current
            .iter()
            .flatten()
            .chain(self.retiring.values())
            .any(|c| c.has(flag::IN_FLIGHT))
    }
}

/// A non-blocking TCP socket for `dst`, bound to `src` first if given.
pub(super) fn socket_for(src: Option<IpAddr>, dst: SocketAddr) -> std::io::Result<Socket> {
    let sock = Socket::new(
        Domain::for_address(dst),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    if let Some(src) = src {
        crate::shard::glue::bind_address_no_port(sock.as_raw_fd())?;
        sock.bind(&SocketAddr::new(src, 0).into())?;
    }
    sock.set_nodelay(true)?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_idle_connection_stays_small() {
        assert!(std::mem::size_of::<Option<super::Conn>>() <= 40);
    }
}
