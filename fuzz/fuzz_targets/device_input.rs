//! Fuzzes a `Device` with arbitrary server bytes, time steps and shell events, the harness
//! playing the shell (it answers ticket loads and connects at once). Nothing may panic, and
//! after every call the shard's gauges must match the device's phase, a live device must have
//! a deadline (without one it would hang forever), and a fired deadline must move on.
//!
//! The device is brought online by a fast connect with a ticket (Start, Ticket(Some),
//! Connected, a raw FastConnectOk), so the fuzzer starts in the interesting state.
//!
//! Input layout:
//! - byte 0: configuration. Bit 0: bind after connecting; bit 1: reconnect after a kick;
//!   bit 2: small limits (256 B bodies, 1 KiB inflated); bit 3: the store loses the ticket
//!   once online (reconnects handshake, at most twice per input: RSA is slow under the
//!   fuzzer); bit 4: the shell hands frames over with uniquely owned bodies (copied out of
//!   its read buffer), so the device decrypts them in place instead of into its arena. The
//!   store keeps what the device saves and forgets what it deletes.
//! - byte 1: the FastConnectOk heartbeat, one of [`HEARTBEATS`] (low 3 bits).
//! - then ops: `0x00..=0x7F` feeds the next `op + 1` bytes as one read from the server;
//!   `0x80..=0xBF` advances the clock by `((op & 0x3F) + 1) * 250` ms, firing deadlines;
//!   `0xC0..=0xFF` is a shell event by `op & 0x07`: Closed, ConnectFailed, SinkTook (the
//!   oldest pending push), Stop, a 200 s jump, owned bodies on/off, Start,
//!   SinkTook(arbitrary).
//!
//! Every input is followed by the polls, in the documented order (transmit, timeout,
//! effects), as the device's contract requires.

#![no_main]

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mpush_fleet::crypto::{AesCipher, RsaDecryptor, RsaEncryptor};
use mpush_fleet::device::{
    Device, DeviceConfig, Effect, Event, Now, Phase, Shared, Tick, Transmit,
};
use mpush_fleet::proto::{encode_frame, BodyLimits, Cmd, Flags, FrameDecoder, MsgId, Unit};
use mpush_fleet::stats::Counters;
use mpush_fleet::tickets::format::ClientTicket;
use rand::rngs::StdRng;
use rand::SeedableRng;

const HEARTBEATS: [i32; 8] = [180_000, 10_000, 1_500, 0, -5, 3_000, i32::MAX, 100];
const WALL_BASE_MS: i64 = 1_764_115_200_000;

/// One configuration per combination of the first byte's low 3 bits: parsing the RSA key
/// once, not per input.
fn configs() -> &'static [Arc<DeviceConfig>] {
    static CONFIGS: OnceLock<Vec<Arc<DeviceConfig>>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        // A 512-bit key: the handshake's RSA is the crypto module's to fuzz, and at 1024 bits
        // its bignum loops (traced compares) cost more than everything else in an input.
        let rsa = RsaDecryptor::generate(&mut StdRng::seed_from_u64(512), 512)
            .map(|k| k.encryptor())
            .unwrap_or_else(|_| RsaEncryptor::mpush_default());
        (0u8..8)
            .map(|bits| {
                Arc::new(DeviceConfig {
                    bind: bits & 1 != 0,
                    reconnect_on_kick: bits & 2 != 0,
                    limits: if bits & 4 != 0 {
                        BodyLimits {
                            max_body: 256,
                            compress_threshold: 128,
                            max_inflated: 1024,
                        }
                    } else {
                        BodyLimits::default()
                    },
                    min_heartbeat: 10_000,
                    max_heartbeat: 180_000,
                    rsa: rsa.clone(),
                    ..Default::default()
                })
            })
            .collect()
    })
}

/// The session cipher of `shared/vectors/frames.json`, so the golden encrypted frames open.
fn ticket() -> ClientTicket {
    ClientTicket {
        session_id: "0123456789abcdef0123456789abcdef".into(),
        expire_time_ms: WALL_BASE_MS + 30 * 24 * 3600 * 1000,
        cipher: AesCipher::new(
            [
                0xf4, 0x07, 0x00, 0x7f, 0x80, 0x21, 0xff, 0x5a, 0x05, 0xb3, 0x40, 0x01, 0xdf, 0x12,
                0x64, 0xfb,
            ],
            [
                0x03, 0xf7, 0x2c, 0x9c, 0x00, 0x0f, 0x10, 0x80, 0x7f, 0x08, 0xff, 0x02, 0x4d, 0xbe,
                0x09, 0x1e,
            ],
        ),
    }
}

