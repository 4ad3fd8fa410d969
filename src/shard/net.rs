//! The shard's socket operations: connect, the one long-lived read per socket, and writes.
//!
//! tokio-uring 0.5 cannot bind a socket before connecting it, so connects go through tokio's
//! own `TcpSocket` (the tokio-uring runtime is a tokio current-thread runtime with the epoll
//! driver enabled): bind to the source address with `IP_BIND_ADDRESS_NO_PORT`, connect under
//! a timeout, then hand the connected socket to tokio-uring with `from_std`. Every read and
//! write after that goes through io_uring. A connect is a one-off per session, so the epoll
//! detour costs nothing that matters; the steady state (heartbeats, pushes) is pure io_uring.
//!
//! Traps (STYLE.md): dropping an in-flight tokio-uring op does not cancel it, so each socket has
//! exactly one read in flight for its life, never raced against a timer; a session ends with
//! `shutdown`, which completes that read with 0 bytes and lets the reader task end.

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::mpsc::UnboundedSender;
use tokio_uring::net::TcpStream;

/// What the shard's socket tasks report to its loop. `gen` is the connection generation of
/// the slot: a report for an older connection is stale and dropped.
#[derive(Debug)]
pub(crate) enum NetEvent {
    Connected {
        slot: u32,
        gen: u32,
        stream: std::net::TcpStream,
    },
    ConnectFailed {
        slot: u32,
        gen: u32,
    },
    Data {
        slot: u32,
        gen: u32,
        buf: BytesMut,
    },
    Closed {
        slot: u32,
        gen: u32,
    },
    WriteDone {
        slot: u32,
        gen: u32,
        ok: bool,
    },
    /// The ticket store has answers.
    TicketsReady,
    /// The push sink took a record (`ack`: the push waits for this to be acked).
    SinkTook {
        slot: u32,
        gen: u32,
        msg_id: i32,
        ack: bool,
        received_us: u64,
    },
}

/// What a socket's reader shares with the shard loop.
#[derive(Debug)]
pub(crate) struct ReadShared {
    /// The size of the next read: small while idle, the frame's size while one arrives.
    pub(crate) size: Cell<u32>,
    /// Backpressure: the sink is full and this connection's pushes wait, so do not read.
    pub(crate) paused: Cell<bool>,
}

/// The shard-wide read gate: closed while the shard drains for a graceful stop ("stop
/// reading new pushes"); its `Notify` also wakes readers whose pause was lifted.
#[derive(Debug, Default)]
pub(crate) struct ReadGate {
    pub(crate) closed: Cell<bool>,
    pub(crate) reopened: tokio::sync::Notify,
}

pub(crate) type Events = UnboundedSender<NetEvent>;

/// Connects `dst` from `src` (any address if `None`) within `timeout` and reports the result.
pub(crate) async fn connect(
    slot: u32,
    gen: u32,
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
    events: Events,
) {
    let event = match tokio::time::timeout(timeout, connect_tcp(src, dst)).await {
        Ok(Ok(stream)) => NetEvent::Connected { slot, gen, stream },
        Ok(Err(e)) => {
            tracing::debug!(%dst, error = %e, "connect failed");
            NetEvent::ConnectFailed { slot, gen }
        }
        Err(_) => NetEvent::ConnectFailed { slot, gen },
    };
    let _ = events.send(event);
}

async fn connect_tcp(src: Option<IpAddr>, dst: SocketAddr) -> io::Result<std::net::TcpStream> {
    let socket = match dst {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(src) = src {
        bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::new(src, 0))?;
    }
    socket.set_nodelay(true)?;
    let stream = socket.connect(dst).await?;
    stream.into_std()
}

/// `IP_BIND_ADDRESS_NO_PORT`: binding to a source address picks the port at connect time, by
/// the whole 4-tuple, so one source address serves 64k connections per server endpoint
/// instead of 64k in all.
fn bind_address_no_port(socket: &tokio::net::TcpSocket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the fd is a valid open socket owned by `socket` for the duration of the call;
    // the option value points to a live c_int whose size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The one read of a socket, for the socket's life. Each read gets a fresh buffer of the size
/// the shard asks for (small while idle, the frame's size while a big frame is arriving), so
/// an idle session holds one small buffer. Before each read it waits while the connection is
/// paused (backpressure) or the shard's gate is closed (draining): a read never in flight
/// cannot deliver pushes the shard has no room for.
pub(crate) async fn read_loop(
    slot: u32,
    gen: u32,
    stream: Rc<TcpStream>,
    shared: Rc<ReadShared>,
    gate: Rc<ReadGate>,
    events: Events,
) {
    loop {
        while shared.paused.get() || gate.closed.get() {
            // Single-threaded: nothing runs between the check and the first poll of
            // `notified`, so a wake-up cannot be missed.
            gate.reopened.notified().await;
        }
        let buf = BytesMut::with_capacity(shared.size.get() as usize);
        let (res, buf) = stream.read(buf).await;
        let event = match res {
            Ok(n) if n > 0 => NetEvent::Data { slot, gen, buf },
            _ => NetEvent::Closed { slot, gen },
        };
        let closed = matches!(event, NetEvent::Closed { .. });
        if events.send(event).is_err() || closed {
            return;
        }
    }
}

/// Writes `buf` whole and reports when done.
pub(crate) async fn write_all(
    slot: u32,
    gen: u32,
    stream: Rc<TcpStream>,
    buf: BytesMut,
    events: Events,
) {
    let (res, _) = stream.write_all(buf).await;
    let _ = events.send(NetEvent::WriteDone {
        slot,
        gen,
        ok: res.is_ok(),
    });
}
