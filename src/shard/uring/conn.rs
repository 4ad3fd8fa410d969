//! One connection's I/O on tokio-uring: a connect task, then a reader and a writer task for
//! the connection's life. They report to the shard loop through its completion queue and
//! never make a protocol decision.
//!
//! tokio-uring 0.5 cannot bind a socket before connecting it, so connects go through tokio's
//! own `TcpSocket` (the tokio-uring runtime is a tokio current-thread runtime with the epoll
//! driver enabled): bind to the source address with `IP_BIND_ADDRESS_NO_PORT`, connect under
//! a timeout, then hand the connected socket to tokio-uring with `from_std`. Every read and
//! write after that goes through io_uring.
//!
//! Traps (STYLE.md): dropping an in-flight tokio-uring op does not cancel it, so each socket has
//! exactly one read in flight, never raced against a timer; a session ends with `shutdown`,
//! which completes that read with 0 bytes and lets the reader end.
//!
//! Allocation: the read buffer goes back and forth between the reader and the loop, and the
//! write buffer between the loop and the writer, so a heartbeat round trip allocates nothing.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::Notify;
use tokio_uring::net::TcpStream;

use crate::shard::core::{ConnId, IDLE_READ};

/// Largest write buffer a connection keeps between writes.
const KEEP_WRITE_BUF: usize = 64;

/// A socket task's report to the loop.
#[derive(Debug)]
pub(super) enum Completion {
    Connected(ConnId, std::net::TcpStream),
    ConnectFailed(ConnId),
    /// The connection's read buffer holds new bytes (`ConnIo::read_buf`).
    Readable(ConnId),
    Closed(ConnId),
    WriteDone(ConnId, bool),
}

/// The loop's completion queue, shared with the socket tasks of its thread.
#[derive(Clone, Debug)]
pub(super) struct Queue {
    items: Rc<RefCell<VecDeque<Completion>>>,
    wake: Arc<Notify>,
}

impl Queue {
    pub(super) fn new(wake: Arc<Notify>) -> Self {
        Queue {
            items: Rc::default(),
            wake,
        }
    }

    pub(super) fn push(&self, c: Completion) {
        self.items.borrow_mut().push_back(c);
        self.wake.notify_one();
    }

    /// Moves every queued completion into `into` (reused by the loop).
    pub(super) fn drain_into(&self, into: &mut VecDeque<Completion>) {
        std::mem::swap(&mut *self.items.borrow_mut(), into);
    }
}

/// What the loop shares with one connection's reader and writer.
pub(super) struct ConnIo {
    pub(super) id: ConnId,
    stream: TcpStream,
    /// The read buffer while the loop holds it (between a read and the next).
    pub(super) read_buf: RefCell<Option<BytesMut>>,
    /// The loop holds the read buffer; the reader waits for `give_back`.
    with_loop: Cell<bool>,
    read_size: Cell<usize>,
    paused: Cell<bool>,
    reader_wake: Notify,
    /// Bytes the writer has yet to send, and how many `Io::Write`s they make.
    queued: RefCell<BytesMut>,
    queued_writes: Cell<u32>,
    shutdown: Cell<bool>,
    writer_wake: Notify,
}

impl std::fmt::Debug for ConnIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnIo")
            .field("id", &self.id)
            .field("paused", &self.paused.get())
            .field("shutdown", &self.shutdown.get())
            .finish_non_exhaustive()
    }
}

impl ConnIo {
    /// Takes a connected socket and starts its reader and writer.
    pub(super) fn start(id: ConnId, stream: std::net::TcpStream, queue: &Queue) -> Rc<ConnIo> {
        let io = Rc::new(ConnIo {
            id,
            stream: TcpStream::from_std(stream),
            read_buf: RefCell::new(None),
            with_loop: Cell::new(false),
            read_size: Cell::new(IDLE_READ),
            paused: Cell::new(false),
            reader_wake: Notify::new(),
            queued: RefCell::new(BytesMut::new()),
            queued_writes: Cell::new(0),
            shutdown: Cell::new(false),
            writer_wake: Notify::new(),
        });
        tokio_uring::spawn(run(io.clone(), queue.clone()));
        io
    }

    /// The loop is done with the read buffer; the next read asks for `size` bytes.
    pub(super) fn give_back(&self, buf: BytesMut, size: usize) {
        *self.read_buf.borrow_mut() = Some(buf);
        self.read_size.set(size);
        self.with_loop.set(false);
        self.reader_wake.notify_one();
    }

    pub(super) fn write(&self, data: &[u8]) {
        self.queued.borrow_mut().extend_from_slice(data);
        self.queued_writes.set(self.queued_writes.get() + 1);
        self.writer_wake.notify_one();
    }

    pub(super) fn shutdown(&self) {
        self.shutdown.set(true);
        self.writer_wake.notify_one();
        self.reader_wake.notify_one();
    }

