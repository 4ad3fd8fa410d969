//! The thin driver around [`Tracker`]: tokio, plain TCP, pipelined writes, several
//! connections, paced sends. Not the fleet's hot path (that is the shard), so plain tokio.
//!
//! Requests go round-robin over the connections; every connection's replies come back to one
//! tracker, so any reply finds its request whatever connection or order it came in. A closed
//! connection is reopened on the next send (as upstream does); its requests in flight end as
//! "no reply" at their deadline. The gateway list may change during a run ([`Live`]): the
//! connections follow it ([`super::gateways`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::codec::{encode_push, GatewayPush, GatewayReply};
use super::gateways::{spread, Change, GatewayFigures};
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
    /// Gateway addresses: each gets the same number of the connections
    /// ([`super::gateways::spread`]).
    pub gateway: Vec<SocketAddr>,
    /// Connections to open over them (rounded up to a multiple of their count).
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
    /// Per index of the target range (offset from its start): (index in the plan's
    /// `gateway`, client type) of each online route.
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
    /// Figures by gateway: every gateway the run sent to, including those that left.
    pub gateways: BTreeMap<SocketAddr, GatewayFigures>,
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
            gateways: BTreeMap::new(),
        }
    }

    fn record(&mut self, c: &Completed<SocketAddr>) {
        *self.outcomes.entry(c.outcome).or_default() += 1;
        self.gateways.entry(c.tag).or_default().record(c.outcome);
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

/// What can change while a run goes on (all optional: [`run`] has neither).
#[derive(Debug, Default)]
pub struct Live {
    /// The gateway list, kept current (`push --zookeeper` watching `/cluster/gs`). An empty
    /// list is ignored: the run keeps the last gateways rather than send nowhere.
    pub gateways: Option<watch::Receiver<Vec<SocketAddr>>>,
    /// Turns true to stop sending early (a signal); requests in flight still get their
    /// outcomes, and the report is complete.
    pub stop: Option<watch::Receiver<bool>>,
    /// Told the run's failed connects so far whenever they grow (so a gateway name is
    /// resolved again, [`crate::discovery::gateways::follow_name`]).
    pub connect_failures: Option<watch::Sender<u64>>,
}

/// Completes when `rx` has a new value; never without a receiver. A sender that is gone
/// leaves the value as it is (the receiver is dropped so this does not spin).
async fn next_change<T>(rx: &mut Option<watch::Receiver<T>>) {
    let ended = match rx.as_mut() {
        Some(r) => r.changed().await.is_err(),
        None => return std::future::pending().await,
    };
    if ended {
        *rx = None;
    }
}

/// What a connection's reader task reports (shared with `run --push-rate`'s pusher).
pub(crate) enum FromConn {
    /// A reply frame, by header id.
    Reply(MsgId, GatewayReply),
    /// A frame that is no reply, or does not decode.
    Bad,
    /// The connection with this id was closed by the gateway (or failed).
    Closed(u64),
}

/// One connection slot: the gateway it goes to, and its open connection (id, write half).
struct Slot {
    addr: SocketAddr,
    conn: Option<(u64, OwnedWriteHalf)>,
}

struct Conns {
    gateways: Vec<SocketAddr>,
    connections: usize,
    slots: Vec<Slot>,
    next_id: u64,
    tx: mpsc::UnboundedSender<FromConn>,
}

impl Conns {
    fn new(
        gateways: &[SocketAddr],
        connections: usize,
        tx: mpsc::UnboundedSender<FromConn>,
    ) -> Self {
        let mut conns = Conns {
            gateways: Vec::new(),
            connections,
            slots: Vec::new(),
            next_id: 0,
            tx,
        };
        conns.set_gateways(gateways);
        conns
    }

    /// Follows a new gateway list. Connections to gateways still listed are kept; those to
    /// gateways that left are closed (dropping the write half sends FIN: the gateway gets no
    /// new request, and replies already on their way are still read).
    fn set_gateways(&mut self, new: &[SocketAddr]) -> Option<Change> {
        let change = Change::between(&self.gateways, new);
        self.gateways = new.to_vec();
        if change.is_none() && !self.slots.is_empty() {
            return None;
        }
        let mut old = std::mem::take(&mut self.slots);
        let mut slots: Vec<Slot> = spread(new, self.connections)
            .into_iter()
            .map(|addr| {
                let kept = old
                    .iter_mut()
                    .find(|s| s.addr == addr && s.conn.is_some())
                    .and_then(|s| s.conn.take());
                Slot { addr, conn: kept }
            })
            .collect();
        if slots.is_empty() {
            // No gateway at all: one slot nothing listens on, so sends count as failed
            // connects and their requests end as no reply.
            let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
            slots.push(Slot {
                addr: nowhere,
                conn: None,
            });
        }
        self.slots = slots;
        change
    }

    fn closed(&mut self, id: u64) {
        for s in &mut self.slots {
            if s.conn.as_ref().is_some_and(|(c, _)| *c == id) {
                s.conn = None;
            }
        }
    }

    /// The slot for request `n`: round-robin over all of them, or over those of `gateway`
    /// (a route's) when it has any.
    fn slot_for(&self, gateway: Option<SocketAddr>, n: u64) -> usize {
        let all = self.slots.len().max(1);
        let Some(addr) = gateway else {
            return (n % all as u64) as usize;
        };
        let mine = self.slots.iter().filter(|s| s.addr == addr).count();
        if mine == 0 {
            return (n % all as u64) as usize;
        }
        let k = (n % mine as u64) as usize;
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.addr == addr)
            .nth(k)
            .map_or(0, |(c, _)| c)
    }

    async fn writer(&mut self, i: usize, report: &mut Report) -> Option<&mut OwnedWriteHalf> {
        let slot = self.slots.get_mut(i)?;
        if slot.conn.is_none() {
            report.connects += 1;
            let figures = report.gateways.entry(slot.addr).or_default();
            figures.connects += 1;
            let Ok(stream) = TcpStream::connect(slot.addr).await else {
                report.connect_failures += 1;
                figures.connect_failures += 1;
                return None;
            };
            let _ = stream.set_nodelay(true);
            let (rd, wr) = stream.into_split();
            self.next_id += 1;
            tokio::spawn(read_replies(rd, self.next_id, self.tx.clone()));
            slot.conn = Some((self.next_id, wr));
        }
        slot.conn.as_mut().map(|(_, w)| w)
    }
}

