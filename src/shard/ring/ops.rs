//! The core's I/O started on the ring, and each completion taken back to the core.
//!
//! Buffer lifetimes: a send points into the `Bytes` held for its connection in the shard's
//! `Sends` until the completion; a connect points into its boxed `Connecting` until both its completions;
//! a receive writes into the shard's buffer ring, which stays registered until the teardown
//! has collected every completion. A connection is freed (its socket closed) only with no
//! operation of it in flight (`Conns::release_if_idle`).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use io_uring::{opcode, squeue, types};

use super::bufs::{BufRing, GROUP};
use super::conn::{flag, socket_for, Conn, Connecting, Sends, NO_SEND};
use super::sys::{parse, user_data, Cqe, Op, Ring};
use super::Driver;
use crate::device::Now;
use crate::shard::core::{ConnId, Io};

/// What a completion of a connection means for the core.
enum Outcome {
    Nothing,
    Connected,
    ConnectFailed,
    Data,
    Closed,
    Written { ok: u32, failed: u32 },
}

impl Driver {
    pub(super) fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let e = opcode::Read::new(self.waker.fd(), buf.cast(), 8)
            .build()
            .user_data(wake_user_data());
        // SAFETY: `wake_buf` is a heap u64 owned by the driver and neither moved nor freed
        // while `wake_armed` (the teardown waits for this read's completion or leaks it).
        unsafe { self.ring.push(&e) };
        self.wake_armed = true;
    }

    /// Starts one of the core's I/O requests.
    pub(super) fn start(&mut self, now: Now, io: Io) {
        match io {
            Io::Connect { conn, src, dst } => {
                let sock = match socket_for(src, dst) {
                    Ok(sock) => sock,
                    Err(e) => {
                        tracing::debug!(%dst, error = %e, "socket setup failed");
                        self.core.handle_connect_failed(now, conn);
                        self.again = true;
                        return;
                    }
                };
                let ms = u64::from(self.cfg.device.connect_timeout_ms);
                let connecting = Box::new(Connecting {
                    addr: dst.into(),
                    timeout: types::Timespec::from(Duration::from_millis(ms)),
                });
                let fd = types::Fd(std::os::fd::AsRawFd::as_raw_fd(&sock));
                let connect =
                    opcode::Connect::new(fd, connecting.addr.as_ptr(), connecting.addr.len())
                        .build()
                        .flags(squeue::Flags::IO_LINK)
                        .user_data(user_data(conn, Op::Connect));
                let timeout = opcode::LinkTimeout::new(&connecting.timeout)
                    .build()
                    .user_data(user_data(conn, Op::ConnectTimeout));
                // SAFETY: the address and timespec live in the boxed `Connecting`, which the
                // connection keeps until both completions are in (the box does not move when
                // the `Conn` does); the socket is closed only after both.
                unsafe { self.ring.push_linked(&connect, &timeout) };
                self.conns.insert(Conn::new(conn, sock, connecting));
            }
            Io::Write { conn, data } => match self.conns.get_with_sends(conn.slot, conn.gen) {
                Some((c, sends)) if c.id == conn && c.fd().is_some() && !c.has(flag::ENDED) => {
                    if c.sending != NO_SEND {
                        c.queued
                            .get_or_insert_with(Default::default)
                            .push_back(data);
                    } else {
                        c.sending = sends.hold(data);
                        c.sent = 0;
                        send(&mut self.ring, c, sends);
                    }
                }
                // Gone or ended: the write is done, unsent.
                _ => {
                    self.core.handle_write_done(now, conn, false);
                    self.again = true;
                }
            },
            Io::Shutdown(conn) => {
                if let Some(c) = self.conns.get(conn.slot, conn.gen) {
                    c.set(flag::FORGOTTEN);
                    if c.sending != NO_SEND {
                        c.shut_after_writes = true;
                    } else {
                        c.shutdown();
                    }
                    self.conns.release_if_idle(conn.slot, conn.gen);
                }
            }
            Io::PauseRead(conn) => {
                if let Some(c) = self.conns.get(conn.slot, conn.gen) {
                    c.set(flag::PAUSED);
                    if c.has(flag::RECV) {
                        let e = opcode::AsyncCancel::new(user_data(c.id, Op::Recv))
                            .build()
                            .user_data(user_data(c.id, Op::Cancel));
                        // SAFETY: a cancel points at no memory.
                        unsafe { self.ring.push(&e) };
                    }
                }
            }
            Io::ResumeRead(conn) => {
                if let Some(c) = self.conns.get(conn.slot, conn.gen) {
                    c.clear(flag::PAUSED);
                    arm_recv(&mut self.ring, c, self.exiting);
                }
            }
        }
    }

    /// Takes one completion: updates the connection, then tells the core what it means.
    pub(super) fn complete(&mut self, now: Now, cqe: Cqe) {
        let Some((slot, gen, op)) = parse(cqe.user_data) else {
            return;
        };
        if op == Op::Wake {
            self.wake_armed = false;
            self.waker.rearm();
            self.arm_wake();
            return;
        }
        let Driver {
            conns,
            ring,
            bufs,
            rx,
            exiting,
            ..
        } = self;
        let Some((c, sends)) = conns.get_with_sends(slot, gen) else {
            if let Some(bid) = cqe.buffer() {
                bufs.recycle(bid);
            }
            return;
        };
        let id = c.id;
        let io = TurnIo {
            ring,
            bufs,
            sends,
            rx,
        };
        let outcome = conn_complete(c, op, cqe, io, *exiting);
        // A connection the core forgot hears nothing more, except how its writes ended.
        let reported = !c.has(flag::FORGOTTEN);
        match outcome {
            Outcome::Nothing => {}
            Outcome::Connected if reported => self.core.handle_connected(now, id),
            Outcome::Connected => {}
            Outcome::ConnectFailed => self.core.handle_connect_failed(now, id),
            Outcome::Data if reported => {
                let _ = self.core.handle_read(now, id, &mut self.rx);
            }
            Outcome::Data => {}
            Outcome::Closed if reported => self.core.handle_closed(now, id),
            Outcome::Closed => {}
            Outcome::Written { ok, failed } => {
                for _ in 0..ok {
                    self.core.handle_write_done(now, id, true);
                }
                for _ in 0..failed {
                    self.core.handle_write_done(now, id, false);
                }
            }
        }
        self.conns.release_if_idle(slot, gen);
    }

    /// A completion during the teardown: nothing is restarted and the core hears nothing.
    pub(super) fn complete_exiting(&mut self, cqe: Cqe) {
        let Some((slot, gen, op)) = parse(cqe.user_data) else {
            return;
        };
        if let Some(bid) = cqe.buffer() {
            self.bufs.recycle(bid);
        }
        if op == Op::Wake {
            self.wake_armed = false;
            return;
        }
        let Some(c) = self.conns.get(slot, gen) else {
            return;
        };
        match op {
            Op::Connect => c.clear(flag::CONNECT),
            Op::ConnectTimeout => c.clear(flag::TIMEOUT),
            Op::Recv if !cqe.more() => c.clear(flag::RECV),
            Op::Send => c.clear(flag::SEND),
            Op::Recv | Op::Cancel | Op::Wake => {}
        }
        if !c.has(flag::CONNECT | flag::TIMEOUT) {
            c.connecting = None;
        }
    }

    /// Asks the kernel to cancel every request of the ring, and ends every stream.
    pub(super) fn cancel_all(&mut self) {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(user_data(ConnId { slot: 0, gen: 0 }, Op::Cancel));
        // SAFETY: a cancel points at no memory.
        unsafe { self.ring.push(&e) };
        for c in self.conns.all_mut() {
            c.set(flag::FORGOTTEN);
            c.shutdown();
        }
    }
}

