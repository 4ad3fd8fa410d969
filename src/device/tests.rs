//! Device scenarios against a scripted server, in simulated time: no sockets, no clock.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::crypto::{mix_keys, AesCipher, RsaDecryptor};
use crate::proto::message::*;
use crate::proto::pipeline::{open_body, Encoder};
use crate::proto::{Cmd, Frame, FrameDecoder, Unit};

const WALL: i64 = 1_700_000_000_000;

/// One device, the shard-side state it is driven with, and a scripted server. Every input
/// is followed by the polls in the documented order; what they give is kept for the test.
struct Script {
    device: Device,
    sh: Shared,
    tx: Transmit,
    /// Simulated monotonic ms.
    ms: u64,
    /// What the device wrote, sealed, not yet read by the test.
    wire: BytesMut,
    effects: Vec<Effect>,
    rsa: RsaDecryptor,
    /// What the scripted server believes the connection cipher is.
    server_cipher: Option<AesCipher>,
}

impl Script {
    fn new() -> Self {
        Self::with_cfg(|_| {})
    }

    fn with_cfg(f: impl FnOnce(&mut DeviceConfig)) -> Self {
        let mut cfg = DeviceConfig {
            min_heartbeat: 10_000,
            max_heartbeat: 10_000,
            ..Default::default()
        };
        f(&mut cfg);
        Self {
            device: Device::new(7),
            sh: Shared::new(Arc::new(cfg), 1),
            tx: Transmit::new(10_240),
            ms: 1_000,
            wire: BytesMut::new(),
            effects: Vec::new(),
            rsa: RsaDecryptor::mpush_default(),
            server_cipher: None,
        }
    }

    fn now(&self) -> Now {
        Now::at_ms(self.ms, WALL)
    }

    /// One input, then the polls.
    fn input(&mut self, f: impl FnOnce(&mut Device, Now, &mut Shared)) {
        let now = self.now();
        f(&mut self.device, now, &mut self.sh);
        while self.device.poll_transmit(now, &mut self.sh, &mut self.tx) {}
        self.tx.seal_inline_into(&mut self.wire);
        if let Some(t) = self.device.poll_timeout() {
            assert!(
                t > now.tick(),
                "deadline {t:?} not after now {:?}",
                now.tick()
            );
        }
        while let Some(e) = self.device.poll_effect() {
            self.effects.push(e);
        }
    }

    fn event(&mut self, ev: Event) {
        self.input(|d, now, sh| d.handle_event(now, sh, ev));
    }

    fn heartbeat_in(&mut self) {
        self.input(|d, now, sh| d.handle_heartbeat(now, sh));
    }

    fn frame_in(&mut self, frame: Frame) {
        self.input(|d, now, sh| d.handle_frame(now, sh, frame));
    }

    fn effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Advances simulated time to `t`, firing the device's deadlines in order.
    fn run_until(&mut self, t: u64) {
        while let Some(due) = self.device.poll_timeout() {
            if due.0 > t {
                break;
            }
            self.ms = due.0;
            self.input(|d, now, sh| d.handle_timeout(now, sh));
        }
        self.ms = t;
    }

    /// Frames the device wrote since the last call (heartbeat bytes come back as `None`).
    fn sent(&mut self) -> Vec<Option<Frame>> {
        let mut units = Vec::new();
        while let Some(u) = FrameDecoder::new(1 << 20).decode(&mut self.wire).unwrap() {
            units.push(match u {
                Unit::Heartbeat => None,
                Unit::Frame(f) => Some(f),
            });
        }
        assert!(self.wire.is_empty());
        units
    }

    fn sent_frame(&mut self) -> Frame {
        let mut sent = self.sent();
        assert_eq!(sent.len(), 1, "expected one frame, got {sent:?}");
        sent.pop().unwrap().expect("a frame, not a heartbeat")
    }

    /// The wire form of `msg` from the scripted server ("send" with its cipher, or raw).
    fn server_frame<M: Message>(&self, msg: &M, id: i32, flags: Flags, encrypted: bool) -> Frame {
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
        frame
    }

