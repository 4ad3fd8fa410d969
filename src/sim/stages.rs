//! Stages and `--rate auto` in simulated time: the capacity search against a server limited
//! to C sessions/s, and a plan's phases in order with each phase's figures.

use std::sync::Arc;

use super::*;
use crate::device::DeviceConfig;
use crate::stages::{plan, AutoConfig, PhaseStats, Plan};

const LIMIT_MS: u64 = 3_600_000;

fn fleet(devices: u32, plan: Plan) -> CoreConfig {
    CoreConfig {
        device: Arc::new(DeviceConfig::default()),
        seed: 11,
        plan,
        ..scenario(devices)
    }
}

fn staged(spec: &str) -> Plan {
    Plan {
        stages: plan::parse(spec).expect("a good spec"),
        stop_when_done: true,
        ..Plan::default()
    }
}

fn done(sim: &Sim) -> bool {
    sim.core.stats().stages.done()
}

fn phase<'a>(sim: &'a Sim, name: &str) -> &'a PhaseStats {
    sim.core.stats().stages.phase(name).expect("the phase")
}

/// The search against a server that completes `capacity` handshakes (or fast connects) a
/// second: what it found once the ramp of `devices` ended.
fn search(sim: &mut Sim, devices: u32) -> crate::stages::Capacity {
    assert!(
        sim.run_until(LIMIT_MS, done),
        "the ramp ends: {:?}",
        sim.core.stats().counters
    );
    let c = &sim.core.stats().counters;
    assert_eq!(c.ever_online, u64::from(devices), "{c:?}");
    assert_eq!(c.request_timeouts, 0, "{c:?}");
    sim.core.stats().stages.capacity.expect("the search ran")
}

#[test]
fn rate_auto_settles_within_a_fifth_of_the_server_handshake_capacity() {
    let (capacity, devices) = (50.0, 3_000);
    let mut sim = Sim::new(
        fleet(devices, Plan::auto_ramp(AutoConfig::default())),
        SimConfig::default(),
    );
    sim.limit_server(capacity, 0.0);
    let found = search(&mut sim, devices);
    let hs = found.handshake.expect("a handshake capacity");
    assert!(hs.saturated, "{found:?}");
    assert!(
        (hs.per_sec - capacity).abs() <= 0.2 * capacity,
        "found {:.1}/s for a server of {capacity}/s: {found:?}",
        hs.per_sec
    );
    assert!(hs.p99_ms <= found.p99_target_ms, "{found:?}");
    assert_eq!(found.fast_connect, None, "{found:?}");
}

#[test]
fn rate_auto_finds_the_fast_connect_capacity_apart() {
    let (capacity, devices) = (50.0, 3_000);
    // A first run saves every device's ticket; the second comes back by fast connect into
    // a server that handshakes at any rate but resumes only `capacity` sessions a second.
    let mut first = fleet(devices, Plan::default());
    first.rate_per_sec = 1_000.0;
    let mut sim = Sim::new(first, SimConfig::default());
    assert!(sim.run_until(LIMIT_MS, |s| s.core.stats().counters.bound
        >= u64::from(devices)));
    assert!(sim.restart(
        fleet(devices, Plan::auto_ramp(AutoConfig::default())),
        LIMIT_MS
    ));
    sim.limit_server(0.0, capacity);
    let found = search(&mut sim, devices);
    assert_eq!(sim.core.stats().counters.handshakes, 0, "all resumed");
    let fc = found.fast_connect.expect("a fast-connect capacity");
    assert!(fc.saturated, "{found:?}");
    assert!(
        (fc.per_sec - capacity).abs() <= 0.2 * capacity,
        "found {:.1}/s for a server of {capacity}/s: {found:?}",
        fc.per_sec
    );
}

#[test]
fn a_fleet_smaller_than_the_capacity_reports_a_floor_not_a_capacity() {
    let mut sim = Sim::new(
        fleet(300, Plan::auto_ramp(AutoConfig::default())),
        SimConfig::default(),
    );
    let found = search(&mut sim, 300);
    let hs = found.handshake.expect("a floor");
    assert!(
        !hs.saturated,
        "an unlimited server never saturated: {found:?}"
    );
    assert!(hs.per_sec > 0.0, "{found:?}");
}

