//! Device scenarios against a scripted server, in simulated time: no sockets, no clock.

use bytes::{Bytes, BytesMut};
use rand::SeedableRng;

use super::*;
use crate::crypto::RsaDecryptor;
use crate::proto::message::*;
use crate::proto::pipeline::{open_body, Encoder};
use crate::proto::{Cmd, Frame, FrameDecoder, Unit};

/// One device, its shard-side context and a scripted server.
struct Script {
    device: Device,
    cfg: DeviceConfig,
    rng: StdRng,
    out: Output,
    stats: ShardStats,
    now: Tick,
    rsa: RsaDecryptor,
    /// What the scripted server believes the connection cipher is.
    server_cipher: Option<AesCipher>,
}

impl Script {
    fn new() -> Self {
        let cfg = DeviceConfig {
            min_heartbeat: 10_000,
            max_heartbeat: 10_000,
            ..Default::default()
        };
        Self {
            device: Device::new(7),
            cfg,
            rng: StdRng::seed_from_u64(1),
            out: Output::new(10_240),
            stats: ShardStats::default(),
            now: Tick(1_000),
            rsa: RsaDecryptor::mpush_default(),
            server_cipher: None,
        }
    }

    fn with<R>(&mut self, f: impl FnOnce(&mut Device, &mut Ctx<'_>) -> R) -> R {
        let mut ctx = Ctx {
            now: self.now,
            now_us: u64::from(self.now.0) * 1000,
            wall_ms: 1_700_000_000_000 + i64::from(self.now.0),
            cfg: &self.cfg,
            rng: &mut self.rng,
            out: &mut self.out,
            stats: &mut self.stats,
        };
        f(&mut self.device, &mut ctx)
    }

    fn event(&mut self, ev: Event) {
        self.with(|d, ctx| d.handle_event(ctx, ev));
    }

    fn effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out.effects)
    }

    /// Advances simulated time to `t`, firing the device's deadlines in order.
    fn run_until(&mut self, t: u32) {
        while let Some(due) = self.device.poll_timeout() {
            if due.0 > t {
                break;
            }
            self.now = due;
            self.with(|d, ctx| d.handle_timeout(ctx));
        }
        self.now = Tick(t);
    }

    /// Frames the device wrote since the last call (heartbeat bytes come back as `None`).
    fn sent(&mut self) -> Vec<Option<Frame>> {
        self.out.seal_inline();
        let mut tx = self.out.tx.split();
        let mut units = Vec::new();
        while let Some(u) = FrameDecoder::new(1 << 20).decode(&mut tx).unwrap() {
            units.push(match u {
                Unit::Heartbeat => None,
                Unit::Frame(f) => Some(f),
            });
        }
        assert!(tx.is_empty());
        units
    }

    fn sent_frame(&mut self) -> Frame {
        let mut sent = self.sent();
        assert_eq!(sent.len(), 1, "expected one frame, got {sent:?}");
        sent.pop().unwrap().expect("a frame, not a heartbeat")
    }

    /// The scripted server sends `msg` ("send" with its cipher, or raw).
    fn server_sends<M: Message>(&mut self, msg: &M, id: i32, flags: Flags, encrypted: bool) {
        let mut wire = BytesMut::new();
        let cipher = if encrypted {
            self.server_cipher.clone()
        } else {
            None
        };
        Encoder::default().write(&mut wire, msg, MsgId(id), flags, cipher.as_ref());
        let Some(Unit::Frame(frame)) = FrameDecoder::default().decode(&mut wire).unwrap() else {
            panic!("no frame")
        };
        self.with(|d, ctx| d.handle_frame(ctx, frame, None));
    }

    /// Start to connected, with the ticket store answering `ticket`.
    fn connect(&mut self, ticket: Option<ClientTicket>) {
        if self.device.phase() == Phase::Idle {
            self.event(Event::Start);
        }
        assert_eq!(self.effects(), vec![Effect::LoadTicket]);
        self.event(Event::Ticket(ticket));
        assert_eq!(self.effects(), vec![Effect::Connect]);
        self.event(Event::Connected);
    }

    /// Plays the server's side of a handshake; returns the HandshakeOk sent.
    fn handshake(&mut self, heartbeat: i32) -> HandshakeOk {
        self.connect(None);
        let frame = self.sent_frame();
        assert_eq!(frame.cmd, Cmd::Handshake as u8);
        assert_eq!(frame.flags, Flags::CRYPTO);
        let plain = self.rsa.decrypt(&frame.body).expect("RSA body");
        let hs = Handshake::decode_body(Bytes::from(plain)).unwrap();
        assert_eq!(hs.device_id, "device-7");
        assert_eq!((hs.min_heartbeat, hs.max_heartbeat), (10_000, 10_000));
        self.server_cipher = Some(AesCipher::new(hs.client_key, hs.iv));
        let ok = HandshakeOk {
            server_key: [0x5A; 16],
            heartbeat,
            session_id: "s-1".into(),
            expire_time: 1_800_000_000_000,
        };
        self.server_sends(&ok, frame.msg_id.0, Flags::NONE, true);
        self.server_cipher = Some(AesCipher::new(
            mix_keys(&hs.client_key, &ok.server_key),
            hs.iv,
        ));
        ok
    }

    fn expect_bind_and_ok(&mut self) {
        let frame = self.sent_frame();
        assert_eq!(frame.cmd, Cmd::Bind as u8);
        assert_eq!(frame.flags, Flags::CRYPTO);
        let body = open_body(&frame, self.server_cipher.as_ref(), 1 << 20).unwrap();
        let bind = Bind::decode_body(body).unwrap();
        assert_eq!(bind.0.user_id, "user-7");
        let ok = OkReply {
            cmd: Cmd::Bind as u8,
            code: 0,
            data: "bind success".into(),
        };
        self.server_sends(&ok, frame.msg_id.0, Flags::NONE, false);
        assert!(self.device.is_bound());
    }
}

