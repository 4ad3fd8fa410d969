//! The inputs of [`Device`] and its transitions: PROTOCOL.md section 6, step by step.
//!
//! An input changes state, sets timers and records what is owed (see `state::Owed`); the
//! bytes and effects themselves are made when the shell polls (`poll.rs`).

use rand::RngCore;

use super::state::{
    Down, ExpectConnect, ExpectFastConnectOk, ExpectHandshakeOk, Held, Online, Owed, State, Timer,
};
use super::{CloseReason, Delivery, Device, Event, Now, Shared, Tick};
use crate::crypto::{mix_keys, AesCipher, KEY_LEN};
use crate::proto::message::{ErrorCode, ServerMessage};
use crate::proto::pipeline::open_body_into;
use crate::proto::{Cmd, DecodeError, Flags, Frame, MsgId};
use crate::stats::Latency;

/// Heartbeats below this are clamped: a server that asks for 0 ms must not cause a storm.
const MIN_HEARTBEAT_MS: u32 = 100;

/// When to send a heartbeat after the last write. The reference clients use heartbeat - 1 s;
/// below 2 s that would leave no margin (or be 0), so short heartbeats use half the period.
fn heartbeat_interval(heartbeat_ms: u32) -> u64 {
    u64::from(if heartbeat_ms > 2_000 {
        heartbeat_ms - 1_000
    } else {
        heartbeat_ms / 2
    })
}

/// Heartbeats and read checks sit on a grid of this many ms (at most an eighth of the
/// heartbeat interval): a shard's sessions then send their heartbeats and check their reads in
/// shared turns, one `io_uring_enter` for many, instead of one turn per distinct millisecond.
/// Neither needs millisecond precision; request timeouts, backoffs and every latency sample
/// stay exact.
const HEARTBEAT_GRID_MS: u64 = 32;

/// The grid step for a heartbeat of `heartbeat_ms`.
fn heartbeat_grid(heartbeat_ms: u32) -> u64 {
    HEARTBEAT_GRID_MS
        .min(heartbeat_interval(heartbeat_ms) / 8)
        .max(1)
}

/// `t` moved down onto the grid: at most `grid - 1` ms earlier, never later, so a deadline
/// `after` a turn of at least `grid` ms stays later than that turn.
fn on_grid(t: Tick, grid: u64) -> Tick {
    Tick(t.0 - t.0 % grid)
}

impl Device {
    /// Feeds an event from the shell. Events that do not fit the current phase (a late
    /// connect result, a close after the device already gave the connection up) are ignored.
    pub fn handle_event(&mut self, now: Now, sh: &mut Shared, event: Event) {
        match (&mut self.state, event) {
            (State::Idle | State::Stopped(Down { close: None }), Event::Start) => {
                sh.stats.counters.devices_started += 1;
                self.begin();
            }
            (State::ExpectTicket, Event::Ticket(ticket)) => {
                let usable = ticket.filter(|t| t.expire_time_ms > now.wall_ms);
                if usable.is_some() {
                    sh.stats.counters.tickets_found += 1;
                }
                self.state = State::ExpectConnect(ExpectConnect {
                    ticket: usable.map(Box::new),
                });
                self.request_sent_us = now.us;
                self.owed.set(Owed::CONNECT);
            }
            (State::ExpectConnect(_), Event::Connected) => self.on_connected(now, sh),
            (State::ExpectConnect(_), Event::ConnectFailed) => {
                sh.stats.counters.connect_failures += 1;
                self.schedule_reconnect(now, sh, None);
            }
            (state, Event::Closed) if state.is_connected() => {
                sh.stats.counters.peer_closed += 1;
                self.connection_down(now, sh);
                self.schedule_reconnect(now, sh, None);
            }
            (state, Event::Drop) if state.is_connected() => {
                self.connection_down(now, sh);
                self.schedule_reconnect(now, sh, None);
            }
            (State::Online(_), Event::SinkTook(id)) => self.owe_ack(now, sh, id),
            (state, Event::Stop) => {
                let close = state.is_connected().then_some(CloseReason::Stopped);
                if close.is_some() {
                    self.connection_down(now, sh);
                }
                self.owed.clear(Owed::TRANSMIT);
                self.state = State::Stopped(Down { close });
                self.timers.clear();
            }
            _ => {}
        }
    }

    /// A `0xDF` heartbeat byte arrived.
    pub fn handle_heartbeat(&mut self, now: Now, sh: &mut Shared) {
        if !self.state.is_connected() {
            return;
        }
        self.last_read = now.tick();
        sh.stats.counters.heartbeats_received += 1;
        if let State::Online(o) = &mut self.state {
            if o.heartbeat_sent_us != 0 {
                let rtt = now.us.saturating_sub(o.heartbeat_sent_us);
                sh.stats.latencies.record(Latency::HeartbeatRtt, rtt);
                o.heartbeat_sent_us = 0;
            }
        }
    }

