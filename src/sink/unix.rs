//! The Unix-socket writer: sends JSON lines to a consumer and takes a record only when the
//! consumer's ack line for its seq arrives.
//!
//! One thread writes and keeps the in-flight map (seq → line and `on_taken`); a reader thread
//! per connection parses ack lines and passes them over a bounded channel. Writes use a short
//! timeout and keep partial progress, so a consumer that stops reading never stops the writer
//! from seeing acks, `close`, or its deadline. A lost connection is retried with backoff, and
//! every unacked line is written again on the new one, in seq order.

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::{Receiver, Select, Sender};

use super::{Backoff, Control, Shared, SinkRecord, Stats};

/// How long one write may block before the writer looks at acks and control again.
const WRITE_SLICE: Duration = Duration::from_millis(20);
/// An ack line is a decimal u64: anything longer is garbage, dropped as it streams in.
const MAX_ACK_LINE: usize = 32;
/// A request line (JSON, starting with `{`) may be as long as a control request body.
const MAX_REQUEST_LINE: usize = 1 << 20;

pub(super) fn spawn(path: PathBuf, sh: Shared) -> anyhow::Result<JoinHandle<u64>> {
    // Connect once here so that a missing consumer is an error at start, not a silent retry.
    let stream = UnixStream::connect(&path)
        .with_context(|| format!("connecting to the sink consumer at {}", path.display()))?;
    // Acks may lag by up to the in-flight bound; more than that is a misbehaving consumer,
    // which then waits on its own socket instead of growing this queue.
    let (events_tx, events) = crossbeam_channel::bounded(sh.capacity.saturating_mul(2).max(64));
    let mut w = Writer {
        path,
        sh,
        next_seq: 1,
        inflight: BTreeMap::new(),
        conn: None,
        generation: 0,
        events_tx,
        events,
        backoff: Backoff::new(),
        retry_at: Instant::now(),
        deadline: None,
    };
    w.attach(stream, false)?;
    Ok(std::thread::Builder::new()
        .name("sink".into())
        .spawn(move || w.run())?)
}

/// A record written (or to be written) and not yet acked.
struct Pending {
    line: Vec<u8>,
    on_taken: Option<Box<dyn FnOnce() + Send>>,
    /// Written whole at least once (counts `written` once, `resent` after).
    written: bool,
}

/// One connection to the consumer and the bytes still to write on it.
struct Conn {
    stream: UnixStream,
    generation: u64,
    out: Vec<u8>,
    pos: usize,
    /// (end offset in `out`, seq) of each line in `out`, to learn when a line is written.
    marks: VecDeque<(usize, u64)>,
}

impl Conn {
    fn push(&mut self, seq: u64, line: &[u8]) {
        self.out.extend_from_slice(line);
        self.marks.push_back((self.out.len(), seq));
    }