fn is_connected(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::ExpectFastConnectOk | Phase::ExpectHandshakeOk | Phase::Online
    )
}

/// The device and everything the shell keeps for it.
struct Shell {
    device: Device,
    sh: Shared,
    tx: Transmit,
    wire: BytesMut,
    now: Tick,
    rx: BytesMut,
    decoder: FrameDecoder,
    socket_open: bool,
    /// The ticket store's entry for this device.
    stored: Option<ClientTicket>,
    /// Loads that may still find nothing: each costs an RSA handshake, so after two the
    /// store "recovers" and answers with the fixed ticket.
    handshakes_left: u8,
    own_bodies: bool,
    pending_sink: Vec<MsgId>,
}

impl Shell {
    /// `sh` comes from the previous input, reset: building the HDR histograms anew for every
    /// input would cost more than running it.
    fn new(cfg: &Arc<DeviceConfig>, conf: u8, sh: Option<Shared>) -> Self {
        let mut sh = sh.unwrap_or_else(|| Shared::new(cfg.clone(), 0));
        sh.cfg = cfg.clone();
        sh.rng = StdRng::seed_from_u64(u64::from(conf));
        sh.stats.counters = Counters::default();
        Self {
            device: Device::new(42),
            tx: Transmit::new(cfg.limits.compress_threshold),
            wire: BytesMut::new(),
            sh,
            now: Tick(1_000),
            rx: BytesMut::new(),
            decoder: FrameDecoder::new(cfg.limits.max_body),
            socket_open: false,
            stored: Some(ticket()),
            handshakes_left: 2,
            own_bodies: conf & 0x10 != 0,
            pending_sink: Vec::new(),
        }
    }

    /// Runs one device input, the polls, then plays the shell's part until the device is
    /// quiet.
    fn call(&mut self, f: impl FnOnce(&mut Device, Now, &mut Shared)) {
        let now = Now::at_ms(self.now.0, WALL_BASE_MS);
        f(&mut self.device, now, &mut self.sh);
        self.check();
        while self.device.poll_transmit(now, &mut self.sh, &mut self.tx) {}
        assert!(self.tx.is_empty() || self.tx.seal_count() <= 1);
        self.tx.seal_inline_into(&mut self.wire);
        assert!(self.tx.is_empty());
        self.wire.clear();
        // At most a handful of effects per input; collected first, as answering one feeds
        // the device again.
        let mut effects = Vec::new();
        while let Some(e) = self.device.poll_effect() {
            effects.push(e);
        }
        assert!(effects.len() <= 3, "{effects:?}");
        for effect in effects {
            match effect {
                Effect::LoadTicket => {
                    let t = match self.stored.clone() {
                        None if self.handshakes_left > 0 => {
                            self.handshakes_left -= 1;
                            None
                        }
                        None => Some(ticket()),
                        found => found,
                    };
                    self.event(Event::Ticket(t));
                }
                Effect::Connect => {
                    self.socket_open = true;
                    self.rx.clear();
                    self.event(Event::Connected);
                }
                Effect::Close(_) => {
                    self.socket_open = false;
                    self.rx.clear();
                }
                Effect::Deliver(d) => {
                    if d.ack_on_take {
                        self.pending_sink.push(d.msg_id);
                    }
                }
                Effect::SaveTicket(t) => self.stored = Some(t),
                Effect::DeleteTicket => self.stored = None,
                // This target starts no upstream requests (the sim tests cover them).
                Effect::Upstream(_) => {}
            }
        }
    }

    fn event(&mut self, ev: Event) {
        self.call(|d, now, sh| d.handle_event(now, sh, ev));
    }