fn wake_user_data() -> u64 {
    user_data(
        ConnId {
            slot: u32::MAX,
            gen: 0,
        },
        Op::Wake,
    )
}

/// What a completion may touch besides its connection.
struct TurnIo<'a> {
    ring: &'a mut Ring,
    bufs: &'a mut BufRing,
    sends: &'a mut Sends,
    rx: &'a mut BytesMut,
}

/// Updates connection `c` for a completion of its operation `op`.
fn conn_complete(c: &mut Conn, op: Op, cqe: Cqe, io: TurnIo<'_>, exiting: bool) -> Outcome {
    let TurnIo {
        ring,
        bufs,
        sends,
        rx,
    } = io;
    let r = cqe.result;
    match op {
        Op::Connect => {
            c.clear(flag::CONNECT);
            if !c.has(flag::TIMEOUT) {
                c.connecting = None;
            }
            if r == 0 {
                c.set(flag::CONNECTED);
                arm_recv(ring, c, exiting);
                Outcome::Connected
            } else {
                // Nothing of the socket is in flight now: close it.
                c.sock = None;
                c.set(flag::FORGOTTEN | flag::ENDED);
                Outcome::ConnectFailed
            }
        }
        Op::ConnectTimeout => {
            c.clear(flag::TIMEOUT);
            if !c.has(flag::CONNECT) {
                c.connecting = None;
            }
            Outcome::Nothing
        }
        Op::Recv => {
            if !cqe.more() {
                c.clear(flag::RECV);
            }
            let outcome = if r > 0 {
                match cqe.buffer() {
                    Some(bid) => {
                        rx.clear();
                        rx.extend_from_slice(bufs.filled(bid, r as usize));
                        bufs.recycle(bid);
                        Outcome::Data
                    }
                    None => Outcome::Nothing,
                }
            } else {
                if let Some(bid) = cqe.buffer() {
                    bufs.recycle(bid);
                }
                match -r {
                    // Out of pool buffers, or cancelled for a pause: re-armed below if wanted.
                    libc::ENOBUFS | libc::ECANCELED => Outcome::Nothing,
                    // End of stream or a failed read.
                    _ => {
                        c.set(flag::ENDED);
                        Outcome::Closed
                    }
                }
            };
            arm_recv(ring, c, exiting);
            outcome
        }
        Op::Send => {
            c.clear(flag::SEND);
            let len = sends.get(c.sending).map_or(0, Bytes::len) as u32;
            if r > 0 && c.sent + (r as u32) < len {
                c.sent += r as u32; // short write: send the rest
                send(ring, c, sends);
                return Outcome::Nothing;
            }
            if r > 0 || len == 0 {
                sends.release(std::mem::replace(&mut c.sending, NO_SEND));
                c.sent = 0;
                if let Some(next) = c.queued.as_mut().and_then(|q| q.pop_front()) {
                    c.sending = sends.hold(next);
                    send(ring, c, sends);
                } else {
                    // Let a burst's queue go: an idle session keeps no write queue.
                    c.queued = None;
                    if c.shut_after_writes {
                        c.shutdown();
                    }
                }
                return Outcome::Written { ok: 1, failed: 0 };
            }
            // The write failed: so do the ones queued behind it.
            let failed = 1 + c.queued.as_ref().map_or(0, |q| q.len()) as u32;
            sends.release(std::mem::replace(&mut c.sending, NO_SEND));
            c.queued = None;
            c.shutdown();
            Outcome::Written { ok: 0, failed }
        }
        Op::Cancel | Op::Wake => Outcome::Nothing,
    }
}