use crate::crypto::mix_keys;

#[test]
fn handshake_saves_a_ticket_then_binds() {
    let mut s = Script::new();
    let ok = s.handshake(10_000);
    let effects = s.effects();
    let [Effect::SaveTicket(ticket)] = &effects[..] else {
        panic!("{effects:?}")
    };
    assert_eq!(ticket.session_id, ok.session_id);
    assert_eq!(ticket.expire_time_ms, ok.expire_time);
    assert_eq!(Some(&ticket.cipher), s.server_cipher.as_ref());
    assert_eq!(s.device.phase(), Phase::Online);
    s.expect_bind_and_ok();
    let c = &s.stats.counters;
    assert_eq!(
        (
            c.handshakes,
            c.bound,
            c.online,
            c.connections,
            c.ever_online
        ),
        (1, 1, 1, 1, 1)
    );
}

fn ticket(expire_time_ms: i64) -> ClientTicket {
    ClientTicket {
        session_id: "resume-me".into(),
        expire_time_ms,
        cipher: AesCipher::new([3; 16], [4; 16]),
    }
}

#[test]
fn a_valid_ticket_fast_connects_and_switches_to_its_cipher() {
    let mut s = Script::new();
    s.connect(Some(ticket(i64::MAX)));
    let frame = s.sent_frame();
    assert_eq!(
        (frame.cmd, frame.flags),
        (Cmd::FastConnect as u8, Flags::NONE)
    );
    let fc = FastConnect::decode_body(frame.body).unwrap();
    assert_eq!(
        (fc.session_id.as_str(), fc.device_id.as_str()),
        ("resume-me", "device-7")
    );
    s.server_sends(
        &FastConnectOk { heartbeat: 10_000 },
        frame.msg_id.0,
        Flags::NONE,
        false,
    );
    assert_eq!(s.device.phase(), Phase::Online);
    s.server_cipher = Some(ticket(0).cipher);
    s.expect_bind_and_ok();
    assert_eq!(
        (s.stats.counters.fast_connects, s.stats.counters.handshakes),
        (1, 0)
    );
}

