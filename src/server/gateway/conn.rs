//! One gateway connection: a tokio task that reads GATEWAY_PUSH frames, hands device PUSHes
//! to the device connections' tasks, and writes the replies as they complete (8.4, 8.5, 8.7).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::filter;
use super::state::{AckWait, Count, GwEvent, WriteDone};
use crate::gateway::result::PushResultData;
use crate::gateway::{decode_push, GatewayPush, GatewayReply};
use crate::proto::message::ErrorCode;
use crate::proto::{Cmd, DecodeError, Flags, Frame, FrameDecoder, MsgId, Unit, HEADER_LEN};
use crate::server::conn::wall_clock_ms;
use crate::server::session::{error_message, ClientType, Tick};
use crate::server::shared::{ConnCmd, Shared};

/// A single push handed to a device connection, waiting for its write to complete.
struct Single {
    gw_id: MsgId,
    device_id: MsgId,
    begin: Tick,
    timeout_ms: i32,
    ack: bool,
    result: PushResultData,
}

/// A broadcast whose device writes are not all complete yet.
struct Broadcast {
    gw_id: MsgId,
    sent: u64,
    written: u64,
}

enum Pending {
    Single(Single),
    Broadcast(u64),
}

struct GatewayConn {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<GwEvent>,
    out: BytesMut,
    next_token: u64,
    pending: HashMap<u64, Pending>,
    broadcasts: HashMap<u64, Broadcast>,
}

/// Runs one gateway connection to its end.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    shared.gateway.count(Count::Connection);
    let (tx, mut events) = mpsc::unbounded_channel();
    let decoder = FrameDecoder::new(shared.cfg.limits.max_body);
    let mut conn = GatewayConn {
        shared,
        tx,
        out: BytesMut::new(),
        next_token: 0,
        pending: HashMap::new(),
        broadcasts: HashMap::new(),
    };
    let mut rx = BytesMut::with_capacity(4096);
    loop {
        let keep_going = tokio::select! {
            biased;
            _ = stop.changed() => false,
            ev = events.recv() => {
                // The task holds a sender itself, so the channel never closes under it.
                if let Some(ev) = ev {
                    conn.on_event(ev);
                }
                while let Ok(ev) = events.try_recv() {
                    conn.on_event(ev);
                }
                true
            }
            read = stream.read_buf(&mut rx) => match read {
                Ok(0) | Err(_) => false,
                Ok(_) => match conn.on_bytes(&decoder, &mut rx) {
                    Ok(()) => true,
                    Err(Refused::Close) => {
                        let _ = stream.write_all(&conn.out).await;
                        break;
                    }
                    Err(Refused::TooLong(total)) => {
                        // The real decoder buffers the whole over-limit body, then closes
                        // with no reply (8.1).
                        discard(&mut stream, &mut rx, total).await;
                        break;
                    }
                },
            },
        };
        if !conn.out.is_empty() {
            if stream.write_all(&conn.out).await.is_err() {
                break;
            }
            conn.out.clear();
        }
        if !keep_going {
            break;
        }
    }
    let _ = stream.shutdown().await;
}

/// Why the connection ends after a unit.
enum Refused {
    /// ERROR written (or nothing to say): flush and close.
    Close,
    /// A body over `max-packet-size`: read this many bytes in all, then close, no reply.
    TooLong(usize),
}