    fn server_sends<M: Message>(&mut self, msg: &M, id: i32, flags: Flags, encrypted: bool) {
        let frame = self.server_frame(msg, id, flags, encrypted);
        self.frame_in(frame);
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
        assert_eq!(hs.timestamp, self.now().wall_ms);
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

    /// Handshake and bind: the session is up.
    fn online(&mut self) {
        self.handshake(10_000);
        self.effects();
        self.expect_bind_and_ok();
    }
}

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
    let c = &s.sh.stats.counters;
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
    let c = &s.sh.stats.counters;
    assert_eq!((c.fast_connects, c.handshakes), (1, 0));
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
        assert_eq!(s.sh.stats.counters.fast_connect_rejected, 1);
        assert_eq!(s.sh.stats.counters.errors[&code.0], 1);
    }
}

#[test]
fn heartbeats_are_sent_before_the_period_ends_and_echoes_keep_the_session() {
    let mut s = Script::new();
    s.online();
    let start = s.ms;
    for period in 1..=5u64 {
        s.run_until(start + period * 10_000);
        let sent = s.sent();
        assert_eq!(sent, vec![None], "one heartbeat in period {period}");
        s.heartbeat_in();
    }
    assert_eq!(s.device.phase(), Phase::Online);
    assert_eq!(s.sh.stats.counters.heartbeats_sent, 5);
    let rtt =
        s.sh.stats
            .latencies
            .get(crate::stats::Latency::HeartbeatRtt);
    assert_eq!(rtt.len(), 5);
}

#[test]
fn two_silent_read_checks_close_and_schedule_a_reconnect() {
    let mut s = Script::new();
    s.online();
    let start = s.ms;
    // Nothing is read from now on: the first check finds 10 s (not over 11 s), the second
    // 20 s, the third 30 s -> two consecutive misses.
    s.run_until(start + 30_000);
    let effects = s.effects();
    assert_eq!(effects, vec![Effect::Close(CloseReason::ReadTimeout)]);
    assert_eq!(s.device.phase(), Phase::Backoff);
    let c = &s.sh.stats.counters;
    assert_eq!((c.read_timeouts, c.online, c.connections), (1, 0, 0));
    // The backoff ends with a new ticket lookup: every reconnect tries fast connect first.
    let due = s.device.poll_timeout().expect("backoff deadline");
    assert!(due.0 <= s.ms + u64::from(s.sh.cfg.backoff_base_ms));
    s.run_until(due.0);
    assert_eq!(s.effects(), vec![Effect::LoadTicket]);
}

#[test]
fn auto_ack_pushes_are_acked_at_once_and_biz_ack_only_after_the_sink_took_them() {
    let mut s = Script::new();
    s.online();
    let content = Bytes::from_static(b"{\"hello\":1}");
    let push = Push {
        content: content.clone(),
    };
    s.server_sends(&push, 77, Flags::AUTO_ACK, true);
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

    s.server_sends(&push, 78, Flags::BIZ_ACK, true);
    assert!(s.sent().is_empty(), "no ack before the sink took it");
    let effects = s.effects();
    let [Effect::Deliver(d)] = &effects[..] else {
        panic!("{effects:?}")
    };
    assert!(d.ack_on_take);
    s.event(Event::SinkTook(MsgId(78)));
    let ack = s.sent_frame();
    assert_eq!((ack.cmd, ack.msg_id), (Cmd::Ack as u8, MsgId(78)));
    let c = &s.sh.stats.counters;
    assert_eq!((c.pushes_received, c.acks_sent), (2, 2));
}

#[test]
fn compress_on_raw_content_loses_the_push_not_the_session() {
    // The real server copies a gateway push's COMPRESS flag onto content it never deflated
    // (PROTOCOL.md 8.3): the frame is whole and decrypts, only its content fails to inflate.
    let mut s = Script::new();
    s.online();
    let push = Push {
        content: Bytes::from_static(b"{\"content\":\"probe 21\"}"),
    };
    let broken = s.server_frame(&push, 1024, Flags::COMPRESS.with(Flags::AUTO_ACK), true);
    assert_eq!(
        broken.flags,
        Flags(0x0B),
        "CRYPTO|COMPRESS|AUTO_ACK, as live"
    );
    s.frame_in(broken);
    assert!(s.sent().is_empty(), "not acked");
    assert_eq!(s.effects(), vec![], "handed to no sink, no close");
    let c = &s.sh.stats.counters;
    assert_eq!((c.push_decode_errors, c.decode_errors), (1, 0));
    assert_eq!((c.pushes_received, c.reconnects), (0, 0));
    assert_eq!(s.device.phase(), Phase::Online);
    // The session carries on: the next push is delivered and acked.
    s.server_sends(&push, 1025, Flags::AUTO_ACK, true);
    assert_eq!(s.sent_frame().msg_id, MsgId(1025));
    assert!(matches!(&s.effects()[..], [Effect::Deliver(_)]));
}

