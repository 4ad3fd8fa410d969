//! The thin driver around [`Tracker`]: tokio, plain TCP, pipelined writes, several
//! connections, paced sends. Not the fleet's hot path (that is the shard), so plain tokio.
//!
//! Requests go round-robin over the connections; every connection's replies come back to one
//! tracker, so any reply finds its request whatever connection or order it came in. A closed
//! connection is reopened on the next send (as upstream does); its requests in flight end as
//! "no reply" at their deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::codec::{encode_push, GatewayPush, GatewayReply};
use super::tracker::{Completed, Outcome, Tracker};
use crate::proto::{Flags, FrameDecoder, MsgId, Unit};

/// Who a run pushes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// `pattern` with `{i}` replaced by each index of `range`, round-robin.
    Users {
        /// e.g. `user-{i}`.
        pattern: String,
        /// Indexes, start inclusive, end exclusive.
        range: std::ops::Range<u64>,
    },
    /// Every device of the gateway's server that the filter lets through (8.7).
    Broadcast {
        /// JSON array string, or empty.
        tags: String,
        /// Condition, or empty.
        condition: String,
    },
}

/// What to push, how fast and for how long.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Gateway addresses: connection `i` goes to `gateway[i % len]`.
    pub gateway: Vec<SocketAddr>,
    /// Connections to open to it.
    pub connections: usize,
    /// Targets.
    pub targets: Targets,
    /// Client type put in single pushes (the route's; 1 = mobile).
    pub client_type: i32,
    /// Header flags: 0, [`Flags::AUTO_ACK`] or [`Flags::BIZ_ACK`].
    pub flags: Flags,
    /// Content of every push.
    pub content: Bytes,
    /// Requests per second (0: as fast as the loop can write, in batches of 256).
    pub rate: f64,
    /// Stop after this many requests.
    pub count: Option<u64>,
    /// Stop sending after this long.
    pub duration: Option<Duration>,
    /// The client's own timeout: no reply by then is [`Outcome::NoReply`].
    pub timeout: Duration,
    /// The wire timeout in single pushes, ms (upstream: client timeout - 500).
    pub wire_timeout_ms: i32,
    /// Each user's routes, as read from Redis at start (`push --redis`): single pushes go
    /// to each online route's gateway with its client type instead of `gateway`.
    pub routes: Option<Routed>,
}

/// Users' routes for a run: read once at start, kept for the run (upstream caches them for
/// 5 minutes, longer than a `push` run usually lasts).
#[derive(Clone, Debug, Default)]
pub struct Routed {
    /// Per index of the target range (offset from its start): (gateway index, client type)
    /// of each online route.
    pub by_user: Vec<Vec<(usize, i32)>>,
}

/// What a run saw.
#[derive(Clone, Debug)]
pub struct Report {
    /// Requests written.
    pub sent: u64,
    /// Outcomes by kind.
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Send to reply, microseconds (replies only).
    pub reply_latency_us: Histogram<u64>,
    /// Replies that matched nothing in flight (late, or never sent).
    pub unmatched: u64,
    /// Connections (re)opened, and connects that failed.
    pub connects: u64,
    /// Connects that failed.
    pub connect_failures: u64,
    /// Frames the gateway sent that were not OK / ERROR, or did not decode.
    pub bad_frames: u64,
    /// From the first send to the last outcome.
    pub elapsed: Duration,
}

impl Report {
    /// A report of nothing (what `--fail-on` typos are checked against before a run).
    pub fn empty() -> Self {
        Self::new()
    }