    fn pending(&self) -> bool {
        self.pos < self.out.len()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Wakes this connection's reader thread (its read returns 0) so it exits.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// From a connection's reader thread.
enum Event {
    Ack(u64),
    /// A line that is not a decimal seq.
    Bad,
    /// A JSON request line (the control API's commands).
    Request(Vec<u8>),
    /// The answer to a request, to write on the connection it is for.
    Answer(u64, Vec<u8>),
    /// The connection of this generation ended.
    Gone(u64),
}

/// What one wait produced.
enum Got {
    Nothing,
    Event(Event),
    Record(SinkRecord),
    Close(Instant),
}

struct Writer {
    path: PathBuf,
    sh: Shared,
    next_seq: u64,
    inflight: BTreeMap<u64, Pending>,
    conn: Option<Conn>,
    generation: u64,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    backoff: Backoff,
    retry_at: Instant,
    deadline: Option<Instant>,
}

impl Writer {
    /// Returns how many records were accepted but not acked.
    fn run(mut self) -> u64 {
        loop {
            while let Ok(ev) = self.events.try_recv() {
                self.handle_event(ev);
            }
            let now = Instant::now();
            if self.conn.is_none() && now >= self.retry_at {
                self.reconnect();
            }
            if let Some(deadline) = self.deadline {
                while let Ok(rec) = self.sh.records.try_recv() {
                    self.accept(rec);
                }
                if self.inflight.is_empty() {
                    return 0;
                }
                if now >= deadline {
                    return self.inflight.len() as u64;
                }
            }
            let writing = self.conn.as_ref().is_some_and(Conn::pending);
            if writing {
                self.write_some();
            }
            match self.wait(writing) {
                Got::Nothing => {}
                Got::Event(ev) => self.handle_event(ev),
                Got::Record(rec) => self.accept(rec),
                Got::Close(d) => self.deadline = Some(d),
            }
        }
    }

    /// Waits for an ack, a record (while the in-flight bound has room) or control; does not
    /// wait while bytes are pending, and wakes for the next connect try and the deadline.
    fn wait(&self, writing: bool) -> Got {
        let now = Instant::now();
        let mut timeout = if writing {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        };
        if self.conn.is_none() {
            timeout = timeout.min(self.retry_at.saturating_duration_since(now));
        }
        if let Some(d) = self.deadline {
            timeout = timeout.min(d.saturating_duration_since(now));
        }
        let open = self.deadline.is_none();
        let mut sel = Select::new();
        let ev = sel.recv(&self.events);
        let rec =
            (open && self.inflight.len() < self.sh.capacity).then(|| sel.recv(&self.sh.records));
        let ctl = open.then(|| sel.recv(&self.sh.control));
        let Ok(op) = sel.select_timeout(timeout) else {
            return Got::Nothing;
        };
        let i = op.index();
        if i == ev {
            // The writer holds a sender, so this channel never disconnects.
            op.recv(&self.events).map_or(Got::Nothing, Got::Event)
        } else if Some(i) == rec {
            match op.recv(&self.sh.records) {
                Ok(r) => Got::Record(r),
                // Every sender is gone: nothing more can come, so drain and stop.
                Err(_) => Got::Close(now),
            }
        } else if Some(i) == ctl {
            match op.recv(&self.sh.control) {
                Ok(Control::Close(d)) => Got::Close(d),
                Err(_) => Got::Close(now),
            }
        } else {
            unreachable!("select returned an operation it was not given")
        }
    }

    fn accept(&mut self, rec: SinkRecord) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut line = Vec::with_capacity(128 + rec.content.len() * 4 / 3);
        rec.encode_line(seq, &mut line);
        if let Some(c) = &mut self.conn {
            c.push(seq, &line);
        }
        self.inflight.insert(
            seq,
            Pending {
                line,
                on_taken: rec.on_taken,
                written: false,
            },
        );
    }

    fn handle_event(&mut self, ev: Event) {
        match ev {
            Event::Ack(seq) => {
                // An unknown seq is a second ack of a resent line: harmless.
                if let Some(p) = self.inflight.remove(&seq) {
                    // Count first: whoever `on_taken` wakes may read the counters at once.
                    Stats::add(&self.sh.stats.acked, 1);
                    if let Some(f) = p.on_taken {
                        f();
                    }
                    // The consumer works: retry fast the next time it goes away.
                    self.backoff.reset();
                }
            }
            Event::Bad => Stats::add(&self.sh.stats.errors, 1),
            Event::Request(line) => self.request(line),
            Event::Answer(generation, line) => {
                // Answers are not resent: one for a connection that is gone is dropped.
                if let Some(c) = self.conn.as_mut().filter(|c| c.generation == generation) {
                    c.out.extend_from_slice(&line);
                }
            }
            Event::Gone(g) => {
                if self.conn.as_ref().is_some_and(|c| c.generation == g) {
                    tracing::warn!(path = %self.path.display(), "sink consumer went away");
                    self.lose_conn();
                }
            }
        }
    }

    /// Hands a request line to the control API; its answer comes back as an event.
    fn request(&mut self, line: Vec<u8>) {
        let generation = self.generation;
        let tx = self.events_tx.clone();
        let respond: Box<dyn FnOnce(Vec<u8>) + Send> = Box::new(move |mut answer| {
            answer.push(b'\n');
            let _ = tx.send(Event::Answer(generation, answer));
        });
        match self.sh.lines.get() {
            Some(h) => h(line, respond),
            // Written here: this thread must not wait on its own (bounded) event channel.
            None => {
                if let Some(c) = &mut self.conn {
                    let id = serde_json::from_slice::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v.get("id").cloned())
                        .unwrap_or_default();
                    let answer = serde_json::json!({
                        "id": id,
                        "status": 503,
                        "error": "the control API is not running yet",
                    });
                    c.out.extend_from_slice(answer.to_string().as_bytes());
                    c.out.push(b'\n');
                }
            }
        }
    }

    fn lose_conn(&mut self) {
        self.conn = None;
        self.retry_at = Instant::now() + self.backoff.step();
    }