#[test]
fn a_kick_ends_the_device_unless_told_to_reconnect() {
    let kick = Kick {
        device_id: "device-7".into(),
        user_id: "user-7".into(),
    };
    let mut s = Script::new();
    s.online();
    s.server_sends(&kick, 0, Flags::NONE, true);
    assert_eq!(s.effects(), vec![Effect::Close(CloseReason::Kicked)]);
    assert_eq!(s.device.phase(), Phase::Stopped);
    assert_eq!(s.device.poll_timeout(), None);

    let mut s = Script::with_cfg(|c| c.reconnect_on_kick = true);
    s.handshake(10_000);
    s.effects();
    s.server_sends(&kick, 0, Flags::NONE, true);
    assert_eq!(s.device.phase(), Phase::Backoff);
}

#[test]
fn garbage_closes_this_connection_with_a_decode_error() {
    let mut s = Script::new();
    s.online();
    s.frame_in(Frame {
        cmd: Cmd::Push as u8,
        flags: Flags::CRYPTO,
        msg_id: MsgId(1),
        body: Bytes::from_static(&[1; 17]),
    });
    let effects = s.effects();
    assert!(
        matches!(&effects[..], [Effect::Close(CloseReason::Decode(_))]),
        "{effects:?}"
    );
    assert_eq!(s.sh.stats.counters.decode_errors, 1);
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
    let e = err.clone();
    s.input(|d, now, sh| d.handle_stream_error(now, sh, e));
    assert_eq!(s.effects(), vec![Effect::Close(CloseReason::Decode(err))]);
    assert_eq!(
        (s.device.phase(), s.sh.stats.counters.decode_errors),
        (Phase::Backoff, 1)
    );
    // Not connected any more: a second report is stale and changes nothing.
    s.input(|d, now, sh| d.handle_stream_error(now, sh, DecodeError::NegativeLength(-1)));
    assert!(s.effects().is_empty());
}

#[test]
fn a_silent_server_times_the_request_out() {
    let mut s = Script::new();
    s.connect(None);
    s.sent();
    let timeout = u64::from(s.sh.cfg.request_timeout_ms);
    s.run_until(s.ms + timeout - 1);
    assert_eq!(s.effects(), vec![], "not before the request timeout");
    s.run_until(s.ms + 1);
    assert_eq!(
        s.effects(),
        vec![Effect::Close(CloseReason::RequestTimeout)]
    );
    assert_eq!(s.sh.stats.counters.request_timeouts, 1);
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
        ..err
    };
    s.server_sends(&err, bind.msg_id.0, Flags::NONE, false);
    assert_eq!(
        s.effects(),
        vec![Effect::Close(CloseReason::ServerError { cmd: 5, code: 1 })]
    );
}

#[test]
fn backoff_ceiling_doubles_up_to_the_cap() {
    let mut s = Script::with_cfg(|c| {
        c.backoff_base_ms = 100;
        c.backoff_cap_ms = 1_000;
    });
    s.event(Event::Start);
    for attempt in 1..=8u32 {
        assert_eq!(s.effects(), vec![Effect::LoadTicket]);
        s.event(Event::Ticket(None));
        s.effects();
        s.event(Event::ConnectFailed);
        let delay = s.device.poll_timeout().unwrap().0 - s.ms;
        let ceiling = (100u64 << (attempt - 1)).min(1_000);
        assert!(delay <= ceiling, "attempt {attempt}: {delay} > {ceiling}");
        s.run_until(s.ms + delay);
    }
    assert_eq!(s.sh.stats.counters.connect_failures, 8);
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
        s.sh.stats.counters.peer_closed, 0,
        "a close after stop is stale"
    );
}