    fn check(&self) {
        let phase = self.device.phase();
        let c = &self.sh.stats.counters;
        assert_eq!(c.connections, i64::from(is_connected(phase)), "{phase:?}");
        assert_eq!(c.online, i64::from(phase == Phase::Online), "{phase:?}");
        if is_connected(phase) || phase == Phase::Backoff {
            assert!(
                self.device.poll_timeout().is_some(),
                "{phase:?} without a deadline"
            );
        }
    }

    /// Advances the clock to `t`, firing deadlines in order as the shard's wheel would.
    fn run_until(&mut self, t: Tick) {
        while let Some(due) = self.device.poll_timeout() {
            if due > t {
                break;
            }
            self.now = self.now.max(due);
            let before = self.device.phase();
            self.call(|d, now, sh| d.handle_timeout(now, sh));
            // A deadline that stays due without a change of phase would spin the wheel.
            if let Some(next) = self.device.poll_timeout() {
                assert!(
                    next > self.now || self.device.phase() != before,
                    "{before:?}: deadline {next:?} still due at {:?}",
                    self.now
                );
            }
        }
        self.now = self.now.max(t);
    }

    /// One read from the server: decode whole units and hand them over.
    fn read(&mut self, bytes: &[u8]) {
        if !self.socket_open {
            return;
        }
        self.rx.extend_from_slice(bytes);
        while self.socket_open {
            match self.decoder.decode(&mut self.rx) {
                Ok(None) => break,
                Ok(Some(Unit::Heartbeat)) => self.call(|d, now, sh| d.handle_heartbeat(now, sh)),
                Ok(Some(Unit::Frame(mut frame))) => {
                    if self.own_bodies {
                        frame.body = Bytes::copy_from_slice(&frame.body);
                    }
                    self.call(|d, now, sh| d.handle_frame(now, sh, frame));
                }
                Err(_) => {
                    // The stream cannot be resynchronised: the shell drops the connection.
                    self.socket_open = false;
                    self.rx.clear();
                    self.event(Event::Closed);
                }
            }
        }
    }

    /// Start, a ticket, a connect and a FastConnectOk: online.
    fn bring_online(&mut self, heartbeat: i32) {
        self.event(Event::Start);
        assert_eq!(self.device.phase(), Phase::ExpectFastConnectOk);
        let mut wire = BytesMut::new();
        let mut body = BytesMut::new();
        body.put_i32(heartbeat);
        encode_frame(&mut wire, Cmd::FastConnect, Flags::NONE, MsgId(1), &body);
        self.read(&wire);
        assert_eq!(self.device.phase(), Phase::Online);
    }
}

fuzz_target!(|data: &[u8]| {
    let [conf, hb, ops @ ..] = data else {
        return;
    };
    thread_local! {
        static SHARED: RefCell<Option<Shared>> = const { RefCell::new(None) };
    }
    let sh = SHARED.with(|s| s.borrow_mut().take());
    let mut shell = Shell::new(&configs()[usize::from(conf & 0x07)], *conf, sh);
    shell.bring_online(HEARTBEATS[usize::from(hb & 0x07)]);
    if conf & 0x08 != 0 {
        shell.stored = None;
    }
    let mut i = 0;
    while i < ops.len() {
        let op = ops[i];
        i += 1;
        match op {
            0x00..=0x7F => {
                let end = (i + usize::from(op) + 1).min(ops.len());
                shell.read(&ops[i..end]);
                i = end;
            }
            0x80..=0xBF => {
                let t = shell.now.after((u64::from(op & 0x3F) + 1) * 250);
                shell.run_until(t);
            }
            _ => match op & 0x07 {
                0 => {
                    shell.socket_open = false;
                    shell.rx.clear();
                    shell.event(Event::Closed);
                }
                1 => shell.event(Event::ConnectFailed),
                2 => {
                    if !shell.pending_sink.is_empty() {
                        let id = shell.pending_sink.remove(0);
                        shell.event(Event::SinkTook(id));
                    }
                }
                3 => shell.event(Event::Stop),
                4 => {
                    let t = shell.now.after(200_000);
                    shell.run_until(t);
                }
                5 => shell.own_bodies = !shell.own_bodies,
                6 => shell.event(Event::Start),
                _ => shell.event(Event::SinkTook(MsgId(i32::from(op)))),
            },
        }
    }
    SHARED.with(|s| *s.borrow_mut() = Some(shell.sh));
});