    fn new() -> Self {
        Report {
            sent: 0,
            outcomes: BTreeMap::new(),
            // 1 us .. 1 h at 3 significant digits: constant bounds hdrhistogram accepts.
            reply_latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
            unmatched: 0,
            connects: 0,
            connect_failures: 0,
            bad_frames: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn record(&mut self, c: &Completed<()>) {
        *self.outcomes.entry(c.outcome).or_default() += 1;
        if !matches!(c.outcome, Outcome::NoReply | Outcome::NoRoute) {
            let us = c.latency_us.clamp(1, 3_600_000_000);
            self.reply_latency_us.saturating_record(us);
        }
    }

    /// Requests with this outcome.
    pub fn count(&self, o: Outcome) -> u64 {
        self.outcomes.get(&o).copied().unwrap_or(0)
    }

    /// Requests that have an outcome.
    pub fn done(&self) -> u64 {
        self.outcomes.values().sum()
    }
}

/// What a connection's reader task reports (shared with `run --push-rate`'s pusher).
pub(crate) enum FromConn {
    /// A reply frame, by header id.
    Reply(MsgId, GatewayReply),
    /// A frame that is no reply, or does not decode.
    Bad,
    /// Connection `i` closed.
    Closed(usize),
}

struct Conns {
    addrs: Vec<SocketAddr>,
    writers: Vec<Option<OwnedWriteHalf>>,
    tx: mpsc::UnboundedSender<FromConn>,
}

impl Conns {
    async fn writer(&mut self, i: usize, report: &mut Report) -> Option<&mut OwnedWriteHalf> {
        if self.writers[i].is_none() {
            report.connects += 1;
            let Some(&addr) = self.addrs.get(i % self.addrs.len().max(1)) else {
                report.connect_failures += 1;
                return None;
            };
            let Ok(stream) = TcpStream::connect(addr).await else {
                report.connect_failures += 1;
                return None;
            };
            let _ = stream.set_nodelay(true);
            let (rd, wr) = stream.into_split();
            tokio::spawn(read_replies(rd, i, self.tx.clone()));
            self.writers[i] = Some(wr);
        }
        self.writers[i].as_mut()
    }
}

/// Reads connection `i`'s replies into `tx` until it closes.
pub(crate) async fn read_replies(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    i: usize,
    tx: mpsc::UnboundedSender<FromConn>,
) {
    let decoder = FrameDecoder::new(1 << 20);
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            let msg = match decoder.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(Unit::Frame(f))) => match GatewayReply::decode(&f) {
                    Ok(Some(reply)) => FromConn::Reply(f.msg_id, reply),
                    _ => FromConn::Bad,
                },
                Ok(Some(Unit::Heartbeat)) => FromConn::Bad,
                // A stream that cannot be resynchronised: give the connection up.
                Err(_) => {
                    let _ = tx.send(FromConn::Bad);
                    let _ = tx.send(FromConn::Closed(i));
                    return;
                }
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
    }
    let _ = tx.send(FromConn::Closed(i));
}

/// The request number `n` of the plan, and the connections its frames go on (several with
/// routes, one per online route; none when the user has no online route).
fn requests(plan: &Plan, n: u64, n_conns: usize, out: &mut Vec<(usize, GatewayPush)>) {
    match &plan.targets {
        Targets::Users { pattern, range } => {
            let span = range.end.saturating_sub(range.start).max(1);
            let offset = n % span;
            let user_id = pattern.replace("{i}", &(range.start + offset).to_string());
            let push = |client_type| GatewayPush {
                user_id: user_id.clone(),
                client_type,
                timeout: plan.wire_timeout_ms,
                content: plan.content.clone(),
                ..GatewayPush::default()
            };
            match &plan.routes {
                None => out.push(((n % n_conns as u64) as usize, push(plan.client_type))),
                Some(routed) => {
                    // Connection c goes to gateway c % gateways: a route's gateway g has
                    // connections g, g + gateways, ...; pick one by n.
                    let gateways = plan.gateway.len().max(1);
                    let per = (n_conns / gateways).max(1);
                    let routes = routed.by_user.get(offset as usize).map_or(&[][..], |r| r);
                    for &(g, ct) in routes {
                        let c = g + gateways * ((n as usize) % per);
                        out.push((c, push(ct)));
                    }
                }
            }
        }
        Targets::Broadcast { tags, condition } => out.push((
            (n % n_conns as u64) as usize,
            GatewayPush {
                content: plan.content.clone(),
                tags: tags.clone(),
                condition: condition.clone(),
                ..GatewayPush::default()
            },
        )),
    }
}

