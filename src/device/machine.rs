//! The transitions of [`Device`]: PROTOCOL.md section 6, step by step.

use bytes::Bytes;
use rand::{Rng, RngCore};

use super::{CloseReason, Ctx, Delivery, Device, Effect, Event, Opened, Phase, Tick};
use crate::crypto::{mix_keys, AesCipher, KEY_LEN};
use crate::proto::message::{
    Ack, Bind, ErrorCode, FastConnect, Handshake, ServerMessage, UserBinding,
};
use crate::proto::pipeline::{finish_decrypted, finish_open, open_body, Encoder};
use crate::proto::{encode_frame, Cmd, DecodeError, Flags, Frame, MsgId};
use crate::stats::Latency;
use crate::tickets::format::ClientTicket;

/// Heartbeats below this are clamped: a server that asks for 0 ms must not cause a storm.
const MIN_HEARTBEAT_MS: u32 = 100;

/// When to send a heartbeat after the last write. The reference clients use heartbeat - 1 s;
/// below 2 s that would leave no margin (or be 0), so short heartbeats use half the period.
fn heartbeat_interval(heartbeat_ms: u32) -> u32 {
    if heartbeat_ms > 2_000 {
        heartbeat_ms - 1_000
    } else {
        heartbeat_ms / 2
    }
}

impl Device {
    /// Feeds an event from the shell. Events that do not fit the current phase (a late
    /// connect result, a close after the device already gave the connection up) are ignored.
    pub fn handle_event(&mut self, ctx: &mut Ctx<'_>, event: Event) {
        match (self.phase, event) {
            (Phase::Idle, Event::Start) => {
                ctx.stats.counters.devices_started += 1;
                self.begin(ctx);
            }
            (Phase::ExpectTicket, Event::Ticket(ticket)) => {
                let usable = ticket.filter(|t| t.expire_time_ms > ctx.wall_ms);
                if usable.is_some() {
                    ctx.stats.counters.tickets_found += 1;
                }
                self.ticket = usable.map(Box::new);
                self.phase = Phase::ExpectConnect;
                self.request_sent_us = ctx.now_us;
                ctx.stats.counters.connects += 1;
                ctx.out.effects.push(Effect::Connect);
            }
            (Phase::ExpectConnect, Event::Connected) => self.on_connected(ctx),
            (Phase::ExpectConnect, Event::ConnectFailed) => {
                ctx.stats.counters.connect_failures += 1;
                self.ticket = None;
                self.schedule_reconnect(ctx);
            }
            (phase, Event::Closed) if is_connected(phase) => {
                ctx.stats.counters.peer_closed += 1;
                self.connection_down(ctx);
                self.schedule_reconnect(ctx);
            }
            (Phase::Online, Event::SinkTook(id)) => self.send_ack(ctx, id),
            (phase, Event::Stop) => {
                if is_connected(phase) {
                    ctx.out.effects.push(Effect::Close(CloseReason::Stopped));
                    self.connection_down(ctx);
                }
                self.ticket = None;
                self.phase = Phase::Stopped;
                self.clear_timers();
            }
            _ => {}
        }
    }

    /// A `0xDF` heartbeat byte arrived.
    pub fn handle_heartbeat(&mut self, ctx: &mut Ctx<'_>) {
        if !is_connected(self.phase) {
            return;
        }
        self.last_read = ctx.now;
        ctx.stats.counters.heartbeats_received += 1;
        if self.heartbeat_sent_us != 0 {
            let rtt = ctx.now_us.saturating_sub(self.heartbeat_sent_us);
            ctx.stats.latencies.record(Latency::HeartbeatRtt, rtt);
            self.heartbeat_sent_us = 0;
        }
    }

