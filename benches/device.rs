//! Heartbeats over 100,000 devices, no sockets: the device state machine alone, driven as a
//! shard drives it (one `Shared`, one `Transmit` for all devices; every input followed by the polls).
//!
//! Every device is brought online by a fast connect with a ticket (Start, Ticket, Connected,
//! FastConnectOk) and bound (OK to its Bind), with connects spread over a second. One bench
//! iteration is one heartbeat period (180 s) for the whole fleet: for each device, every
//! deadline in the period fires at its tick through `handle_timeout` (the heartbeat, then the
//! read check), and each heartbeat byte sent is echoed 20 ms later through
//! `handle_heartbeat`. Throughput is per device-heartbeat.
//!
//! Memory: `size_of::<Device>()`, and the bytes per idle online device that building the
//! fleet left allocated (the `Vec<Device>` plus any heap a device holds), from a counting
//! global allocator.
//!
//! `cargo bench --bench device -- --warm-up-time 1 --measurement-time 3`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mpush_fleet::crypto::AesCipher;
use mpush_fleet::device::{Device, DeviceConfig, Event, Now, Phase, Shared, Tick, Transmit};
use mpush_fleet::proto::message::{Message, OkReply};
use mpush_fleet::proto::{encode_frame, Cmd, Flags, FrameDecoder, MsgId, Unit};
use mpush_fleet::tickets::format::ClientTicket;
use rand::Rng;

const DEVICES: u32 = 100_000;
const HEARTBEAT_MS: i32 = 180_000;
const ECHO_MS: u64 = 20;
const WALL_BASE_MS: i64 = 1_764_115_200_000;

/// Counts live heap bytes, to measure what the fleet keeps allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The shard side: everything a device call needs except the device.
struct Shard {
    sh: Shared,
    tx: Transmit,
    out: BytesMut,
}

impl Shard {
    /// One input at `now`, then the polls a shell makes after every input: the bytes go to
    /// "the socket" (`out`, cleared by the caller), the effects are dropped.
    fn call(
        &mut self,
        device: &mut Device,
        now: Tick,
        f: impl FnOnce(&mut Device, Now, &mut Shared),
    ) {
        let now = Now::at_ms(now.0, WALL_BASE_MS);
        f(device, now, &mut self.sh);
        while device.poll_transmit(now, &mut self.sh, &mut self.tx) {}
        self.tx.seal_inline_into(&mut self.out);
        while device.poll_effect().is_some() {}
    }
}

fn server_frame<M: Message>(msg: &M, id: i32) -> mpush_fleet::proto::Frame {
    let mut body = BytesMut::new();
    msg.encode_body(&mut body);
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, M::CMD, Flags::NONE, MsgId(id), &body);
    match FrameDecoder::default().decode(&mut wire) {
        Ok(Some(Unit::Frame(f))) => f,
        other => panic!("bench set-up: expected a frame, got {other:?}"),
    }
}

/// Builds the fleet online and bound: device `i` connects at tick `1000 + i % 1000`.
fn build_fleet(shard: &mut Shard) -> Vec<Device> {
    let mut fast_ok_body = BytesMut::new();
    fast_ok_body.put_i32(HEARTBEAT_MS);
    let mut wire = BytesMut::new();
    encode_frame(
        &mut wire,
        Cmd::FastConnect,
        Flags::NONE,
        MsgId(1),
        &fast_ok_body,
    );
    let fast_ok = match FrameDecoder::default().decode(&mut wire) {
        Ok(Some(Unit::Frame(f))) => f,
        other => panic!("bench set-up: expected a frame, got {other:?}"),
    };
    let bind_ok = server_frame(
        &OkReply {
            cmd: Cmd::Bind as u8,
            code: 0,
            data: "bind success".into(),
        },
        2,
    );
    let mut devices = Vec::with_capacity(DEVICES as usize);
    for i in 0..DEVICES {
        let mut d = Device::new(i);
        let now = Tick(1_000 + u64::from(i % 1_000));
        let ticket = ClientTicket {
            session_id: format!("{i:032x}"),
            expire_time_ms: WALL_BASE_MS + 86_400_000,
            cipher: AesCipher::new(shard.sh.rng.gen(), shard.sh.rng.gen()),
        };
        for ev in [Event::Start, Event::Ticket(Some(ticket)), Event::Connected] {
            shard.call(&mut d, now, |d, now, sh| d.handle_event(now, sh, ev));
        }
        shard.call(&mut d, now, |d, now, sh| {
            d.handle_frame(now, sh, fast_ok.clone())
        });
        shard.call(&mut d, now, |d, now, sh| {
            d.handle_frame(now, sh, bind_ok.clone())
        });
        shard.out.clear();
        devices.push(d);
    }
    devices
}