async fn discard(stream: &mut TcpStream, rx: &mut BytesMut, mut total: usize) {
    loop {
        let n = rx.len().min(total);
        rx.advance(n);
        total -= n;
        if total == 0 {
            return;
        }
        match stream.read_buf(rx).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

impl GatewayConn {
    fn on_bytes(&mut self, decoder: &FrameDecoder, rx: &mut BytesMut) -> Result<(), Refused> {
        loop {
            match decoder.decode(rx) {
                Ok(None) => return Ok(()),
                Ok(Some(Unit::Heartbeat)) => {
                    // No HEARTBEAT handler on the gateway: ERROR 101, sessionId 0, close.
                    self.refuse(Cmd::Heartbeat as u8, MsgId(0), ErrorCode::UNSUPPORTED_CMD);
                    return Err(Refused::Close);
                }
                Ok(Some(Unit::Frame(frame))) => self.on_frame(frame)?,
                Err(DecodeError::BodyTooLong { len, .. }) => {
                    self.shared.gateway.count(Count::Refusal);
                    return Err(Refused::TooLong(HEADER_LEN + len));
                }
                Err(_) => {
                    self.shared.gateway.count(Count::Refusal);
                    return Err(Refused::Close);
                }
            }
        }
    }

    fn refuse(&mut self, cmd: u8, id: MsgId, code: ErrorCode) {
        self.shared.gateway.count(Count::Refusal);
        self.reply(
            id,
            GatewayReply::error(cmd, code, error_message(code), String::new()),
        );
    }

    fn reply(&mut self, id: MsgId, reply: GatewayReply) {
        let ok = matches!(reply, GatewayReply::Ok(_));
        self.shared.gateway.count(Count::Reply(reply.code(), ok));
        reply.encode(&mut self.out, id);
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), Refused> {
        if frame.cmd != Cmd::GatewayPush as u8 {
            self.refuse(frame.cmd, frame.msg_id, ErrorCode::UNSUPPORTED_CMD);
            return Err(Refused::Close);
        }
        let max = self.shared.cfg.limits.max_inflated;
        let Ok(push) = decode_push(&frame, max) else {
            self.refuse(frame.cmd, frame.msg_id, ErrorCode::DISPATCH_ERROR);
            return Err(Refused::Close);
        };
        if push.is_broadcast() {
            self.broadcast(frame.msg_id, push);
        } else {
            self.single(frame.msg_id, frame.flags, push);
        }
        Ok(())
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn single(&mut self, gw_id: MsgId, flags: Flags, push: GatewayPush) {
        let sh = self.shared.clone();
        sh.gateway.count(Count::Push);
        let begin = sh.now();
        let mut result = PushResultData {
            user_id: push.user_id.clone(),
            client_type: push.client_type,
            time_points: vec![("push-center-begin", wall_clock_ms())],
        };
        let ct = i8::try_from(push.client_type).map(ClientType).ok();
        let Some(target) = ct.and_then(|ct| sh.route_of(&push.user_id, ct)) else {
            // No local connection: Redis says where the user is, if the server has it (8.5
            // step 3); without it, offline.
            if let (Some(ct), Some(_)) = (ct, sh.remote.get()) {
                return self.elsewhere(gw_id, push.user_id, ct, result);
            }
            return self.error(gw_id, ErrorCode::OFFLINE, result, "offline-end");
        };
        let device_id = sh.next_msg_id();
        let ack = flags.contains(Flags::AUTO_ACK) || flags.contains(Flags::BIZ_ACK);
        result.time_points.push(("before-send", wall_clock_ms()));
        let timeout = u64::try_from(push.timeout).unwrap_or(0);
        if ack && timeout > 0 && !sh.gateway.ack_race() {
            // Registered before the write, so a fast device's ACK always finds it (8.6).
            let mut waiting = result.clone();
            waiting.time_points.push(("waiting-ack", wall_clock_ms()));
            let wait = AckWait {
                reply: self.tx.clone(),
                gw_id,
                result: waiting,
                deadline: begin.plus(timeout),
            };
            sh.gateway.add_wait(device_id, wait);
        }
        let token = self.token();
        let done = WriteDone::new(self.tx.clone(), token);
        let cmd = ConnCmd::GatewayPush {
            msg_id: device_id,
            content: push.content,
            flags,
            done,
        };
        if !sh.send_to(target, cmd) {
            sh.gateway.cancel_wait(device_id);
            return self.error(gw_id, ErrorCode::OFFLINE, result, "offline-end");
        }
        let single = Single {
            gw_id,
            device_id,
            begin,
            timeout_ms: push.timeout,
            ack,
            result,
        };
        self.pending.insert(token, Pending::Single(single));
    }

    fn error(&mut self, gw_id: MsgId, code: ErrorCode, result: PushResultData, end: &'static str) {
        self.reply(gw_id, push_error(code, result, end));
    }

    /// OFFLINE or ROUTER_CHANGE from the user's route in Redis, answered when the read is
    /// done (replies go in completion order anyway).
    fn elsewhere(&mut self, gw_id: MsgId, user: String, ct: ClientType, result: PushResultData) {
        let (sh, tx) = (self.shared.clone(), self.tx.clone());
        tokio::spawn(async move {
            let Some(remote) = sh.remote.get() else {
                return;
            };
            let (code, end) = match remote.elsewhere(&user, ct).await {
                super::remote::Elsewhere::Moved => (ErrorCode::ROUTER_CHANGE, "redirect-end"),
                _ => (ErrorCode::OFFLINE, "offline-end"),
            };
            let reply = push_error(code, result, end);
            sh.gateway.count(Count::Reply(code.0, false));
            let mut out = BytesMut::new();
            reply.encode(&mut out, gw_id);
            let _ = tx.send(GwEvent::Reply(out.freeze()));
        });
    }

    fn broadcast(&mut self, gw_id: MsgId, push: GatewayPush) {
        let sh = self.shared.clone();
        sh.gateway.count(Count::Broadcast);
        let id = self.token();
        let mut sent = 0;
        for conn in sh.routed_conns() {
            if !filter::matches(&push.tags, &push.condition, &sh.gateway.tags_of(conn)) {
                continue;
            }
            let token = self.token();
            let cmd = ConnCmd::GatewayPush {
                msg_id: sh.next_msg_id(),
                content: push.content.clone(),
                // Broadcast pushes are never acked: no ack flags (8.7).
                flags: Flags::NONE,
                done: WriteDone::new(self.tx.clone(), token),
            };
            if sh.send_to(conn, cmd) {
                sent += 1;
                sh.gateway.count(Count::BroadcastDevicePush);
                self.pending.insert(token, Pending::Broadcast(id));
            }
        }
        if sent == 0 {
            return self.reply(gw_id, GatewayReply::ok(String::new()));
        }
        let b = Broadcast {
            gw_id,
            sent,
            written: 0,
        };
        self.broadcasts.insert(id, b);
    }

    fn on_event(&mut self, ev: GwEvent) {
        match ev {
            GwEvent::Reply(frame) => {
                self.out.extend_from_slice(&frame);
            }
            GwEvent::Written { token, ok } => match self.pending.remove(&token) {
                Some(Pending::Single(s)) => self.written(s, ok),
                Some(Pending::Broadcast(id)) => self.broadcast_written(id, ok),
                None => {}
            },
        }
    }

    /// A single push's device write completed (8.5 step 4).
    fn written(&mut self, s: Single, ok: bool) {
        let sh = self.shared.clone();
        let elapsed = sh.now().0.saturating_sub(s.begin.0);
        if !ok {
            sh.gateway.cancel_wait(s.device_id);
            return self.error(
                s.gw_id,
                ErrorCode::PUSH_CLIENT_FAILURE,
                s.result,
                "failure-end",
            );
        }
        // Step 1's check at write completion: more than `timeout` ms have passed (timeout 0
        // in practice always has): dropped, no reply.
        let timeout = u64::try_from(s.timeout_ms).unwrap_or(0);
        if timeout == 0 || elapsed > timeout {
            sh.gateway.cancel_wait(s.device_id);
            sh.gateway.count(Count::PushTimeout);
            return;
        }
        if !s.ack {
            let mut result = s.result;
            result.time_points.push(("success-end", wall_clock_ms()));
            self.reply(s.gw_id, GatewayReply::ok(result.to_json()));
        }
        // An ack push: the wait registered before the write answers (or expires silently).
    }

    fn broadcast_written(&mut self, id: u64, ok: bool) {
        let Some(b) = self.broadcasts.get_mut(&id) else {
            return;
        };
        if ok {
            b.written += 1;
        }
        if b.written == b.sent {
            let gw_id = b.gw_id;
            self.broadcasts.remove(&id);
            self.reply(gw_id, GatewayReply::ok(String::new()));
        }
    }
}

/// A push's ERROR reply: `code`'s message, and the result with its last time point `end`.
fn push_error(code: ErrorCode, mut result: PushResultData, end: &'static str) -> GatewayReply {
    result.time_points.push((end, wall_clock_ms()));
    GatewayReply::error(
        Cmd::GatewayPush as u8,
        code,
        error_message(code),
        result.to_json(),
    )
}