/// Arms a multishot receive on `c` if it wants one.
fn arm_recv(ring: &mut Ring, c: &mut Conn, exiting: bool) {
    if exiting || !c.wants_recv() {
        return;
    }
    let Some(fd) = c.fd() else { return };
    let e = opcode::RecvMulti::new(fd, GROUP)
        .build()
        .user_data(user_data(c.id, Op::Recv));
    // SAFETY: the receive writes only into the shard's buffer ring, registered until the
    // teardown has collected every completion; the socket stays open while RECV is set.
    unsafe { ring.push(&e) };
    c.set(flag::RECV);
}

/// Sends the unsent rest of `c`'s write in flight.
fn send(ring: &mut Ring, c: &mut Conn, sends: &Sends) {
    let (Some(fd), Some(data)) = (c.fd(), sends.get(c.sending)) else {
        return;
    };
    let rest = &data[c.sent as usize..];
    let e = opcode::Send::new(fd, rest.as_ptr(), rest.len() as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data(c.id, Op::Send));
    // SAFETY: `rest` points into the `Bytes` held in `sends` at `c.sending`, which is neither
    // released nor replaced until this send's completion (SEND is set until then; a connection
    // is freed, and its entry released, only with nothing in flight), and a `Bytes`' heap data
    // does not move when the `Sends` vector grows; the socket stays open while SEND is set.
    unsafe { ring.push(&e) };
    c.set(flag::SEND);
}