#[test]
fn stages_run_in_order_and_each_phase_counts_its_own() {
    let devices = 200;
    let spec = "ramp:200@100,hold:2s,churn:10%/s:3s,hold:1s,storm,ramp-down:1s";
    let mut sim = Sim::new(fleet(devices, staged(spec)), SimConfig::default());
    let mut order = Vec::new();
    assert!(sim.run_until(LIMIT_MS, |s| {
        let st = &s.core.stats().stages;
        if order.last() != Some(&st.current) {
            order.push(st.current);
        }
        st.done()
    }));
    assert_eq!(order, [0, 1, 2, 3, 4, 5, 6], "in order, none skipped");
    let names: Vec<&str> = sim
        .core
        .stats()
        .stages
        .phases
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["ramp", "hold", "churn", "hold2", "storm", "ramp-down"]
    );
    assert!(sim
        .core
        .stats()
        .stages
        .phases
        .iter()
        .all(|p| p.ran && p.completed));

    let ramp = phase(&sim, "ramp");
    assert_eq!(
        (ramp.counts.handshakes, ramp.counts.fast_connects),
        (200, 0)
    );
    assert_eq!((ramp.online_at_end, ramp.counts.timeouts), (200, 0));
    assert_eq!(ramp.handshake.len(), 200);
    // 200 at 100/s: the last starts at 2 s.
    assert!(
        (2_000..2_500).contains(&ramp.duration_ms),
        "{}",
        ramp.duration_ms
    );

    let hold = phase(&sim, "hold");
    assert_eq!(
        (hold.counts.connects, hold.duration_ms, hold.online_at_end),
        (0, 2_000, 200)
    );

    // 10% of 200 a second for 3 s: 60 closes, each back by fast connect (some after the
    // phase ended, in the hold behind it).
    let churn = phase(&sim, "churn");
    let hold2 = phase(&sim, "hold2");
    assert_eq!((churn.counts.reconnects, churn.counts.handshakes), (60, 0));
    assert_eq!(churn.counts.fast_connects + hold2.counts.fast_connects, 60);
    assert_eq!(churn.duration_ms, 3_000);
    assert_eq!(hold2.online_at_end, 200);

    // The storm closes all 200 at once; all come back by fast connect, none by handshake,
    // and none waits for the retry budget (the fleet's own closes are not retries).
    let storm = phase(&sim, "storm");
    assert_eq!(storm.counts.reconnects, 200);
    assert_eq!(
        (storm.counts.fast_connects, storm.counts.handshakes),
        (200, 0)
    );
    assert_eq!(
        (storm.counts.retries_throttled, storm.counts.timeouts),
        (0, 0)
    );
    assert_eq!((storm.fast_connect.len(), storm.handshake.len()), (200, 0));
    assert_eq!(storm.online_at_end, 200);

    let down = phase(&sim, "ramp-down");
    assert_eq!((down.online_at_end, down.counts.connects), (0, 0));
    assert!(
        (900..=1_000).contains(&down.duration_ms),
        "{}",
        down.duration_ms
    );
    assert_eq!(sim.core.stats().counters.online, 0);
}

#[test]
fn a_ramp_after_a_ramp_down_starts_the_devices_again() {
    let mut sim = Sim::new(
        fleet(50, staged("ramp@0,ramp-down:0s,ramp:30@0")),
        SimConfig::default(),
    );
    assert!(sim.run_until(LIMIT_MS, done));
    let again = phase(&sim, "ramp2");
    assert_eq!((again.online_at_end, again.counts.fast_connects), (30, 30));
    assert_eq!(phase(&sim, "ramp-down").online_at_end, 0);
}

#[test]
fn a_stop_cuts_the_running_phase_short() {
    let mut sim = Sim::new(fleet(20, staged("ramp@0,hold:1h")), SimConfig::default());
    assert!(sim.run_until(LIMIT_MS, |s| s.core.stats().stages.current == 1));
    sim.run_for(5_000);
    assert!(sim.stop(LIMIT_MS));
    let st = &sim.core.stats().stages;
    let hold = st.phase("hold").expect("hold");
    assert!(hold.ran && !hold.completed, "{hold:?}");
    assert_eq!((hold.online_at_end, hold.duration_ms), (20, 5_000));
    assert!(!st.done(), "the plan did not finish");
}

#[test]
fn storm_phases_with_expired_sessions_come_back_by_handshake() {
    let mut sim = Sim::new(fleet(40, staged("ramp@0,storm")), SimConfig::default());
    assert!(
        sim.run_until(LIMIT_MS, |s| s.core.stats().stages.current == 1
            || s.core.stats().counters.online == 40)
    );
    sim.expire_sessions();
    assert!(sim.run_until(LIMIT_MS, done));
    let storm = phase(&sim, "storm");
    assert_eq!(
        storm.counts.fast_connect_rejected + storm.counts.fast_connects,
        40
    );
    assert_eq!(storm.online_at_end, 40);
}