#[test]
fn a_resumed_session_whose_bind_fails_drops_its_ticket() {
    let mut s = Script::new();
    s.connect(Some(ticket(i64::MAX)));
    let frame = s.sent_frame();
    s.server_sends(
        &FastConnectOk { heartbeat: 10_000 },
        frame.msg_id.0,
        Flags::NONE,
        false,
    );
    let bind = s.sent_frame();
    // The server's stored session has another key: it cannot read the bind.
    let err = ErrorReply {
        cmd: Cmd::Bind as u8,
        code: ErrorCode::DISPATCH_ERROR,
        reason: "handle message error".into(),
        data: String::new(),
    };
    s.server_sends(&err, bind.msg_id.0, Flags::NONE, false);
    assert_eq!(
        s.effects(),
        vec![
            Effect::DeleteTicket,
            Effect::Close(CloseReason::ServerError { cmd: 5, code: 100 })
        ]
    );
}

#[test]
fn an_expired_ticket_is_not_used() {
    let mut s = Script::new();
    s.connect(Some(ticket(1)));
    assert_eq!(s.sent_frame().cmd, Cmd::Handshake as u8);
}

#[test]
fn fast_connect_refused_falls_back_to_a_handshake_on_the_same_connection() {
    for code in [ErrorCode::SESSION_EXPIRED, ErrorCode::INVALID_DEVICE] {
        let mut s = Script::new();
        s.connect(Some(ticket(i64::MAX)));
        let frame = s.sent_frame();
        let err = ErrorReply {
            cmd: Cmd::FastConnect as u8,
            code,
            reason: "no".into(),
            data: String::new(),
        };
        s.server_sends(&err, frame.msg_id.0, Flags::NONE, false);
        assert_eq!(s.effects(), vec![Effect::DeleteTicket]);
        let hs = s.sent_frame();
        assert_eq!((hs.cmd, hs.flags), (Cmd::Handshake as u8, Flags::CRYPTO));
        assert_eq!(s.device.phase(), Phase::ExpectHandshakeOk);
        assert_eq!(s.stats.counters.fast_connect_rejected, 1);
        assert_eq!(s.stats.counters.errors[&code.0], 1);
    }
}

#[test]
fn heartbeats_are_sent_before_the_period_ends_and_echoes_keep_the_session() {
    let mut s = Script::new();
    s.handshake(10_000);
    s.effects();
    s.expect_bind_and_ok();
    let start = s.now.0;
    for period in 1..=5u32 {
        s.run_until(start + period * 10_000);
        let sent = s.sent();
        assert_eq!(sent, vec![None], "one heartbeat in period {period}");
        s.with(|d, ctx| d.handle_heartbeat(ctx));
    }
    assert_eq!(s.device.phase(), Phase::Online);
    assert_eq!(s.stats.counters.heartbeats_sent, 5);
    assert_eq!(
        s.stats
            .latencies
            .get(crate::stats::Latency::HeartbeatRtt)
            .len(),
        5
    );
}

#[test]
fn two_silent_read_checks_close_and_schedule_a_reconnect() {
    let mut s = Script::new();
    s.handshake(10_000);
    s.effects();
    s.expect_bind_and_ok();
    let start = s.now.0;
    // Nothing is read from now on: the first check finds 10 s (not over 11 s), the second
    // 20 s, the third 30 s -> two consecutive misses.
    s.run_until(start + 30_000);
    let effects = s.effects();
    assert_eq!(effects, vec![Effect::Close(CloseReason::ReadTimeout)]);
    assert_eq!(s.device.phase(), Phase::Backoff);
    assert_eq!(s.stats.counters.read_timeouts, 1);
    assert_eq!(
        (s.stats.counters.online, s.stats.counters.connections),
        (0, 0)
    );
    // The backoff ends with a new ticket lookup: every reconnect tries fast connect first.
    let due = s.device.poll_timeout().expect("backoff deadline");
    assert!(due.0 <= s.now.0 + s.cfg.backoff_base_ms);
    s.run_until(due.0);
    assert_eq!(s.effects(), vec![Effect::LoadTicket]);
}

