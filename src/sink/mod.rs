//! The push sink: the proxy role's downstream. Every push a device receives becomes one JSON
//! line handed to stdout, a file, or a consumer listening on a Unix socket.
//!
//! Owns: the bounded queue between shards and the sink's writer thread, the JSON line format,
//! and the "taken" signal ([`SinkRecord::on_taken`]) that lets a BIZ_ACK push be acked upstream
//! only once the downstream holds it. Must not touch: device state, shard sockets, protocol
//! decisions (the shard decides what to ack; the sink only says when a record is safe).
//!
//! Guarantees:
//! - never blocks the caller: [`SinkSender::try_send`] hands the record back when the queue is
//!   full, and the caller slows its reading (backpressure);
//! - never drops a record it accepted before [`Sink::close`]: a record whose `on_taken` was not
//!   called was not acked upstream, so the server delivers it again (a crash can duplicate a
//!   push, never lose one);
//! - `on_taken` is called once, on the sink's thread, only after the record is written and
//!   flushed (stdout, file) or acked by the consumer (unix).
//!
//! Network downstreams (`remote`): `redis-stream:URL` XADDs each record to a Redis stream and
//! takes it when Redis answers; `webhook:http://...` POSTs each record's JSON and takes it on a
//! 2xx. Both retry a failed record with backoff and keep at most a bounded number in flight.
//!
//! Unix protocol: the sink connects to the consumer's socket at PATH and writes one JSON line
//! per record; the consumer answers one line per record holding its `seq` in decimal
//! (`17\n`), in any order. On a lost connection the sink reconnects with backoff and resends
//! every unacked record.

mod redis_stream;
mod remote;
mod stream;
mod unix;
mod webhook;

pub use redis_stream::{StreamSpec, DEFAULT_STREAM_KEY};
pub use webhook::{WebhookSpec, DEFAULT_INFLIGHT};

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;

/// Where the sink writes: `stdout`, `file:PATH`, `unix:PATH`, `redis-stream:URL` or
/// `webhook:URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines appended to a file.
    File(PathBuf),
    /// JSON lines to a consumer listening on a Unix socket; it acks each line by seq.
    Unix(PathBuf),
    /// XADD to a Redis stream (`redis-stream:redis://HOST:PORT/DB?stream=KEY&maxlen=N`).
    RedisStream(StreamSpec),
    /// POST of each record's JSON (`webhook:http://HOST:PORT/PATH#inflight=N`).
    Webhook(WebhookSpec),
}

/// A `--sink` value that [`SinkSpec`] does not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkSpecError {
    /// None of the forms.
    #[error(
        "bad sink {0:?}: use stdout, file:PATH, unix:PATH, \
         redis-stream:redis://HOST:PORT/DB[?stream=KEY&maxlen=N] or \
         webhook:http://HOST:PORT/PATH[#inflight=N]"
    )]
    Unknown(String),
    /// A known kind whose URL is wrong.
    #[error("bad sink {spec:?}: {why}")]
    Url {
        /// The value given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
}

impl FromStr for SinkSpec {
    type Err = SinkSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SinkSpecError::Unknown(s.to_string());
        let url_err = |why: String| SinkSpecError::Url {
            spec: s.into(),
            why,
        };
        if let Some(url) = s.strip_prefix("redis-stream:") {
            return StreamSpec::parse(url)
                .map(SinkSpec::RedisStream)
                .map_err(url_err);
        }
        if let Some(url) = s.strip_prefix("webhook:") {
            return WebhookSpec::parse(url)
                .map(SinkSpec::Webhook)
                .map_err(url_err);
        }
        if s == "stdout" {
            return Ok(SinkSpec::Stdout);
        }
        let (kind, path) = s.split_once(':').ok_or_else(bad)?;
        if path.is_empty() {
            return Err(bad());
        }
        match kind {
            "file" => Ok(SinkSpec::File(path.into())),
            "unix" => Ok(SinkSpec::Unix(path.into())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkSpec::Stdout => f.write_str("stdout"),
            SinkSpec::File(p) => write!(f, "file:{}", p.display()),
            SinkSpec::Unix(p) => write!(f, "unix:{}", p.display()),
            SinkSpec::RedisStream(r) => write!(f, "redis-stream:{r}"),
            SinkSpec::Webhook(w) => write!(f, "webhook:{w}"),
        }
    }
}

