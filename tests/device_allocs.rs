//! Zero heap allocations on the device's hot paths once buffers are warm: a heartbeat round
//! trip and a small AUTO_ACK push, driven through the public API as a shard drives it. Its
//! own test binary, so the counting allocator affects nothing else.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use mpush_fleet::crypto::{mix_keys, AesCipher, RsaDecryptor};
use mpush_fleet::device::{Device, DeviceConfig, Effect, Event, Now, Phase, Shared, Transmit};
use mpush_fleet::proto::message::{Handshake, HandshakeOk, Message, OkReply, Push};
use mpush_fleet::proto::pipeline::Encoder;
use mpush_fleet::proto::{Cmd, Flags, Frame, FrameDecoder, MsgId, Unit};

/// Counts allocations (not frees) made by the current thread, so tests running in parallel
/// threads do not see each other's.
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the slot may be gone while the thread is being torn down.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

const WALL: i64 = 1_764_115_200_000;

/// One device online behind a scripted server, and the shard-side buffers.
struct Rig {
    device: Device,
    sh: Shared,
    tx: Transmit,
    out: BytesMut,
    ms: u64,
    server: AesCipher,
}

impl Rig {
    fn now(&self) -> Now {
        Now::at_ms(self.ms, WALL)
    }

    /// The polls after an input: bytes into `out`, effects returned through `on_effect`.
    fn poll(&mut self, mut on_effect: impl FnMut(Effect)) {
        let now = self.now();
        while self.device.poll_transmit(now, &mut self.sh, &mut self.tx) {}
        self.tx.seal_inline_into(&mut self.out);
        let _ = self.device.poll_timeout();
        while let Some(e) = self.device.poll_effect() {
            on_effect(e);
        }
    }