#[test]
fn a_push_behind_the_handshake_ok_in_one_read_opens_with_the_session_key() {
    // Replaces the old batch-generation test: the device decrypts every frame itself, with
    // the cipher its state holds when the frame is handled.
    let mut s = Script::new();
    s.connect(None);
    let frame = s.sent_frame();
    let hs = Handshake::decode_body(Bytes::from(s.rsa.decrypt(&frame.body).unwrap())).unwrap();
    s.server_cipher = Some(AesCipher::new(hs.client_key, hs.iv));
    let ok = HandshakeOk {
        server_key: [0x11; 16],
        heartbeat: 10_000,
        session_id: "s".into(),
        expire_time: 1_800_000_000_000,
    };
    let ok = s.server_frame(&ok, 1, Flags::NONE, true);
    s.server_cipher = Some(AesCipher::new(mix_keys(&hs.client_key, &[0x11; 16]), hs.iv));
    let push = Push {
        content: Bytes::from_static(b"p"),
    };
    let push = s.server_frame(&push, 5, Flags::NONE, true);
    s.frame_in(ok);
    s.frame_in(push);
    let effects = s.effects();
    let [Effect::SaveTicket(_), Effect::Deliver(d)] = &effects[..] else {
        panic!("{effects:?}")
    };
    assert_eq!(&d.content[..], b"p");
}

#[test]
fn delivered_contents_stay_intact_while_later_pushes_are_decrypted() {
    // Bodies are decrypted into a buffer shared by the shard's devices: a content the sink
    // still holds must not be overwritten by the next push.
    let mut s = Script::new();
    s.online();
    let mut held = Vec::new();
    let mut wire_refs = Vec::new();
    for i in 0..300u32 {
        let content = Bytes::from(format!("push number {i} {}", "x".repeat(i as usize % 50)));
        let push = Push {
            content: content.clone(),
        };
        let frame = s.server_frame(&push, i as i32, Flags::NONE, true);
        // Every other body stays shared (as with a read buffer still in use), so both the
        // in-place path and the arena path are exercised.
        if i % 2 == 0 {
            wire_refs.push(frame.body.clone());
        }
        s.frame_in(frame);
        let Some(Effect::Deliver(d)) = s.effects().pop() else {
            panic!()
        };
        held.push((content, d.content));
    }
    for (want, got) in &held {
        assert_eq!(want, got);
    }
}

#[test]
fn deadlines_past_2_pow_32_ms_keep_moving() {
    // The u32 Tick saturated after 49.7 days and the shard loop spun; a u64 one must not.
    let mut s = Script::new();
    s.ms = (1u64 << 32) - 10_000;
    s.online();
    let end = s.ms + 3_600_000;
    let mut beats = 0;
    while let Some(due) = s.device.poll_timeout() {
        if due.0 > end {
            break;
        }
        s.ms = due.0;
        // `input` asserts every deadline is after now once the timeout is handled.
        s.input(|d, now, sh| d.handle_timeout(now, sh));
        for unit in s.sent() {
            assert_eq!(unit, None, "only heartbeats");
            beats += 1;
            s.heartbeat_in();
        }
    }
    assert_eq!(s.device.phase(), Phase::Online);
    assert!(s.ms > 1 << 32);
    // A heartbeat every 9 s for an hour.
    assert_eq!(beats, 3_600_000 / 9_000);
}

#[test]
fn tick_and_now_arithmetic() {
    assert_eq!(Tick(5).after(u64::MAX), Tick(u64::MAX - 1));
    assert!(Tick(5).after(u64::MAX) < Tick::NEVER);
    assert_eq!(Tick(5).since(Tick(9)), 0);
    let now = Now::at_ms(1 << 33, WALL);
    assert_eq!(now.tick(), Tick(1 << 33));
    assert_eq!(now.wall_ms, WALL + (1 << 33));
}

#[test]
fn a_device_is_small() {
    // Cost per idle session is the product: keep an eye on it. 168 bytes today (104 with
    // u32 time and output in the caller): u64 time (3 instants, 4 deadlines: +40) and the
    // output held inline until polled (one delivery, two acks: +52), so a push costs no heap.
    let size = std::mem::size_of::<Device>();
    assert!(size <= 176, "{size}");
}