/// One heartbeat period for the fleet, ending at `end`: fires every deadline up to `end` and
/// echoes each heartbeat. Returns (handle_timeout calls, heartbeats sent).
fn heartbeat_period(shard: &mut Shard, devices: &mut [Device], end: Tick) -> (u64, u64) {
    let mut timeouts = 0;
    let mut beats = 0;
    for d in devices.iter_mut() {
        while let Some(due) = d.poll_timeout().filter(|&t| t <= end) {
            shard.call(d, due, |d, now, sh| d.handle_timeout(now, sh));
            timeouts += 1;
            let sent = !shard.out.is_empty();
            shard.out.clear();
            if sent {
                beats += 1;
                shard.call(d, due.after(ECHO_MS), |d, now, sh| {
                    d.handle_heartbeat(now, sh)
                });
            }
        }
    }
    (timeouts, beats)
}

fn heartbeats(c: &mut Criterion) {
    let cfg = DeviceConfig {
        min_heartbeat: HEARTBEAT_MS,
        max_heartbeat: HEARTBEAT_MS,
        ..Default::default()
    };
    let mut shard = Shard {
        sh: Shared::new(Arc::new(cfg), 1),
        tx: Transmit::new(10 * 1024),
        out: BytesMut::with_capacity(4096),
    };
    let live_before = LIVE.load(Ordering::Relaxed);
    let mut devices = build_fleet(&mut shard);
    let live_after = LIVE.load(Ordering::Relaxed);
    let online = devices
        .iter()
        .filter(|d| d.phase() == Phase::Online)
        .count();
    let bound = devices.iter().filter(|d| d.is_bound()).count();
    let size = std::mem::size_of::<Device>();
    let per_device = (live_after - live_before) as f64 / f64::from(DEVICES);
    eprintln!(
        "device: size_of::<Device>() = {size} B; {online} online, {bound} bound of {DEVICES}; \
         fleet left {} B allocated = {per_device:.1} B per idle online device \
         (Vec capacity {} x {size} B)",
        live_after - live_before,
        devices.capacity(),
    );

    // Periods end on the heartbeat grid; the first ends once every device's first heartbeat
    // (connect + 179 s) and read check (connect + 180 s) are due.
    let mut end = Tick(2_000 + HEARTBEAT_MS as u64);
    let (t, b) = heartbeat_period(&mut shard, &mut devices, end);
    eprintln!("device: first period: {t} handle_timeout calls, {b} heartbeats");

    let mut g = c.benchmark_group("device_fleet");
    g.throughput(Throughput::Elements(u64::from(DEVICES)));
    g.sample_size(10);
    g.bench_function("heartbeat_period_100k", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                end = end.after(HEARTBEAT_MS as u64);
                let start = Instant::now();
                black_box(heartbeat_period(&mut shard, &mut devices, end));
                took += start.elapsed();
            }
            took
        })
    });
    g.finish();
    let still_online = devices
        .iter()
        .filter(|d| d.phase() == Phase::Online)
        .count();
    let c = &shard.sh.stats.counters;
    eprintln!(
        "device: after the bench: {still_online} online; {} heartbeats sent, {} received, \
         {} read timeouts",
        c.heartbeats_sent, c.heartbeats_received, c.read_timeouts
    );
}

criterion_group!(benches, heartbeats);
criterion_main!(benches);