    fn take_frame(&mut self) -> Frame {
        match FrameDecoder::new(1 << 20).decode(&mut self.out).unwrap() {
            Some(Unit::Frame(f)) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// A frame from the server, its body uniquely owned (its wire buffer is dropped).
    fn server_frame<M: Message>(
        msg: &M,
        id: i32,
        flags: Flags,
        cipher: Option<&AesCipher>,
    ) -> Frame {
        let mut wire = BytesMut::new();
        Encoder::default().write(&mut wire, msg, MsgId(id), flags, cipher);
        match FrameDecoder::default().decode(&mut wire).unwrap() {
            Some(Unit::Frame(f)) => f,
            _ => panic!("no frame"),
        }
    }

    fn feed(&mut self, frame: Frame) {
        let now = self.now();
        self.device.handle_frame(now, &mut self.sh, frame);
        self.poll(drop);
    }

    /// Start, connect, handshake and bind.
    fn online() -> Self {
        let cfg = DeviceConfig {
            min_heartbeat: 10_000,
            max_heartbeat: 10_000,
            ..Default::default()
        };
        let mut rig = Rig {
            device: Device::new(3),
            sh: Shared::new(Arc::new(cfg), 9),
            tx: Transmit::new(10_240),
            out: BytesMut::with_capacity(4096),
            ms: 1_000,
            server: AesCipher::new([0; 16], [0; 16]),
        };
        for ev in [Event::Start, Event::Ticket(None), Event::Connected] {
            let now = rig.now();
            rig.device.handle_event(now, &mut rig.sh, ev);
            rig.poll(drop);
        }
        let hs = rig.take_frame();
        let plain = RsaDecryptor::mpush_default().decrypt(&hs.body).unwrap();
        let hs_body = Handshake::decode_body(Bytes::from(plain)).unwrap();
        let temp = AesCipher::new(hs_body.client_key, hs_body.iv);
        let ok = HandshakeOk {
            server_key: [0x42; 16],
            heartbeat: 10_000,
            session_id: "s".into(),
            expire_time: i64::MAX,
        };
        rig.feed(Self::server_frame(
            &ok,
            hs.msg_id.0,
            Flags::NONE,
            Some(&temp),
        ));
        rig.server = AesCipher::new(mix_keys(&hs_body.client_key, &[0x42; 16]), hs_body.iv);
        let bind = rig.take_frame();
        assert_eq!(bind.cmd, Cmd::Bind as u8);
        let ok = OkReply {
            cmd: Cmd::Bind as u8,
            code: 0,
            data: String::new(),
        };
        rig.feed(Self::server_frame(&ok, bind.msg_id.0, Flags::NONE, None));
        assert!(rig.device.is_bound());
        assert!(rig.out.is_empty());
        rig
    }

    /// Fires deadlines until one heartbeat went out, then echoes it 20 ms later.
    fn heartbeat_round_trip(&mut self) {
        loop {
            let due = self.device.poll_timeout().expect("online: a deadline");
            self.ms = due.0;
            let now = self.now();
            self.device.handle_timeout(now, &mut self.sh);
            self.poll(|e| panic!("unexpected {e:?}"));
            if !self.out.is_empty() {
                break;
            }
        }
        assert_eq!(&self.out[..], &[0xDF]);
        self.out.clear();
        self.ms += 20;
        let now = self.now();
        self.device.handle_heartbeat(now, &mut self.sh);
        self.poll(|e| panic!("unexpected {e:?}"));
    }

    /// One AUTO_ACK push in, its ack out, its delivery taken and dropped.
    fn push(&mut self, frame: Frame) {
        let id = frame.msg_id;
        let now = self.now();
        self.device.handle_frame(now, &mut self.sh, frame);
        let mut delivered = false;
        self.poll(|e| match e {
            Effect::Deliver(d) => {
                // black_box: the content escapes, so no allocation can be elided.
                let d = std::hint::black_box(d);
                assert_eq!(&d.content[..12], b"small push #");
                delivered = true;
            }
            e => panic!("unexpected {e:?}"),
        });
        assert!(delivered);
        // An ack: a 13-byte header with the push's id and no body.
        assert_eq!(self.out.len(), 13);
        assert_eq!(self.out[4], Cmd::Ack as u8);
        assert_eq!(&self.out[8..12], &id.0.to_be_bytes());
        self.out.clear();
    }
}

fn pushes(rig: &Rig, n: usize) -> Vec<Frame> {
    (0..n)
        .map(|i| {
            let push = Push {
                content: Bytes::from(format!("small push #{i}")),
            };
            Rig::server_frame(&push, 1_000 + i as i32, Flags::AUTO_ACK, Some(&rig.server))
        })
        .collect()
}

#[test]
fn heartbeat_round_trips_allocate_nothing() {
    let mut rig = Rig::online();
    for _ in 0..10 {
        rig.heartbeat_round_trip();
    }
    let n = allocations(|| {
        for _ in 0..1_000 {
            rig.heartbeat_round_trip();
        }
    });
    assert_eq!(n, 0, "allocations over 1,000 heartbeat round trips");
    assert_eq!(rig.device.phase(), Phase::Online);
    assert_eq!(rig.sh.stats.counters.heartbeats_sent, 1_010);
}

#[test]
fn small_auto_ack_pushes_allocate_nothing() {
    let mut rig = Rig::online();
    for frame in pushes(&rig, 10) {
        rig.push(frame);
    }
    // Enough pushes to use the receive arena up and reclaim it more than once.
    let frames = pushes(&rig, 2_000);
    assert!(frames.iter().all(|f| f.body.is_unique()));
    let n = allocations(|| {
        for frame in frames {
            rig.push(frame);
        }
    });
    assert_eq!(n, 0, "allocations over 2,000 pushes");
    assert_eq!(rig.sh.stats.counters.acks_sent, 2_010);
}

#[test]
fn pushes_cut_from_a_shared_read_buffer_allocate_nothing_either() {
    // A body still sharing the shell's read buffer cannot be decrypted in place: it is
    // decrypted into the shard's receive arena instead, also without allocating.
    let mut rig = Rig::online();
    let mut read_buf = BytesMut::with_capacity(1 << 20);
    for i in 0..2_010 {
        let push = Push {
            content: Bytes::from(format!("small push #{i}")),
        };
        let id = MsgId(1_000 + i);
        Encoder::default().write(&mut read_buf, &push, id, Flags::AUTO_ACK, Some(&rig.server));
    }
    let mut frames = Vec::new();
    while let Some(Unit::Frame(f)) = FrameDecoder::default().decode(&mut read_buf).unwrap() {
        frames.push(f);
    }
    assert!(frames.iter().all(|f| !f.body.is_unique()));
    let rest = frames.split_off(10);
    for frame in frames {
        rig.push(frame);
    }
    let n = allocations(|| {
        for frame in rest {
            rig.push(frame);
        }
    });
    assert_eq!(n, 0, "allocations over 2,000 pushes");
    drop(read_buf);
}

#[test]
fn the_counter_counts() {
    let n = allocations(|| {
        std::hint::black_box(vec![1u8; 10]);
    });
    assert_eq!(n, 1);
}
