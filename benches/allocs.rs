//! Heap allocations of the shard core per heartbeat round trip and per push, counted by a
//! counting global allocator while the core (devices included) works, over the simulated
//! network (`mpush_fleet::sim`): the server side and the simulated driver are not counted.
//!
//! `cargo bench --bench allocs`. Targets: 0 per heartbeat round trip, 0 per small AUTO_ACK
//! push without a sink; the bench exits non-zero and says so when a target is missed. A push
//! through a sink is reported, not targeted (the driver renders its ids for the sink record).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use mpush_fleet::device::DeviceConfig;
use mpush_fleet::proto::Flags;
use mpush_fleet::server::SessionConfig;
use mpush_fleet::shard::core::CoreConfig;
use mpush_fleet::sim::{Sim, SimConfig};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCS.fetch_add(1, Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCS.fetch_add(1, Relaxed);
        }
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn guard(on: bool) {
    COUNTING.store(on, Relaxed);
}

fn sim(devices: u32, sink: bool) -> Sim {
    let server = SessionConfig {
        min_heartbeat_ms: 1_000,
        max_heartbeat_ms: 1_000,
        ..SessionConfig::default()
    };
    let core = CoreConfig {
        first_device: 0,
        devices,
        rate_per_sec: 0.0,
        servers: vec!["127.0.0.1:3000".parse().expect("address")],
        sources: Vec::new(),
        device: Arc::new(DeviceConfig {
            min_heartbeat: 1_000,
            max_heartbeat: 1_000,
            ..DeviceConfig::default()
        }),
        seed: 11,
        sink,
        drain_timeout_ms: 10_000,
        admission: Default::default(),
        plan: Default::default(),
        upstream: Default::default(),
    };
    let cfg = SimConfig {
        server: Arc::new(server),
        ..SimConfig::default()
    };
    let mut sim = Sim::new(core, cfg);
    let online = sim.run_until(600_000, |s| {
        s.core.stats().counters.bound >= u64::from(devices)
    });
    assert!(online, "the fleet came online");
    sim.run_for(30_000); // warm every buffer
    sim.core_guard = Some(guard);
    sim
}

/// Counts allocations while `f` runs the sim; returns (allocations, units of work).
fn count(sim: &mut Sim, f: impl FnOnce(&mut Sim) -> u64) -> (u64, u64) {
    ALLOCS.store(0, Relaxed);
    let units = f(sim);
    (ALLOCS.load(Relaxed), units)
}

fn push_round(s: &mut Sim, devices: u32, round: u64) {
    for i in 0..devices {
        let _ = s.push(&format!("user-{i}"), b"small push", Flags::AUTO_ACK);
    }
    s.run_for(50 + round);
}

fn main() {
    let devices = 100;
    let mut missed = Vec::new();

    let mut s = sim(devices, false);
    let (allocs, beats) = count(&mut s, |s| {
        let before = s.core.stats().counters.heartbeats_received;
        s.run_for(60_000);
        s.core.stats().counters.heartbeats_received - before
    });
    let per_beat = allocs as f64 / beats as f64;
    println!("heartbeat round trips: {beats}, core allocations: {allocs} ({per_beat:.4} each)");
    if allocs != 0 {
        missed.push(format!(
            "{allocs} allocations over {beats} heartbeat round trips (target 0)"
        ));
    }

    // One uncounted round first: a turn with 100 pushes grows queues a turn of heartbeats
    // never filled (a one-time cost, not a per-push one).
    push_round(&mut s, devices, 0);
    let (allocs, pushes) = count(&mut s, |s| {
        let before = s.core.stats().counters.pushes_received;
        for round in 0..50 {
            push_round(s, devices, round);
        }
        s.run_for(1_000);
        s.core.stats().counters.pushes_received - before
    });
    println!(
        "AUTO_ACK pushes (no sink): {pushes}, core allocations: {allocs} ({:.4} each)",
        allocs as f64 / pushes as f64
    );
    if allocs != 0 {
        missed.push(format!(
            "{allocs} allocations over {pushes} pushes (target 0)"
        ));
    }

    let mut s = sim(devices, true);
    let (allocs, pushes) = count(&mut s, |s| {
        let before = s.core.stats().counters.pushes_received;
        for i in 0..devices {
            let _ = s.push(&format!("user-{i}"), b"small push", Flags::BIZ_ACK);
        }
        s.run_for(100);
        let n = s.sink.len();
        s.sink_take(n);
        s.run_for(1_000);
        s.core.stats().counters.pushes_received - before
    });
    println!(
        "BIZ_ACK pushes through the sink queue: {pushes}, core allocations: {allocs} ({:.4} each)",
        allocs as f64 / pushes as f64
    );

    if !missed.is_empty() {
        eprintln!("allocs bench missed its targets: {}", missed.join("; "));
        std::process::exit(1);
    }
}