    /// A whole frame arrived, body still as on the wire (sealed): the device decrypts it
    /// with its connection's cipher.
    pub fn handle_frame(&mut self, now: Now, sh: &mut Shared, frame: Frame) {
        if !self.state.is_connected() {
            return;
        }
        self.last_read = now.tick();
        let max = sh.cfg.limits.max_inflated;
        let cipher = self.state.cipher();
        let body = match open_body_into(frame.flags, frame.body, cipher, max, &mut sh.rx) {
            Ok(body) => body,
            // The real server copies a gateway push's flags onto the device PUSH, so COMPRESS
            // arrives on content that was never deflated (PROTOCOL.md 8.3). The frame was
            // framed and decrypted: the stream is intact, only this push is lost.
            Err(DecodeError::Inflate | DecodeError::InflateTooLarge { .. })
                if frame.cmd == Cmd::Push as u8 =>
            {
                sh.stats.counters.push_decode_errors += 1;
                return;
            }
            // The same for an HttpResponse (a body over the inflate cap): that request's
            // answer is bad, the session goes on.
            Err(DecodeError::Inflate | DecodeError::InflateTooLarge { .. })
                if frame.cmd == Cmd::HttpProxy as u8 && matches!(self.state, State::Online(_)) =>
            {
                return self.on_upstream_garbled(now, sh, frame.msg_id);
            }
            Err(e) => return self.fail_decode(now, sh, e),
        };
        let msg = match ServerMessage::decode(frame.cmd, body) {
            Ok(msg) => msg,
            // An HttpResponse that was framed and decrypted but whose fields do not decode:
            // that request's answer is bad, the stream is intact.
            Err(_)
                if frame.cmd == Cmd::HttpProxy as u8 && matches!(self.state, State::Online(_)) =>
            {
                return self.on_upstream_garbled(now, sh, frame.msg_id);
            }
            Err(e) => return self.fail_decode(now, sh, e),
        };
        self.on_message(now, sh, frame.msg_id, frame.flags, msg);
    }

    /// The stream itself could not be decoded (a header announcing a negative or over-limit
    /// body): the connection cannot be resynchronised, so it is given up.
    pub fn handle_stream_error(&mut self, now: Now, sh: &mut Shared, error: DecodeError) {
        if self.state.is_connected() {
            self.fail_decode(now, sh, error);
        }
    }

    /// A deadline may have passed. Early or repeated calls do nothing. Afterwards every
    /// deadline is later than `now` (or unset), so a shell re-arming from
    /// [`Device::poll_timeout`] cannot spin.
    pub fn handle_timeout(&mut self, now: Now, sh: &mut Shared) {
        let t = now.tick();
        self.upstream_timeouts(now, sh);
        if self.timers.expired(Timer::Request, t) {
            match &mut self.state {
                State::ExpectFastConnectOk(_) | State::ExpectHandshakeOk(_) => {
                    sh.stats.counters.request_timeouts += 1;
                    return self.close(now, sh, CloseReason::RequestTimeout);
                }
                State::Online(o) if !o.bound => {
                    if o.bind_tries <= sh.cfg.bind_retries {
                        self.send_bind(now, sh);
                    } else {
                        sh.stats.counters.request_timeouts += 1;
                        return self.close(now, sh, CloseReason::RequestTimeout);
                    }
                }
                _ => {}
            }
        }
        if self.timers.expired(Timer::Backoff, t) && matches!(self.state, State::Backoff(_)) {
            return self.begin();
        }
        let State::Online(o) = &mut self.state else {
            return;
        };
        let hb = u64::from(self.heartbeat_ms);
        let grid = heartbeat_grid(self.heartbeat_ms);
        if self.timers.expired(Timer::ReadCheck, t) {
            // PROTOCOL.md 6.5: give up after two consecutive checks that found nothing read
            // for heartbeat + 1 s.
            if t.since(self.last_read) > hb + 1_000 {
                o.missed_reads += 1;
                if o.missed_reads >= 2 {
                    sh.stats.counters.read_timeouts += 1;
                    return self.close(now, sh, CloseReason::ReadTimeout);
                }
            } else {
                o.missed_reads = 0;
            }
            self.timers
                .set(Timer::ReadCheck, on_grid(t.after(hb), grid));
        }
        if self.timers.expired(Timer::Heartbeat, t) {
            let interval = heartbeat_interval(self.heartbeat_ms);
            // Due on the grid: up to `grid - 1` ms before the interval is over.
            if t.since(self.last_write) + grid > interval {
                self.owed.set(Owed::HEARTBEAT);
                self.last_write = t;
                o.heartbeat_sent_us = now.us.max(1);
                sh.stats.counters.heartbeats_sent += 1;
            }
            self.timers.set(
                Timer::Heartbeat,
                on_grid(self.last_write.after(interval), grid),
            );
        }
    }