    fn reconnect(&mut self) {
        match UnixStream::connect(&self.path) {
            Ok(s) => {
                if let Err(e) = self.attach(s, true) {
                    Stats::add(&self.sh.stats.errors, 1);
                    tracing::warn!(error = %e, "sink reconnect failed");
                    self.retry_at = Instant::now() + self.backoff.step();
                }
            }
            Err(e) => {
                Stats::add(&self.sh.stats.errors, 1);
                tracing::debug!(error = %e, path = %self.path.display(), "sink consumer unreachable");
                self.retry_at = Instant::now() + self.backoff.step();
            }
        }
    }

    /// Adopts a connection: starts its ack reader and queues every unacked line on it.
    fn attach(&mut self, stream: UnixStream, again: bool) -> anyhow::Result<()> {
        stream.set_write_timeout(Some(WRITE_SLICE))?;
        let reader = stream.try_clone()?;
        self.generation += 1;
        let generation = self.generation;
        let tx = self.events_tx.clone();
        std::thread::Builder::new()
            .name("sink-acks".into())
            .spawn(move || read_acks(reader, generation, &tx))?;
        let mut conn = Conn {
            stream,
            generation,
            out: Vec::new(),
            pos: 0,
            marks: VecDeque::new(),
        };
        for (&seq, p) in &self.inflight {
            conn.push(seq, &p.line);
            if p.written {
                Stats::add(&self.sh.stats.resent, 1);
            }
        }
        self.conn = Some(conn);
        if again {
            Stats::add(&self.sh.stats.reconnects, 1);
            tracing::info!(path = %self.path.display(), unacked = self.inflight.len(), "sink reconnected");
        }
        Ok(())
    }

    /// One write of pending bytes, blocking at most [`WRITE_SLICE`].
    fn write_some(&mut self) {
        let Some(c) = &mut self.conn else { return };
        match c.stream.write(&c.out[c.pos..]) {
            Ok(0) => {
                Stats::add(&self.sh.stats.errors, 1);
                self.lose_conn();
            }
            Ok(n) => {
                c.pos += n;
                while c.marks.front().is_some_and(|&(end, _)| end <= c.pos) {
                    let (_, seq) = c.marks.pop_front().expect("front checked just above");
                    if let Some(p) = self.inflight.get_mut(&seq) {
                        if !p.written {
                            p.written = true;
                            Stats::add(&self.sh.stats.written, 1);
                        }
                    }
                }
                if c.pos == c.out.len() {
                    c.out.clear();
                    c.pos = 0;
                } else if c.pos > c.out.len() / 2 {
                    // Keep the buffer from holding long-written bytes while new lines arrive.
                    c.out.drain(..c.pos);
                    c.marks.iter_mut().for_each(|m| m.0 -= c.pos);
                    c.pos = 0;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                Stats::add(&self.sh.stats.errors, 1);
                tracing::warn!(error = %e, "sink write failed; reconnecting");
                self.lose_conn();
            }
        }
    }
}

/// Reads ack lines until the connection ends; a full event channel makes it wait.
fn read_acks(mut s: UnixStream, generation: u64, tx: &Sender<Event>) {
    let mut buf = [0u8; 4096];
    let mut line = Vec::with_capacity(MAX_ACK_LINE);
    let mut too_long = false;
    let limit = |line: &[u8]| {
        if line.first() == Some(&b'{') {
            MAX_REQUEST_LINE
        } else {
            MAX_ACK_LINE
        }
    };
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in &buf[..n] {
            if b != b'\n' {
                if line.len() < limit(&line) {
                    line.push(b);
                } else {
                    too_long = true;
                }
                continue;
            }
            let ev = if too_long {
                Event::Bad
            } else if line.first() == Some(&b'{') {
                Event::Request(std::mem::take(&mut line))
            } else {
                parse_ack(&line)
            };
            line.clear();
            too_long = false;
            if tx.send(ev).is_err() {
                return;
            }
        }
    }
    let _ = tx.send(Event::Gone(generation));
}

fn parse_ack(line: &[u8]) -> Event {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map_or(Event::Bad, Event::Ack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_parse() {
        assert!(matches!(parse_ack(b"17"), Event::Ack(17)));
        assert!(matches!(parse_ack(b" 18\r"), Event::Ack(18)));
        for bad in [
            &b""[..],
            b"x",
            b"-1",
            b"1 2",
            b"\xFF",
            b"99999999999999999999999",
        ] {
            assert!(matches!(parse_ack(bad), Event::Bad), "{bad:?}");
        }
    }
}