    pub(super) fn set_paused(&self, paused: bool) {
        self.paused.set(paused);
        if !paused {
            self.reader_wake.notify_one();
        }
    }
}

/// A connection's one task, for its life: one read in flight at a time (kept across writes,
/// never dropped half-done), and the loop's queued bytes written in order as they come, then
/// a shutdown when the loop asks for one. One task, not a reader and a writer: an idle
/// session holds one task's state, not two.
async fn run(io: Rc<ConnIo>, queue: Queue) {
    let mut buf = BytesMut::with_capacity(IDLE_READ);
    let mut spare = BytesMut::new();
    let mut shut = false;
    loop {
        let read = read_once(&io, &queue, std::mem::take(&mut buf));
        tokio::pin!(read);
        let outcome = loop {
            tokio::select! {
                biased;
                outcome = &mut read => break outcome,
                () = io.writer_wake.notified() => {}
            }
            if !shut && !flush(&io, &queue, &mut spare).await {
                shut = true;
            }
            if io.shutdown.get() && !shut && io.queued.borrow().is_empty() {
                // Everything queued before the shutdown is written: now end the stream,
                // which completes the read in flight with 0 bytes.
                let _ = io.stream.shutdown(std::net::Shutdown::Both);
                shut = true;
            }
        };
        match outcome {
            Some(back) => buf = back,
            None => {
                // Writes never started are done, unsent: the loop counts every one.
                for _ in 0..io.queued_writes.replace(0) {
                    queue.push(Completion::WriteDone(io.id, false));
                }
                queue.push(Completion::Closed(io.id));
                return;
            }
        }
    }
}

/// One read: waits while paused, reads, hands the bytes to the loop and waits for the buffer
/// back. `None` when the stream ended or failed.
async fn read_once(io: &ConnIo, queue: &Queue, mut buf: BytesMut) -> Option<BytesMut> {
    while io.paused.get() && !io.shutdown.get() {
        io.reader_wake.notified().await;
    }
    let size = io.read_size.get();
    if buf.capacity() > 4 * size.max(IDLE_READ) {
        // A big frame passed: do not keep its buffer while idle.
        buf = BytesMut::with_capacity(size);
    }
    buf.clear();
    buf.reserve(size);
    let (res, back) = io.stream.read(buf).await;
    match res {
        Ok(n) if n > 0 => {
            *io.read_buf.borrow_mut() = Some(back);
            io.with_loop.set(true);
            queue.push(Completion::Readable(io.id));
            while io.with_loop.get() {
                if io.shutdown.get() {
                    return None;
                }
                io.reader_wake.notified().await;
            }
            let back = io.read_buf.borrow_mut().take();
            Some(back.unwrap_or_default())
        }
        _ => None,
    }
}

/// Writes what the loop queued, in order, one write in flight. `false` once a write failed
/// (the socket is then shut down; the read ends with it).
async fn flush(io: &ConnIo, queue: &Queue, spare: &mut BytesMut) -> bool {
    while !io.queued.borrow().is_empty() {
        let buf = std::mem::replace(&mut *io.queued.borrow_mut(), std::mem::take(spare));
        let writes = io.queued_writes.replace(0);
        let (res, mut back) = io.stream.write_all(buf).await;
        let ok = res.is_ok();
        for _ in 0..writes {
            queue.push(Completion::WriteDone(io.id, ok));
        }
        back.clear();
        // Keep a buffer the size of a heartbeat, an ack or a bind for the next write (no
        // allocation per heartbeat); let a handshake's or a push burst's go, or every idle
        // session would hold one.
        if back.capacity() <= KEEP_WRITE_BUF {
            *spare = back;
        }
        if !ok {
            let _ = io.stream.shutdown(std::net::Shutdown::Both);
            return false;
        }
    }
    true
}

/// Connects `dst` from `src` within `timeout` and reports the result.
pub(super) async fn connect(
    conn: ConnId,
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
    queue: Queue,
) {
    let done = match tokio::time::timeout(timeout, connect_tcp(src, dst)).await {
        Ok(Ok(stream)) => Completion::Connected(conn, stream),
        Ok(Err(e)) => {
            tracing::debug!(%dst, error = %e, "connect failed");
            Completion::ConnectFailed(conn)
        }
        Err(_) => Completion::ConnectFailed(conn),
    };
    queue.push(done);
}

async fn connect_tcp(src: Option<IpAddr>, dst: SocketAddr) -> io::Result<std::net::TcpStream> {
    let socket = match dst {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(src) = src {
        crate::shard::glue::bind_address_no_port(socket.as_raw_fd())?;
        socket.bind(SocketAddr::new(src, 0))?;
    }
    socket.set_nodelay(true)?;
    let stream = socket.connect(dst).await?;
    stream.into_std()
}