/// What the sink is told to take: one received push.
pub struct SinkRecord {
    /// The receiving device's id.
    pub device_id: String,
    /// The receiving device's user id.
    pub user_id: String,
    /// The push's message id (the frame header's `MsgId`).
    pub msg_id: i32,
    /// The push frame's flags.
    pub flags: u8,
    /// The push content as received (after decryption and inflation).
    pub content: Bytes,
    /// When the device received it, wall clock, ms since the Unix epoch.
    pub received_at_ms: i64,
    /// Called once, on the sink's thread, when the record is safe downstream. It must be
    /// quick and must not block (send a message, do not do I/O): it delays every record
    /// behind it. Dropped uncalled when the sink closes without taking the record.
    pub on_taken: Option<Box<dyn FnOnce() + Send>>,
}

impl fmt::Debug for SinkRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkRecord")
            .field("device_id", &self.device_id)
            .field("user_id", &self.user_id)
            .field("msg_id", &self.msg_id)
            .field("flags", &self.flags)
            .field("content_len", &self.content.len())
            .field("received_at_ms", &self.received_at_ms)
            .field("on_taken", &self.on_taken.is_some())
            .finish()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    seq: u64,
    device_id: &'a str,
    user_id: &'a str,
    msg_id: i32,
    flags: u8,
    content: String,
    received_at: i64,
}

impl SinkRecord {
    /// Appends the record's JSON line (with its trailing `\n`) to `out`.
    fn encode_line(&self, seq: u64, out: &mut Vec<u8>) {
        let line = Line {
            seq,
            device_id: &self.device_id,
            user_id: &self.user_id,
            msg_id: self.msg_id,
            flags: self.flags,
            content: base64::engine::general_purpose::STANDARD.encode(&self.content),
            received_at: self.received_at_ms,
        };
        // Serialising plain strings and integers into a Vec cannot fail.
        serde_json::to_writer(&mut *out, &line).expect("JSON of strings and integers");
        out.push(b'\n');
    }
}

/// Counts kept by the sink's thread; read with [`Sink::counters`].
#[derive(Debug, Default)]
struct Stats {
    written: AtomicU64,
    acked: AtomicU64,
    resent: AtomicU64,
    reconnects: AtomicU64,
    errors: AtomicU64,
}

