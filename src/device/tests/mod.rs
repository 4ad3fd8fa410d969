//! Device scenarios against a scripted server, in simulated time: no sockets, no clock.
//!
//! Here: the [`Script`] every scenario drives. The scenarios, by topic: `tickets` (handshake
//! and fast connect), `liveness` (heartbeats, timeouts, backoff, kicks, stop), `pushes`
//! (acks, undecodable content), `bad_input` (garbage, error replies), `time_and_size`.

mod bad_input;
mod liveness;
mod pushes;
mod tickets;
mod time_and_size;

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
