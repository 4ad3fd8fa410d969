//! Overload without collapse, in simulated time: a server that can take C handshakes per
//! second, offered more; a server that stops answering and recovers.

use std::sync::Arc;

use super::*;
use crate::device::DeviceConfig;
use crate::shard::core::Admission;

const LIMIT_MS: u64 = 3_600_000;

fn fleet(devices: u32, rate: f64) -> CoreConfig {
    CoreConfig {
        rate_per_sec: rate,
        device: Arc::new(DeviceConfig::default()),
        seed: 5,
        admission: Admission {
            max_pending: 256,
            ..Admission::default()
        },
        ..scenario(devices)
    }
}

/// Runs until every device is bound; returns the ms at which the handshake count crossed
/// each of `marks`.
fn ramp(sim: &mut Sim, devices: u32, marks: &[u64]) -> Vec<u64> {
    let mut at = Vec::new();
    for &m in marks {
        assert!(
            sim.run_until(LIMIT_MS, |s| s.core.stats().counters.handshakes >= m),
            "{:?}",
            sim.core.stats().counters
        );
        at.push(sim.now_ms());
    }
    let all = u64::from(devices);
    assert!(sim.run_until(LIMIT_MS, |s| s.core.stats().counters.bound >= all));
    at
}

fn offered(times_capacity: f64) {
    let (capacity, devices) = (100.0, 2_000);
    let mut sim = Sim::new(
        fleet(devices, capacity * times_capacity),
        SimConfig::default(),
    );
    sim.limit_server(capacity, 0.0);
    let marks = ramp(&mut sim, devices, &[200, 1_800]);
    let c = sim.core.stats().counters.clone();
    assert!(
        c.connects as f64 <= 1.05 * f64::from(devices),
        "{times_capacity}x: {} connects for {devices} devices: {c:?}",
        c.connects
    );
    assert_eq!((c.online, c.request_timeouts), (2_000, 0), "{c:?}");
    // Goodput in the steady part (handshakes 200 to 1,800): at least 90% of capacity.
    let secs = (marks[1] - marks[0]) as f64 / 1000.0;
    let goodput = 1_600.0 / secs;
    assert!(
        goodput >= 0.9 * capacity,
        "{times_capacity}x: goodput {goodput:.1}/s"
    );
    // The server, not the fleet, set the pace: starts waited for the window.
    let waited = sim
        .core
        .stats()
        .latencies
        .get(crate::stats::Latency::WindowWait)
        .len();
    assert!(waited > 0, "nobody waited for the window");
}

#[test]
fn a_fleet_offered_twice_the_server_capacity_runs_at_it() {
    offered(2.0);
}

#[test]
fn a_fleet_offered_ten_times_the_server_capacity_runs_at_it() {
    offered(10.0);
}

/// Without a window, 10x the capacity with a 3 s request timeout collapses into timeouts and
/// reconnects: the failure the window exists for.
#[test]
fn without_a_window_the_same_overload_times_out() {
    let mut cfg = fleet(2_000, 1_000.0);
    cfg.admission = Admission::unlimited();
    cfg.device = Arc::new(DeviceConfig {
        request_timeout_ms: 3_000,
        ..DeviceConfig::default()
    });
    let mut sim = Sim::new(cfg, SimConfig::default());
    sim.limit_server(100.0, 0.0);
    sim.run_for(30_000);
    let c = &sim.core.stats().counters;
    assert!(c.request_timeouts > 0, "{c:?}");
}

/// A server that stops answering for 30 s and recovers: reconnects are bounded by the
/// budget (the tokens on hand, what sessions earned, and the floor), then all come back.
#[test]
fn an_outage_sees_no_more_retries_than_the_budget_allows() {
    let devices = 500;
    let mut cfg = fleet(devices, 0.0);
    cfg.device = Arc::new(DeviceConfig {
        request_timeout_ms: 3_000,
        min_heartbeat: 5_000,
        max_heartbeat: 5_000,
        ..DeviceConfig::default()
    });
    let server = SessionConfig {
        min_heartbeat_ms: 5_000,
        max_heartbeat_ms: 5_000,
        ..SessionConfig::default()
    };
    let sim_cfg = SimConfig {
        server: Arc::new(server),
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg, sim_cfg);
    assert!(sim.run_until(LIMIT_MS, |s| s.core.stats().counters.bound >= 500));
    let before = sim.core.stats().counters.connects;
    let throttled_before = sim.core.stats().counters.retries_throttled;
    let outage_ms = 30_000;
    let until = sim.now_ms() + outage_ms;
    sim.stall_server_until(until);
    sim.run_until(LIMIT_MS, |s| s.now_ms() >= until);
    let c = sim.core.stats().counters.clone();
    let retries = c.connects - before;
    // Tokens: at most 10 to start with plus 0.2 per session that came up (100), plus the floor
    // of 10/s over the outage (300).
    let budget = 10 + 100 + 10 * outage_ms / 1000;
    assert!(
        retries <= budget,
        "{retries} retries in the outage, budget {budget}: {c:?}"
    );
    assert!(c.retries_throttled > throttled_before, "{c:?}");
    assert!(sim.run_until(LIMIT_MS, |s| s.core.stats().counters.online == 500));
}