#[test]
fn auto_ack_pushes_are_acked_at_once_and_biz_ack_only_after_the_sink_took_them() {
    let mut s = Script::new();
    s.handshake(10_000);
    s.effects();
    s.expect_bind_and_ok();
    let content = Bytes::from_static(b"{\"hello\":1}");
    s.server_sends(
        &Push {
            content: content.clone(),
        },
        77,
        Flags::AUTO_ACK,
        true,
    );
    let ack = s.sent_frame();
    assert_eq!(
        (ack.cmd, ack.msg_id, ack.body.len()),
        (Cmd::Ack as u8, MsgId(77), 0)
    );
    let effects = s.effects();
    let [Effect::Deliver(d)] = &effects[..] else {
        panic!("{effects:?}")
    };
    assert_eq!((d.content.clone(), d.ack_on_take), (content.clone(), false));

    s.server_sends(
        &Push {
            content: content.clone(),
        },
        78,
        Flags::BIZ_ACK,
        true,
    );
    assert!(s.sent().is_empty(), "no ack before the sink took it");
    let effects = s.effects();
    let [Effect::Deliver(d)] = &effects[..] else {
        panic!("{effects:?}")
    };
    assert!(d.ack_on_take);
    s.event(Event::SinkTook(MsgId(78)));
    let ack = s.sent_frame();
    assert_eq!((ack.cmd, ack.msg_id), (Cmd::Ack as u8, MsgId(78)));
    assert_eq!(
        (s.stats.counters.pushes_received, s.stats.counters.acks_sent),
        (2, 2)
    );
}

#[test]
fn a_kick_ends_the_device_unless_told_to_reconnect() {
    let mut s = Script::new();
    s.handshake(10_000);
    s.effects();
    s.expect_bind_and_ok();
    let kick = Kick {
        device_id: "device-7".into(),
        user_id: "user-7".into(),
    };
    s.server_sends(&kick, 0, Flags::NONE, true);
    assert_eq!(s.effects(), vec![Effect::Close(CloseReason::Kicked)]);
    assert_eq!(s.device.phase(), Phase::Stopped);
    assert_eq!(s.device.poll_timeout(), None);

    let mut s = Script::new();
    s.cfg.reconnect_on_kick = true;
    s.handshake(10_000);
    s.effects();
    s.server_sends(&kick, 0, Flags::NONE, true);
    assert_eq!(s.device.phase(), Phase::Backoff);
}

#[test]
fn garbage_closes_this_connection_with_a_decode_error() {
    let mut s = Script::new();
    s.handshake(10_000);
    s.effects();
    s.expect_bind_and_ok();
    let frame = Frame {
        cmd: Cmd::Push as u8,
        flags: Flags::CRYPTO,
        msg_id: MsgId(1),
        body: Bytes::from_static(&[1; 17]),
    };
    s.with(|d, ctx| d.handle_frame(ctx, frame, None));
    let effects = s.effects();
    assert!(
        matches!(&effects[..], [Effect::Close(CloseReason::Decode(_))]),
        "{effects:?}"
    );
    assert_eq!(s.stats.counters.decode_errors, 1);
    assert_eq!(s.device.phase(), Phase::Backoff);
}

#[test]
fn an_undecodable_stream_gives_the_connection_up() {
    let mut s = Script::new();
    s.handshake(10_000);
    s.effects();
    // A header announcing a body over the limit: the stream cannot be resynchronised.
    let mut wire = BytesMut::from(&[0x7F, 0xFF, 0xFF, 0xFF, 15, 0, 0, 0, 0, 0, 0, 1, 0][..]);
    let err = FrameDecoder::default().decode(&mut wire).unwrap_err();
    s.with(|d, ctx| d.handle_stream_error(ctx, err.clone()));
    assert_eq!(s.effects(), vec![Effect::Close(CloseReason::Decode(err))]);
    assert_eq!(
        (s.device.phase(), s.stats.counters.decode_errors),
        (Phase::Backoff, 1)
    );
    // Not connected any more: a second report is stale and changes nothing.
    s.with(|d, ctx| d.handle_stream_error(ctx, DecodeError::NegativeLength(-1)));
    assert!(s.effects().is_empty());
}

#[test]
fn a_silent_server_times_the_request_out() {
    let mut s = Script::new();
    s.connect(None);
    s.sent();
    s.run_until(s.now.0 + 3_000);
    assert_eq!(
        s.effects(),
        vec![Effect::Close(CloseReason::RequestTimeout)]
    );
    assert_eq!(s.stats.counters.request_timeouts, 1);
}