    fn begin(&mut self) {
        self.state = State::ExpectTicket;
        self.owed.clear(Owed::TRANSMIT);
        self.timers.clear();
        self.owed.set(Owed::LOAD_TICKET);
    }

    fn on_connected(&mut self, now: Now, sh: &mut Shared) {
        let c = &mut sh.stats.counters;
        c.connected += 1;
        c.connections += 1;
        let took = now.us.saturating_sub(self.request_sent_us);
        sh.stats.latencies.record(Latency::Connect, took);
        self.last_read = now.tick();
        self.next_msg_id = 0;
        let ticket = match &mut self.state {
            State::ExpectConnect(s) => s.ticket.take(),
            _ => None,
        };
        match ticket {
            Some(ticket) => {
                self.state = State::ExpectFastConnectOk(ExpectFastConnectOk { ticket });
                self.await_reply(now, sh);
            }
            None => self.send_handshake(now, sh),
        }
    }

    fn send_handshake(&mut self, now: Now, sh: &mut Shared) {
        let mut client_key = [0u8; KEY_LEN];
        let mut iv = [0u8; KEY_LEN];
        sh.rng.fill_bytes(&mut client_key);
        sh.rng.fill_bytes(&mut iv);
        self.state = State::ExpectHandshakeOk(ExpectHandshakeOk {
            temp: AesCipher::new(client_key, iv),
        });
        self.await_reply(now, sh);
    }

    /// The opening request is owed: written at the next poll_transmit, timed from now.
    fn await_reply(&mut self, now: Now, sh: &Shared) {
        self.owed.set(Owed::HELLO);
        self.last_write = now.tick();
        self.request_sent_us = now.us;
        let timeout = u64::from(sh.cfg.request_timeout_ms);
        self.timers.set(Timer::Request, now.tick().after(timeout));
    }