/// Runs `plan` to its end (count or duration reached, then every request answered or timed
/// out), calling `status` about once a second. Never fails: unreachable gateways show up as
/// connect failures and no replies.
pub async fn run(plan: &Plan, mut status: impl FnMut(&Report)) -> Report {
    let timeout_us = u64::try_from(plan.timeout.as_micros()).unwrap_or(u64::MAX);
    let mut tracker: Tracker<()> = Tracker::new(timeout_us);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // With routes, `connections` to each gateway the routes name.
    let n_conns = match &plan.routes {
        Some(_) => plan.connections.max(1) * plan.gateway.len().max(1),
        None => plan.connections.max(1),
    };
    let mut conns = Conns {
        addrs: plan.gateway.clone(),
        writers: (0..n_conns).map(|_| None).collect(),
        tx,
    };
    let mut report = Report::new();
    let start = Instant::now();
    let now_us = || u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let send_until = plan.duration.map(|d| start + d);
    let mut next_status = start + Duration::from_secs(1);
    let mut outs: Vec<BytesMut> = (0..n_conns).map(|_| BytesMut::new()).collect();
    let mut reqs = Vec::new();
    let mut done = Vec::new();
    loop {
        let sending = plan.count.map_or(true, |c| report.sent < c)
            && send_until.map_or(true, |t| Instant::now() < t);
        if !sending && tracker.in_flight() == 0 {
            break;
        }
        // Requests due by now at the plan's rate, written as one batch per connection.
        if sending {
            let due = if plan.rate > 0.0 {
                (start.elapsed().as_secs_f64() * plan.rate) as u64 + 1
            } else {
                report.sent + 256
            };
            let due = plan.count.map_or(due, |c| due.min(c));
            let batch = due.saturating_sub(report.sent);
            if batch > 0 {
                for out in &mut outs {
                    out.clear();
                }
                for k in 0..batch {
                    reqs.clear();
                    requests(plan, report.sent + k, n_conns, &mut reqs);
                    if reqs.is_empty() {
                        *report.outcomes.entry(Outcome::NoRoute).or_default() += 1;
                    }
                    for (c, push) in reqs.drain(..) {
                        let id = tracker.start(now_us(), ());
                        encode_push(&mut outs[c % n_conns], &push, id, plan.flags);
                    }
                }
                for (c, out) in outs.iter().enumerate() {
                    if out.is_empty() {
                        continue;
                    }
                    if let Some(w) = conns.writer(c, &mut report).await {
                        if w.write_all(out).await.is_err() {
                            conns.writers[c] = None;
                        }
                    }
                }
                report.sent += batch;
            }
        }
        // Wait for a reply, the next deadline, the next send, or the status tick.
        let next_send = if sending && plan.rate > 0.0 {
            let secs = (report.sent as f64) / plan.rate;
            Some(start + Duration::from_secs_f64(secs))
        } else if sending {
            Some(Instant::now())
        } else {
            None
        };
        let next_deadline = tracker
            .poll_timeout()
            .map(|us| start + Duration::from_micros(us));
        let wake = [next_send, next_deadline, Some(next_status)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_status);
        tokio::select! {
            msg = rx.recv() => {
                let mut msg = msg;
                while let Some(m) = msg.take() {
                    match m {
                        FromConn::Reply(id, reply) => match tracker.handle_reply(now_us(), id, &reply) {
                            Some(c) => report.record(&c),
                            None => report.unmatched += 1,
                        },
                        FromConn::Bad => report.bad_frames += 1,
                        FromConn::Closed(i) => conns.writers[i] = None,
                    }
                    msg = rx.try_recv().ok();
                }
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
        }
        tracker.handle_timeout(now_us(), &mut done);
        for c in done.drain(..) {
            report.record(&c);
        }
        if Instant::now() >= next_status {
            next_status += Duration::from_secs(1);
            report.elapsed = start.elapsed();
            status(&report);
        }
    }
    report.elapsed = start.elapsed();
    report
}