impl Stats {
    fn add(field: &AtomicU64, n: u64) {
        // Relaxed: independent counters read for reports, no ordering with other data.
        field.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> SinkCounters {
        SinkCounters {
            written: self.written.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            resent: self.resent.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// The sink's counters since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SinkCounters {
    /// Records written (each counted once, however often it was resent).
    pub written: u64,
    /// Records taken: flushed (stdout, file) or acked by the consumer (unix).
    pub acked: u64,
    /// Lines written again after a reconnect.
    pub resent: u64,
    /// Connections to the consumer re-established after one was lost.
    pub reconnects: u64,
    /// Write, connect and protocol errors (each retried or ignored, never fatal).
    pub errors: u64,
}

/// What [`Sink::close`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SinkDrain {
    /// Records written over the sink's life.
    pub written: u64,
    /// Records taken (their `on_taken` called) over the sink's life.
    pub acked: u64,
    /// Records accepted but not taken when the drain ended (their pushes stay unacked
    /// upstream, so the server delivers them again).
    pub left: u64,
}

/// Messages from [`Sink`] to its thread.
enum Control {
    /// Stop accepting, take what is queued, and give up at the deadline.
    Close(Instant),
}

/// What every writer thread shares.
struct Shared {
    records: Receiver<SinkRecord>,
    control: Receiver<Control>,
    stats: Arc<Stats>,
    capacity: usize,
    /// Who answers the JSON request lines a Unix consumer writes (the control API), once
    /// the fleet runs.
    lines: Arc<std::sync::OnceLock<LineHandler>>,
}

/// Answers one JSON request line of a Unix-socket consumer: called with the line and a
/// function that writes the answer line back on the consumer's socket.
pub type LineHandler = Arc<dyn Fn(Vec<u8>, Box<dyn FnOnce(Vec<u8>) + Send>) + Send + Sync>;

/// The sending side, cloned into every shard.
#[derive(Clone)]
pub struct SinkSender {
    tx: Sender<SinkRecord>,
    closed: Arc<AtomicBool>,
}

impl fmt::Debug for SinkSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkSender")
            .field("queued", &self.tx.len())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl SinkSender {
    /// Queues a record without blocking.
    ///
    /// # Errors
    ///
    /// Gives the record back when the queue is full or the sink is closed: keep it and try
    /// again later, reading less from the connection meanwhile (never drop it).
    pub fn try_send(&self, rec: SinkRecord) -> Result<(), SinkRecord> {
        // Acquire pairs with the Release in `Sink::close`: once closed, nothing new enters.
        if self.closed.load(Ordering::Acquire) {
            return Err(rec);
        }
        self.tx.try_send(rec).map_err(|e| match e {
            TrySendError::Full(r) | TrySendError::Disconnected(r) => r,
        })
    }

    /// Whether the sink was closed (records will never be accepted again).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// A running sink: a writer thread behind a bounded queue.
pub struct Sink {
    spec: SinkSpec,
    sender: SinkSender,
    control: Sender<Control>,
    /// The queue's receiving end, to count what stayed queued after the thread stopped.
    leftover: Receiver<SinkRecord>,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<u64>>,
    lines: Arc<std::sync::OnceLock<LineHandler>>,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("spec", &self.spec)
            .field("counters", &self.counters())
            .finish()
    }
}

impl Sink {
    /// Opens the destination and starts the writer thread; at most `capacity` records wait in
    /// the queue, and (unix) at most `capacity` written records wait for their ack.
    ///
    /// # Errors
    ///
    /// A capacity of 0, a file that cannot be opened for appending, no consumer listening on
    /// the Unix socket, or a thread that cannot be spawned.
    pub fn start(spec: SinkSpec, capacity: usize) -> anyhow::Result<Sink> {
        if capacity == 0 {
            bail!("sink capacity must be at least 1");
        }
        let (tx, records) = crossbeam_channel::bounded(capacity);
        let (control_tx, control) = crossbeam_channel::bounded(1);
        let stats = Arc::new(Stats::default());
        let leftover = records.clone();
        let lines = Arc::new(std::sync::OnceLock::new());
        let shared = Shared {
            records,
            control,
            stats: stats.clone(),
            capacity,
            lines: lines.clone(),
        };
        let thread = match &spec {
            SinkSpec::Stdout => stream::spawn(stream::Dest::Stdout, shared)?,
            SinkSpec::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening sink file {}", path.display()))?;
                stream::spawn(stream::Dest::File(file), shared)?
            }
            SinkSpec::Unix(path) => unix::spawn(path.clone(), shared)?,
            SinkSpec::RedisStream(r) => {
                let r = r.clone();
                // A pipeline as deep as the queue: Redis answers XADDs in order, fast.
                remote::spawn(
                    "redis-stream",
                    move || redis_stream::RedisStream::connect(r),
                    shared,
                    capacity,
                )?
            }
            SinkSpec::Webhook(w) => {
                let (w, inflight) = (w.clone(), w.inflight);
                remote::spawn(
                    "webhook",
                    move || webhook::Webhook::connect(w),
                    shared,
                    inflight,
                )?
            }
        };
        Ok(Sink {
            spec,
            sender: SinkSender {
                tx,
                closed: Arc::new(AtomicBool::new(false)),
            },
            control: control_tx,
            leftover,
            stats,
            thread: Some(thread),
            lines,
        })
    }

    /// From now on, a Unix consumer's request lines (those starting with `{`) go to `h`,
    /// and its answers come back on the socket. Other sinks read nothing back, and lines
    /// that arrive before this are answered 503.
    pub fn serve_lines(&self, h: LineHandler) {
        let _ = self.lines.set(h);
    }

    /// Where it writes.
    pub fn spec(&self) -> &SinkSpec {
        &self.spec
    }

    /// A sender for a shard.
    pub fn sender(&self) -> SinkSender {
        self.sender.clone()
    }

    /// Counters so far.
    pub fn counters(&self) -> SinkCounters {
        self.stats.snapshot()
    }

    /// Stops accepting records, writes what is queued and waits up to `timeout` for it to be
    /// taken (unix: acked), then stops the thread.
    pub fn close(mut self, timeout: Duration) -> SinkDrain {
        let left = self.shut(timeout);
        let c = self.counters();
        SinkDrain {
            written: c.written,
            acked: c.acked,
            left,
        }
    }

    fn shut(&mut self, timeout: Duration) -> u64 {
        self.sender.closed.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else {
            return 0;
        };
        let deadline = Instant::now() + timeout;
        // The channel has room for one message and nobody else sends on it.
        let _ = self.control.try_send(Control::Close(deadline));
        let mut left = thread.join().unwrap_or_else(|_| {
            Stats::add(&self.stats.errors, 1);
            0
        });
        // A sender that passed the closed check just before it was set may have queued a
        // record after the thread's last look: count it as left (its push stays unacked).
        left += self.leftover.try_iter().count() as u64;
        left
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shut(Duration::ZERO);
        }
    }
}