    fn on_message(
        &mut self,
        now: Now,
        sh: &mut Shared,
        id: MsgId,
        flags: Flags,
        msg: ServerMessage,
    ) {
        let took = now.us.saturating_sub(self.request_sent_us);
        match (&mut self.state, msg) {
            (State::ExpectHandshakeOk(s), ServerMessage::HandshakeOk(ok)) => {
                let session = AesCipher::new(mix_keys(s.temp.key(), &ok.server_key), *s.temp.iv());
                let held = Held::SaveTicket {
                    session_id: ok.session_id,
                    expire_time_ms: ok.expire_time,
                };
                sh.stats.counters.handshakes += 1;
                sh.stats.latencies.record(Latency::Handshake, took);
                self.go_online(now, sh, session, false, held, ok.heartbeat);
            }
            (State::ExpectFastConnectOk(s), ServerMessage::FastConnectOk(ok)) => {
                let cipher = s.ticket.cipher.clone();
                sh.stats.counters.fast_connects += 1;
                sh.stats.latencies.record(Latency::FastConnect, took);
                self.go_online(now, sh, cipher, true, Held::None, ok.heartbeat);
            }
            (State::ExpectFastConnectOk(_), ServerMessage::Error(e))
                if e.cmd == Cmd::FastConnect as u8
                    && matches!(
                        e.code,
                        ErrorCode::SESSION_EXPIRED | ErrorCode::INVALID_DEVICE
                    ) =>
            {
                // PROTOCOL.md 6.2: drop the ticket and handshake on the same connection.
                sh.stats.counters.error(e.code.0);
                sh.stats.counters.fast_connect_rejected += 1;
                self.owed.set(Owed::DELETE_TICKET);
                self.send_handshake(now, sh);
            }
            (_, ServerMessage::Error(e)) if e.code == ErrorCode::REPEAT_HANDSHAKE => {
                sh.stats.counters.error(e.code.0);
            }
            // bind_tries is 0 after an unbind: a late OK of the bind before it binds nothing.
            (State::Online(o), ServerMessage::Ok(ok))
                if ok.cmd == Cmd::Bind as u8 && !o.bound && o.bind_tries > 0 =>
            {
                o.bound = true;
                self.timers.stop(Timer::Request);
                sh.stats.counters.bound += 1;
                sh.stats.latencies.record(Latency::Bind, took);
            }
            (State::Online(o), ServerMessage::Push(push)) => {
                sh.stats.counters.pushes_received += 1;
                let auto = flags.contains(Flags::AUTO_ACK);
                let biz = flags.contains(Flags::BIZ_ACK);
                o.held = Held::Deliver(Delivery {
                    msg_id: id,
                    flags,
                    content: push.content,
                    ack_on_take: biz && !auto,
                });
                if auto {
                    self.owe_ack(now, sh, id);
                }
            }
            (_, ServerMessage::Kick(_)) => {
                sh.stats.counters.kicks += 1;
                self.close(now, sh, CloseReason::Kicked);
            }
            (State::Online(_), ServerMessage::Heartbeat) => self.handle_heartbeat(now, sh),
            (State::Online(_), ServerMessage::Other(cmd)) if cmd == Cmd::Ack as u8 => {
                self.on_upstream_ack(now, sh, id);
            }
            (State::Online(_), ServerMessage::HttpResponse(resp)) => {
                let raw = !flags.contains(Flags::CRYPTO);
                self.on_upstream_response(now, sh, id, raw, resp);
            }
            (State::Online(_), ServerMessage::Error(e))
                if e.cmd == Cmd::Push as u8 || e.cmd == Cmd::HttpProxy as u8 =>
            {
                sh.stats.counters.error(e.code.0);
                if !self.on_upstream_error(now, sh, id, &e) {
                    sh.stats.counters.upstream_unmatched += 1;
                }
            }
            (state, ServerMessage::Error(e)) => {
                sh.stats.counters.error(e.code.0);
                // An error that answers what this device is waiting for ends the connection;
                // any other (for an unbind, a proxy request) is only counted.
                let waiting = match state {
                    State::ExpectFastConnectOk(_) | State::ExpectHandshakeOk(_) => true,
                    State::Online(o) => !o.bound && e.cmd == Cmd::Bind as u8,
                    _ => false,
                };
                if waiting {
                    let reason = CloseReason::ServerError {
                        cmd: e.cmd,
                        code: e.code.0,
                    };
                    self.close(now, sh, reason);
                }
            }
            (State::ExpectFastConnectOk(_) | State::ExpectHandshakeOk(_), other) => {
                // Anything but the awaited reply means the peer does not speak this protocol.
                self.close(
                    now,
                    sh,
                    CloseReason::Unexpected(super::down::server_cmd(&other)),
                );
            }
            // OK for other commands, HTTP responses, commands a client has no use for.
            _ => {}
        }
    }

    fn go_online(
        &mut self,
        now: Now,
        sh: &mut Shared,
        cipher: AesCipher,
        resumed: bool,
        held: Held,
        heartbeat: i32,
    ) {
        let hb = u32::try_from(heartbeat).unwrap_or(0).max(MIN_HEARTBEAT_MS);
        self.state = State::Online(Online {
            cipher,
            bound: false,
            resumed,
            bind_tries: 0,
            missed_reads: 0,
            heartbeat_sent_us: 0,
            acks: Default::default(),
            held,
        });
        self.heartbeat_ms = hb;
        self.reconnect_attempts = 0;
        self.timers.stop(Timer::Request);
        let grid = heartbeat_grid(hb);
        self.timers.set(
            Timer::ReadCheck,
            on_grid(now.tick().after(u64::from(hb)), grid),
        );
        self.timers.set(
            Timer::Heartbeat,
            on_grid(self.last_write.after(heartbeat_interval(hb)), grid),
        );
        sh.stats.counters.online += 1;
        if !std::mem::replace(&mut self.was_online, true) {
            sh.stats.counters.ever_online += 1;
        }
        if sh.cfg.binds(self.index) {
            self.send_bind(now, sh);
        }
    }

    pub(super) fn send_bind(&mut self, now: Now, sh: &Shared) {
        let State::Online(o) = &mut self.state else {
            return;
        };
        o.bind_tries += 1;
        self.owed.set(Owed::BIND);
        self.last_write = now.tick();
        self.request_sent_us = now.us;
        let timeout = u64::from(sh.cfg.request_timeout_ms);
        self.timers.set(Timer::Request, now.tick().after(timeout));
    }

    /// An ack is owed (counted now, written at poll_transmit).
    fn owe_ack(&mut self, now: Now, sh: &mut Shared, id: MsgId) {
        if let State::Online(o) = &mut self.state {
            if o.acks.push(id) {
                sh.stats.counters.acks_sent += 1;
                self.last_write = now.tick();
            }
        }
    }

    pub(super) fn next_id(&mut self) -> MsgId {
        self.next_msg_id = self.next_msg_id.wrapping_add(1);
        MsgId(self.next_msg_id)
    }
}
