//! What the gateway shares with the device connections.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use crate::gateway::result::PushResultData;
use crate::gateway::GatewayReply;
use crate::proto::MsgId;
use crate::server::session::Tick;
use crate::server::shared::ConnId;

/// Something for one gateway connection's task.
#[derive(Debug)]
pub(crate) enum GwEvent {
    /// A reply frame, encoded, to write as it is (an ACK's OK comes this way).
    Reply(Bytes),
    /// A device connection finished writing the PUSH for `token` (`ok`: the write succeeded).
    Written { token: u64, ok: bool },
}

/// Where a device connection reports that a gateway PUSH was written. Dropped unreported
/// (the device connection ended before it wrote the push), it reports a failed write: the
/// gateway answers PUSH_CLIENT_FAILURE, as the real server does when the write fails.
#[derive(Debug)]
pub(crate) struct WriteDone {
    tx: Option<UnboundedSender<GwEvent>>,
    token: u64,
}

impl WriteDone {
    pub(crate) fn new(tx: UnboundedSender<GwEvent>, token: u64) -> Self {
        Self {
            tx: Some(tx),
            token,
        }
    }

    pub(crate) fn report(mut self, ok: bool) {
        self.send(ok);
    }

    fn send(&mut self, ok: bool) {
        if let Some(tx) = self.tx.take() {
            // A gateway connection that has gone away wants no report.
            let _ = tx.send(GwEvent::Written {
                token: self.token,
                ok,
            });
        }
    }
}

impl Drop for WriteDone {
    fn drop(&mut self) {
        self.send(false);
    }
}

/// A push waiting for its device's ACK.
#[derive(Debug)]
pub(crate) struct AckWait {
    pub(crate) reply: UnboundedSender<GwEvent>,
    pub(crate) gw_id: MsgId,
    pub(crate) result: PushResultData,
    pub(crate) deadline: Tick,
}

/// The gateway's counters, as `GET /stats` shows them under `gateway`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GatewayStats {
    /// Gateway connections accepted.
    pub connections: u64,
    /// Single-user GATEWAY_PUSH frames handled.
    pub pushes: u64,
    /// Broadcast GATEWAY_PUSH frames handled.
    pub broadcasts: u64,
    /// Device PUSHes written for broadcasts.
    pub broadcast_device_pushes: u64,
    /// OK replies sent.
    pub ok: u64,
    /// ERROR replies sent, by code.
    pub errors_by_code: BTreeMap<u8, u64>,
    /// Device ACKs that completed an ack wait.
    pub acks_matched: u64,
    /// Device ACKs that found no ack wait ("receive client ack, but task timeout").
    pub acks_unmatched: u64,
    /// Ack waits that expired: no reply sent.
    pub ack_timeouts: u64,
    /// Pushes past their own timeout at write completion: dropped, no reply.
    pub push_timeouts: u64,
    /// Connections closed for a refused unit (heartbeat, other cmd, undecodable, too long).
    pub refusals: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    pushes: AtomicU64,
    broadcasts: AtomicU64,
    broadcast_device_pushes: AtomicU64,
    ok: AtomicU64,
    errors_by_code: Mutex<BTreeMap<u8, u64>>,
    acks_matched: AtomicU64,
    acks_unmatched: AtomicU64,
    ack_timeouts: AtomicU64,
    push_timeouts: AtomicU64,
    refusals: AtomicU64,
}

/// A counted gateway event.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Count {
    Connection,
    Push,
    Broadcast,
    BroadcastDevicePush,
    Reply(u8, bool),
    PushTimeout,
    Refusal,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one map operation: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Shared by every gateway and device connection of one server.
#[derive(Debug, Default)]
pub(crate) struct GatewayState {
    waits: Mutex<HashMap<i32, AckWait>>,
    tags: Mutex<HashMap<ConnId, String>>,
    ack_race: AtomicBool,
    counters: Counters,
}

impl GatewayState {
    /// Fault: reproduce the real server's ack race (8.6), every time: no ack wait is in place
    /// when the device's ACK arrives, so the ACK is dropped and the gateway gets no reply.
    pub(crate) fn set_ack_race(&self, on: bool) {
        self.ack_race.store(on, Relaxed);
    }