    /// A whole frame arrived, body still as on the wire; `opened` is the shell's batch
    /// decryption of it, if it did one.
    pub fn handle_frame(&mut self, ctx: &mut Ctx<'_>, frame: Frame, opened: Option<Opened>) {
        if !is_connected(self.phase) {
            return;
        }
        self.last_read = ctx.now;
        let body = match self.open(&frame, opened, ctx.cfg.limits.max_inflated) {
            Ok(body) => body,
            Err(e) => return self.fail_decode(ctx, e),
        };
        let msg = match ServerMessage::decode(frame.cmd, body) {
            Ok(msg) => msg,
            Err(e) => return self.fail_decode(ctx, e),
        };
        self.on_message(ctx, frame.msg_id, frame.flags, msg);
    }

    /// The stream itself could not be decoded (a header announcing a negative or over-limit
    /// body): the connection cannot be resynchronised, so it is given up.
    pub fn handle_stream_error(&mut self, ctx: &mut Ctx<'_>, error: DecodeError) {
        if is_connected(self.phase) {
            self.fail_decode(ctx, error);
        }
    }

    /// A deadline may have passed. Early or repeated calls do nothing.
    pub fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        if self.deadline <= now {
            self.deadline = Tick::NEVER;
            match self.phase {
                Phase::ExpectFastConnectOk | Phase::ExpectHandshakeOk => {
                    ctx.stats.counters.request_timeouts += 1;
                    return self.close(ctx, CloseReason::RequestTimeout);
                }
                Phase::Online if !self.bound => {
                    if self.bind_tries <= ctx.cfg.bind_retries {
                        self.send_bind(ctx);
                    } else {
                        ctx.stats.counters.request_timeouts += 1;
                        return self.close(ctx, CloseReason::RequestTimeout);
                    }
                }
                Phase::Backoff => return self.begin(ctx),
                _ => {}
            }
        }
        if self.phase != Phase::Online {
            return;
        }
        if self.read_check <= now {
            // PROTOCOL.md 6.5: give up after two consecutive checks that found nothing read
            // for heartbeat + 1 s.
            if now.since(self.last_read) > self.heartbeat_ms + 1_000 {
                self.missed_reads += 1;
                if self.missed_reads >= 2 {
                    ctx.stats.counters.read_timeouts += 1;
                    return self.close(ctx, CloseReason::ReadTimeout);
                }
            } else {
                self.missed_reads = 0;
            }
            self.read_check = now.after(self.heartbeat_ms);
        }
        if self.heartbeat_due <= now {
            let interval = heartbeat_interval(self.heartbeat_ms);
            if now.since(self.last_write) >= interval {
                ctx.out.heartbeat();
                self.last_write = now;
                self.heartbeat_sent_us = ctx.now_us.max(1);
                ctx.stats.counters.heartbeats_sent += 1;
            }
            self.heartbeat_due = self.last_write.after(interval);
        }
    }

    fn begin(&mut self, ctx: &mut Ctx<'_>) {
        self.phase = Phase::ExpectTicket;
        self.clear_timers();
        ctx.out.effects.push(Effect::LoadTicket);
    }

    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let c = &mut ctx.stats.counters;
        c.connected += 1;
        c.connections += 1;
        let took = ctx.now_us.saturating_sub(self.request_sent_us);
        ctx.stats.latencies.record(Latency::Connect, took);
        self.last_read = ctx.now;
        self.last_write = ctx.now;
        self.next_msg_id = 0;
        match self.ticket.take() {
            Some(ticket) => self.send_fast_connect(ctx, *ticket),
            None => self.send_handshake(ctx),
        }
    }

    fn send_fast_connect(&mut self, ctx: &mut Ctx<'_>, ticket: ClientTicket) {
        let msg = FastConnect {
            session_id: ticket.session_id,
            device_id: ctx.cfg.device_id.render(self.index.into()),
            min_heartbeat: ctx.cfg.min_heartbeat,
            max_heartbeat: ctx.cfg.max_heartbeat,
        };
        let id = self.next_id();
        ctx.out.raw(&msg, id, Flags::NONE);
        // The seed client switches to the ticket's cipher once FastConnect is sent.
        self.set_cipher(Some(ticket.cipher));
        self.await_reply(ctx, Phase::ExpectFastConnectOk);
    }

    fn send_handshake(&mut self, ctx: &mut Ctx<'_>) {
        let mut client_key = [0u8; KEY_LEN];
        let mut iv = [0u8; KEY_LEN];
        ctx.rng.fill_bytes(&mut client_key);
        ctx.rng.fill_bytes(&mut iv);
        let msg = Handshake {
            device_id: ctx.cfg.device_id.render(self.index.into()),
            os_name: ctx.cfg.os_name.clone(),
            os_version: ctx.cfg.os_version.clone(),
            client_version: ctx.cfg.client_version.clone(),
            iv,
            client_key,
            min_heartbeat: ctx.cfg.min_heartbeat,
            max_heartbeat: ctx.cfg.max_heartbeat,
            timestamp: ctx.wall_ms,
        };
        // "send" with the RSA cipher: deflate above the threshold, then RSA in
        // modulus-sized chunks, CRYPTO set.
        let mut encoder = Encoder::new(ctx.cfg.limits.compress_threshold);
        let (flags, plain) = encoder.plain_body(&msg, Flags::NONE);
        let sealed = ctx.cfg.rsa.encrypt(ctx.rng, plain);
        let id = self.next_id();
        encode_frame(
            &mut ctx.out.tx,
            Cmd::Handshake,
            flags.with(Flags::CRYPTO),
            id,
            &sealed,
        );
        self.set_cipher(Some(AesCipher::new(client_key, iv)));
        self.await_reply(ctx, Phase::ExpectHandshakeOk);
    }

    fn await_reply(&mut self, ctx: &mut Ctx<'_>, phase: Phase) {
        self.phase = phase;
        self.last_write = ctx.now;
        self.request_sent_us = ctx.now_us;
        self.deadline = ctx.now.after(ctx.cfg.request_timeout_ms);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, id: MsgId, flags: Flags, msg: ServerMessage) {
        let took = ctx.now_us.saturating_sub(self.request_sent_us);
        match (self.phase, msg) {
            (Phase::ExpectHandshakeOk, ServerMessage::HandshakeOk(ok)) => {
                let Some(temp) = self.cipher.as_ref() else {
                    return self.fail_decode(ctx, DecodeError::NoCipher);
                };
                let session = AesCipher::new(mix_keys(temp.key(), &ok.server_key), *temp.iv());
                ctx.out.effects.push(Effect::SaveTicket(ClientTicket {
                    session_id: ok.session_id,
                    expire_time_ms: ok.expire_time,
                    cipher: session.clone(),
                }));
                self.set_cipher(Some(session));
                self.resumed = false;
                ctx.stats.counters.handshakes += 1;
                ctx.stats.latencies.record(Latency::Handshake, took);
                self.go_online(ctx, ok.heartbeat);
            }
            (Phase::ExpectFastConnectOk, ServerMessage::FastConnectOk(ok)) => {
                self.resumed = true;
                ctx.stats.counters.fast_connects += 1;
                ctx.stats.latencies.record(Latency::FastConnect, took);
                self.go_online(ctx, ok.heartbeat);
            }
            (Phase::ExpectFastConnectOk, ServerMessage::Error(e))
                if e.cmd == Cmd::FastConnect as u8
                    && matches!(
                        e.code,
                        ErrorCode::SESSION_EXPIRED | ErrorCode::INVALID_DEVICE
                    ) =>
            {
                // PROTOCOL.md 6.2: drop the ticket and handshake on the same connection.
                ctx.stats.counters.error(e.code.0);
                ctx.stats.counters.fast_connect_rejected += 1;
                ctx.out.effects.push(Effect::DeleteTicket);
                self.set_cipher(None);
                self.send_handshake(ctx);
            }
            (_, ServerMessage::Error(e)) if e.code == ErrorCode::REPEAT_HANDSHAKE => {
                ctx.stats.counters.error(e.code.0);
            }
            (Phase::Online, ServerMessage::Ok(ok)) if ok.cmd == Cmd::Bind as u8 && !self.bound => {
                self.bound = true;
                self.deadline = Tick::NEVER;
                ctx.stats.counters.bound += 1;
                ctx.stats.latencies.record(Latency::Bind, took);
            }
            (Phase::Online, ServerMessage::Push(push)) => {
                ctx.stats.counters.pushes_received += 1;
                let auto = flags.contains(Flags::AUTO_ACK);
                let biz = flags.contains(Flags::BIZ_ACK);
                if auto {
                    self.send_ack(ctx, id);
                }
                ctx.out.effects.push(Effect::Deliver(Delivery {
                    msg_id: id,
                    flags,
                    content: push.content,
                    ack_on_take: biz && !auto,
                }));
            }
            (_, ServerMessage::Kick(_)) => {
                ctx.stats.counters.kicks += 1;
                self.close(ctx, CloseReason::Kicked);
            }
            (Phase::Online, ServerMessage::Heartbeat) => self.handle_heartbeat(ctx),
            (phase, ServerMessage::Error(e)) => {
                ctx.stats.counters.error(e.code.0);
                // An error that answers what this device is waiting for ends the connection;
                // any other (for an unbind, a proxy request) is only counted.
                let waiting =
                    matches!(phase, Phase::ExpectFastConnectOk | Phase::ExpectHandshakeOk)
                        || (phase == Phase::Online && !self.bound && e.cmd == Cmd::Bind as u8);
                if waiting {
                    self.close(
                        ctx,
                        CloseReason::ServerError {
                            cmd: e.cmd,
                            code: e.code.0,
                        },
                    );
                }
            }
            (Phase::ExpectFastConnectOk | Phase::ExpectHandshakeOk, other) => {
                // Anything but the awaited reply means the peer does not speak this protocol.
                let cmd = server_cmd(&other);
                self.close(ctx, CloseReason::Unexpected(cmd));
            }
            // OK for other commands, HTTP responses, commands a client has no use for.
            _ => {}
        }
    }

    fn go_online(&mut self, ctx: &mut Ctx<'_>, heartbeat: i32) {
        let hb = u32::try_from(heartbeat).unwrap_or(0).max(MIN_HEARTBEAT_MS);
        self.phase = Phase::Online;
        self.heartbeat_ms = hb;
        self.reconnect_attempts = 0;
        self.missed_reads = 0;
        self.deadline = Tick::NEVER;
        self.read_check = ctx.now.after(hb);
        self.heartbeat_due = self.last_write.after(heartbeat_interval(hb));
        ctx.stats.counters.online += 1;
        if self.index_never_online() {
            ctx.stats.counters.ever_online += 1;
        }
        if ctx.cfg.bind {
            self.bind_tries = 0;
            self.send_bind(ctx);
        }
    }

    fn send_bind(&mut self, ctx: &mut Ctx<'_>) {
        let id = self.next_id();
        let Some(cipher) = self.cipher.as_ref() else {
            return;
        };
        let msg = Bind(UserBinding {
            user_id: ctx.cfg.user_id.render(self.index.into()),
            data: ctx.cfg.bind_data.clone(),
            tags: ctx.cfg.tags.clone(),
        });
        ctx.out.sealed(&msg, id, cipher);
        self.bind_tries += 1;
        self.last_write = ctx.now;
        self.request_sent_us = ctx.now_us;
        self.deadline = ctx.now.after(ctx.cfg.request_timeout_ms);
    }

    fn send_ack(&mut self, ctx: &mut Ctx<'_>, id: MsgId) {
        ctx.out.raw(&Ack, id, Flags::NONE);
        ctx.stats.counters.acks_sent += 1;
        self.last_write = ctx.now;
    }

    fn open(
        &self,
        frame: &Frame,
        opened: Option<Opened>,
        max: usize,
    ) -> Result<Bytes, DecodeError> {
        if frame.body.is_empty() || !frame.flags.contains(Flags::CRYPTO) {
            return finish_open(frame.flags, frame.body.clone(), max);
        }
        match opened {
            Some(o) if self.cipher.is_some() && o.generation == self.cipher_generation => {
                finish_decrypted(frame.flags, o.body?, max)
            }
            _ => open_body(frame, self.cipher.as_ref(), max),
        }
    }

    fn fail_decode(&mut self, ctx: &mut Ctx<'_>, e: DecodeError) {
        ctx.stats.counters.decode_errors += 1;
        self.close(ctx, CloseReason::Decode(e));
    }

    /// Gives the connection up: tells the shell, then reconnects later (or stays down after
    /// a kick, unless configured to reconnect).
    fn close(&mut self, ctx: &mut Ctx<'_>, reason: CloseReason) {
        let kicked = reason == CloseReason::Kicked;
        // A resumed session whose bind failed (ERROR, garbled reply, silence) points at a
        // ticket the server no longer matches: its key differs from the stored session's.
        // Drop it, or every reconnect would fast-connect into the same failure.
        let ticket_suspect = matches!(
            reason,
            CloseReason::ServerError { .. } | CloseReason::Decode(_) | CloseReason::RequestTimeout
        );
        if self.phase == Phase::Online && self.resumed && !self.bound && ticket_suspect {
            ctx.out.effects.push(Effect::DeleteTicket);
        }
        ctx.out.effects.push(Effect::Close(reason));
        self.connection_down(ctx);
        if kicked && !ctx.cfg.reconnect_on_kick {
            self.phase = Phase::Stopped;
            self.clear_timers();
        } else {
            self.schedule_reconnect(ctx);
        }
    }

    fn connection_down(&mut self, ctx: &mut Ctx<'_>) {
        if self.phase == Phase::Online {
            ctx.stats.counters.online -= 1;
        }
        if is_connected(self.phase) {
            ctx.stats.counters.connections -= 1;
        }
        self.set_cipher(None);
        self.bound = false;
        self.heartbeat_sent_us = 0;
    }

    fn schedule_reconnect(&mut self, ctx: &mut Ctx<'_>) {
        // Full jitter (uniform in 0..ceiling), ceiling doubling up to the cap: a server restart
        // spreads the fleet's reconnects instead of synchronising them.
        self.reconnect_attempts = self.reconnect_attempts.saturating_add(1);
        let shift = u32::from(self.reconnect_attempts.min(17) - 1);
        let ceiling = ctx
            .cfg
            .backoff_base_ms
            .saturating_mul(1 << shift)
            .min(ctx.cfg.backoff_cap_ms);
        let delay = ctx.rng.gen_range(0..=ceiling);
        ctx.stats.counters.reconnects += 1;
        self.phase = Phase::Backoff;
        self.clear_timers();
        self.deadline = ctx.now.after(delay);
    }

    fn clear_timers(&mut self) {
        self.deadline = Tick::NEVER;
        self.heartbeat_due = Tick::NEVER;
        self.read_check = Tick::NEVER;
    }

    fn set_cipher(&mut self, cipher: Option<AesCipher>) {
        self.cipher = cipher;
        self.cipher_generation = self.cipher_generation.wrapping_add(1);
    }

    fn next_id(&mut self) -> MsgId {
        self.next_msg_id = self.next_msg_id.wrapping_add(1);
        MsgId(self.next_msg_id)
    }

    /// Whether this is the device's first time online (for the `ever_online` counter).
    fn index_never_online(&mut self) -> bool {
        let first = !self.was_online;
        self.was_online = true;
        first
    }
}

fn is_connected(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::ExpectFastConnectOk | Phase::ExpectHandshakeOk | Phase::Online
    )
}

fn server_cmd(msg: &ServerMessage) -> u8 {
    match msg {
        ServerMessage::Heartbeat => Cmd::Heartbeat as u8,
        ServerMessage::HandshakeOk(_) => Cmd::Handshake as u8,
        ServerMessage::FastConnectOk(_) => Cmd::FastConnect as u8,
        ServerMessage::Ok(_) => Cmd::Ok as u8,
        ServerMessage::Error(_) => Cmd::Error as u8,
        ServerMessage::Push(_) => Cmd::Push as u8,
        ServerMessage::Kick(_) => Cmd::Kick as u8,
        ServerMessage::HttpResponse(_) => Cmd::HttpProxy as u8,
        ServerMessage::Other(cmd) => *cmd,
    }
}