/// Doubling backoff between retries, capped.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(20);
    const MAX: Duration = Duration::from_secs(2);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The wait before the next try; doubles the one after.
    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!("stdout".parse(), Ok(SinkSpec::Stdout));
        assert_eq!(
            "file:/tmp/x.jsonl".parse(),
            Ok(SinkSpec::File("/tmp/x.jsonl".into()))
        );
        assert_eq!(
            "unix:/run/c.sock".parse(),
            Ok(SinkSpec::Unix("/run/c.sock".into()))
        );
        for bad in [
            "",
            "file:",
            "unix:",
            "tcp:1.2.3.4:5",
            "stdout:",
            "file",
            "STDOUT",
        ] {
            assert!(bad.parse::<SinkSpec>().is_err(), "{bad:?}");
        }
        assert_eq!(SinkSpec::File("a b".into()).to_string(), "file:a b");
        let r: SinkSpec = "redis-stream:redis://127.0.0.1:6379/0?stream=s&maxlen=10"
            .parse()
            .unwrap();
        assert_eq!(
            r.to_string(),
            "redis-stream:redis://127.0.0.1:6379/0?stream=s&maxlen=10"
        );
        let w: SinkSpec = "webhook:http://127.0.0.1:8080/in".parse().unwrap();
        assert_eq!(w.to_string(), "webhook:http://127.0.0.1:8080/in");
        // A known kind with a wrong URL says what is wrong with it.
        let e = "webhook:https://h/".parse::<SinkSpec>().unwrap_err();
        assert!(e.to_string().contains("https is not supported"), "{e}");
        let e = "redis-stream:redis://h:1?maxlen=-3"
            .parse::<SinkSpec>()
            .unwrap_err();
        assert!(e.to_string().contains("maxlen=-3"), "{e}");
    }

    proptest::proptest! {
        /// Any `--sink` text parses or is refused with a message, never a panic; what parses
        /// prints back to a text that parses to the same spec.
        #[test]
        fn any_sink_text_parses_or_is_refused(
            kind in proptest::sample::select(vec!["", "stdout", "file:", "unix:", "redis-stream:", "webhook:", "webhook:http://", "redis-stream:redis://"]),
            rest in "[ -~]{0,40}",
        ) {
            let text = format!("{kind}{rest}");
            match text.parse::<SinkSpec>() {
                Ok(spec) => proptest::prop_assert_eq!(spec.to_string().parse::<SinkSpec>(), Ok(spec)),
                Err(e) => proptest::prop_assert!(e.to_string().starts_with("bad sink")),
            }
        }
    }

    #[test]
    fn line_is_json_with_base64_content() {
        let rec = SinkRecord {
            device_id: "d\"1".into(),
            user_id: "u1".into(),
            msg_id: -7,
            flags: 0x08,
            content: Bytes::from_static(&[0, 0xFF, b'h']),
            received_at_ms: 1_700_000_000_123,
            on_taken: None,
        };
        let mut out = Vec::new();
        rec.encode_line(42, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"seq": 42, "deviceId": "d\"1", "userId": "u1", "msgId": -7,
                "flags": 8, "content": "AP9o", "receivedAt": 1_700_000_000_123_i64})
        );
    }
}