    pub(crate) fn ack_race(&self) -> bool {
        self.ack_race.load(Relaxed)
    }

    // ----- bind tags -----

    pub(crate) fn set_tags(&self, conn: ConnId, tags: String) {
        let mut map = lock(&self.tags);
        if tags.is_empty() {
            map.remove(&conn);
        } else {
            map.insert(conn, tags);
        }
    }

    pub(crate) fn forget_conn(&self, conn: ConnId) {
        lock(&self.tags).remove(&conn);
    }

    pub(crate) fn tags_of(&self, conn: ConnId) -> String {
        lock(&self.tags).get(&conn).cloned().unwrap_or_default()
    }

    // ----- ack waits -----

    /// Registers the wait for the device PUSH `device_id` (before the write: no race).
    pub(crate) fn add_wait(&self, device_id: MsgId, wait: AckWait) {
        lock(&self.waits).insert(device_id.0, wait);
    }

    /// Drops the wait (the write failed or the push timed out); whether there was one.
    pub(crate) fn cancel_wait(&self, device_id: MsgId) -> bool {
        lock(&self.waits).remove(&device_id.0).is_some()
    }

    /// A device ACK with `device_id` arrived at `now` (`wall_ms` for the time line): the OK
    /// goes to the gateway connection that is waiting, if it still is (8.5 step 5).
    pub(crate) fn on_ack(&self, device_id: MsgId, now: Tick, wall_ms: i64) {
        let Some(mut w) = lock(&self.waits).remove(&device_id.0) else {
            self.counters.acks_unmatched.fetch_add(1, Relaxed);
            return;
        };
        if now > w.deadline {
            self.counters.ack_timeouts.fetch_add(1, Relaxed);
            return;
        }
        self.counters.acks_matched.fetch_add(1, Relaxed);
        w.result.time_points.push(("success-end", wall_ms));
        let mut out = bytes::BytesMut::new();
        GatewayReply::ok(w.result.to_json()).encode(&mut out, w.gw_id);
        self.count(Count::Reply(0, true));
        let _ = w.reply.send(GwEvent::Reply(out.freeze()));
    }

    /// Forgets every wait whose deadline has passed (each is logged as an ack timeout; no
    /// reply is sent, as the real server sends none).
    pub(crate) fn expire_waits(&self, now: Tick) {
        let mut waits = lock(&self.waits);
        let before = waits.len();
        waits.retain(|_, w| w.deadline >= now);
        let expired = (before - waits.len()) as u64;
        drop(waits);
        if expired > 0 {
            tracing::debug!(expired, "gateway ack waits expired, no reply");
            self.counters.ack_timeouts.fetch_add(expired, Relaxed);
        }
    }

    // ----- counters -----

    pub(crate) fn count(&self, what: Count) {
        let c = &self.counters;
        let counter = match what {
            Count::Connection => &c.connections,
            Count::Push => &c.pushes,
            Count::Broadcast => &c.broadcasts,
            Count::BroadcastDevicePush => &c.broadcast_device_pushes,
            Count::Reply(_, true) => &c.ok,
            Count::Reply(code, false) => {
                *lock(&c.errors_by_code).entry(code).or_default() += 1;
                return;
            }
            Count::PushTimeout => &c.push_timeouts,
            Count::Refusal => &c.refusals,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn stats(&self) -> GatewayStats {
        let c = &self.counters;
        GatewayStats {
            connections: c.connections.load(Relaxed),
            pushes: c.pushes.load(Relaxed),
            broadcasts: c.broadcasts.load(Relaxed),
            broadcast_device_pushes: c.broadcast_device_pushes.load(Relaxed),
            ok: c.ok.load(Relaxed),
            errors_by_code: lock(&c.errors_by_code).clone(),
            acks_matched: c.acks_matched.load(Relaxed),
            acks_unmatched: c.acks_unmatched.load(Relaxed),
            ack_timeouts: c.ack_timeouts.load(Relaxed),
            push_timeouts: c.push_timeouts.load(Relaxed),
            refusals: c.refusals.load(Relaxed),
        }
    }
}