#[test]
fn a_bind_error_closes_and_an_unrelated_error_is_only_counted() {
    let mut s = Script::new();
    s.handshake(10_000);
    s.effects();
    let bind = s.sent_frame();
    let err = ErrorReply {
        cmd: Cmd::Unbind as u8,
        code: ErrorCode(1),
        reason: String::new(),
        data: String::new(),
    };
    s.server_sends(&err, 9, Flags::NONE, false);
    assert!(s.effects().is_empty());
    let err = ErrorReply {
        cmd: Cmd::Bind as u8,
        code: ErrorCode(1),
        reason: String::new(),
        data: String::new(),
    };
    s.server_sends(&err, bind.msg_id.0, Flags::NONE, false);
    assert_eq!(
        s.effects(),
        vec![Effect::Close(CloseReason::ServerError { cmd: 5, code: 1 })]
    );
}

#[test]
fn backoff_ceiling_doubles_up_to_the_cap() {
    let mut s = Script::new();
    s.cfg.backoff_base_ms = 100;
    s.cfg.backoff_cap_ms = 1_000;
    s.event(Event::Start);
    for attempt in 1..=8u32 {
        assert_eq!(s.effects(), vec![Effect::LoadTicket]);
        s.event(Event::Ticket(None));
        s.effects();
        s.event(Event::ConnectFailed);
        let delay = s.device.poll_timeout().unwrap().0 - s.now.0;
        let ceiling = (100u32 << (attempt - 1)).min(1_000);
        assert!(delay <= ceiling, "attempt {attempt}: {delay} > {ceiling}");
        s.run_until(s.now.0 + delay);
    }
    assert_eq!(s.stats.counters.connect_failures, 8);
}

#[test]
fn stop_closes_and_stays_down() {
    let mut s = Script::new();
    s.handshake(10_000);
    s.effects();
    s.event(Event::Stop);
    assert_eq!(s.effects(), vec![Effect::Close(CloseReason::Stopped)]);
    assert_eq!(s.device.phase(), Phase::Stopped);
    assert_eq!(s.device.poll_timeout(), None);
    s.event(Event::Closed);
    assert_eq!(
        s.stats.counters.peer_closed, 0,
        "a close after stop is stale"
    );
}

#[test]
fn batch_opened_bodies_are_used_only_for_the_current_cipher() {
    let mut s = Script::new();
    s.handshake(10_000);
    s.effects();
    s.expect_bind_and_ok();
    let (cipher, generation) = {
        let (c, g) = s.device.cipher_for_open().unwrap();
        (c.clone(), g)
    };
    let mut wire = BytesMut::new();
    Encoder::default().write(
        &mut wire,
        &Push {
            content: Bytes::from_static(b"p"),
        },
        MsgId(5),
        Flags::NONE,
        Some(&cipher),
    );
    let Some(Unit::Frame(frame)) = FrameDecoder::default().decode(&mut wire).unwrap() else {
        panic!()
    };
    // A stale generation is ignored and the device opens the frame itself.
    let stale = Opened {
        generation: generation.wrapping_sub(1),
        body: Ok(Bytes::from_static(b"wrong")),
    };
    s.with(|d, ctx| d.handle_frame(ctx, frame.clone(), Some(stale)));
    let effects = s.effects();
    let [Effect::Deliver(d)] = &effects[..] else {
        panic!("{effects:?}")
    };
    assert_eq!(&d.content[..], b"p");
    let fresh = Opened {
        generation,
        body: Ok(Bytes::from_static(b"batched")),
    };
    s.with(|d, ctx| d.handle_frame(ctx, frame, Some(fresh)));
    let effects = s.effects();
    let [Effect::Deliver(d)] = &effects[..] else {
        panic!("{effects:?}")
    };
    assert_eq!(&d.content[..], b"batched");
}

#[test]
fn a_device_is_small() {
    // Cost per idle session is the product: keep an eye on it.
    assert!(
        std::mem::size_of::<Device>() <= 128,
        "{}",
        std::mem::size_of::<Device>()
    );
}