/// Reads connection `i`'s replies into `tx` until it closes.
pub(crate) async fn read_replies(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    i: u64,
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

/// The request number `n` of the plan, and the gateway its frames go to (`None`: any
/// connection; with routes, one frame per online route to that route's gateway; none when
/// the user has no online route).
fn requests(plan: &Plan, n: u64, out: &mut Vec<(Option<SocketAddr>, GatewayPush)>) {
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
                None => out.push((None, push(plan.client_type))),
                Some(routed) => {
                    let routes = routed.by_user.get(offset as usize).map_or(&[][..], |r| r);
                    for &(g, ct) in routes {
                        out.push((plan.gateway.get(g).copied(), push(ct)));
                    }
                }
            }
        }
        Targets::Broadcast { tags, condition } => out.push((
            None,
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
pub async fn run(plan: &Plan, status: impl FnMut(&Report)) -> Report {
    run_live(plan, Live::default(), status, |_, _| {}).await
}

/// [`run`], following `live`: a changed gateway list (`changed` is told who left and who
/// joined, with the figures so far) and an early stop.
pub async fn run_live(
    plan: &Plan,
    mut live: Live,
    mut status: impl FnMut(&Report),
    mut changed: impl FnMut(&Report, &Change),
) -> Report {
    let timeout_us = u64::try_from(plan.timeout.as_micros()).unwrap_or(u64::MAX);
    let mut tracker: Tracker<SocketAddr> = Tracker::new(timeout_us);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // With routes, `connections` to each gateway the routes name.
    let connections = match &plan.routes {
        Some(_) => plan.connections.max(1) * plan.gateway.len().max(1),
        None => plan.connections.max(1),
    };
    let mut conns = Conns::new(&plan.gateway, connections, tx);
    let mut report = Report::new();
    let start = Instant::now();
    let now_us = || u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let send_until = plan.duration.map(|d| start + d);
    let mut next_status = start + Duration::from_secs(1);
    let mut outs: Vec<(BytesMut, u64)> = Vec::new();
    let mut reqs = Vec::new();
    let mut done = Vec::new();
    let mut stopped = false;
    loop {
        if let Some(list) = &live.gateways {
            let differs = {
                let now = list.borrow();
                !now.is_empty() && *now != conns.gateways
            };
            if differs {
                let now = list.borrow().clone();
                if let Some(change) = conns.set_gateways(&now) {
                    changed(&report, &change);
                }
            }
        }
        if let Some(failures) = &live.connect_failures {
            failures.send_if_modified(|seen| {
                let grew = report.connect_failures > *seen;
                *seen = report.connect_failures;
                grew
            });
        }
        // Sticky: the stop's sender may be gone (and its receiver dropped) once it said so.
        stopped |= live.stop.as_ref().is_some_and(|s| *s.borrow());
        let sending = !stopped
            && plan.count.map_or(true, |c| report.sent < c)
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
                let n_slots = conns.slots.len();
                outs.resize_with(n_slots, || (BytesMut::new(), 0));
                for (out, n) in &mut outs {
                    out.clear();
                    *n = 0;
                }
                for k in 0..batch {
                    let n = report.sent + k;
                    reqs.clear();
                    requests(plan, n, &mut reqs);
                    if reqs.is_empty() {
                        *report.outcomes.entry(Outcome::NoRoute).or_default() += 1;
                    }
                    for (gateway, push) in reqs.drain(..) {
                        let c = conns.slot_for(gateway, n);
                        let id = tracker.start(now_us(), conns.slots[c].addr);
                        encode_push(&mut outs[c].0, &push, id, plan.flags);
                        outs[c].1 += 1;
                    }
                }
                for (c, (out, n)) in outs.iter().enumerate().take(n_slots) {
                    if *n == 0 {
                        continue;
                    }
                    let gateway = conns.slots[c].addr;
                    report.gateways.entry(gateway).or_default().sent += n;
                    if let Some(w) = conns.writer(c, &mut report).await {
                        if w.write_all(out).await.is_err() {
                            conns.slots[c].conn = None;
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
                        FromConn::Closed(id) => conns.closed(id),
                    }
                    msg = rx.try_recv().ok();
                }
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            () = next_change(&mut live.gateways) => {}
            () = next_change(&mut live.stop) => {}
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
