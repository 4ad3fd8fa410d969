//! Overload end to end on loopback: a fleet offered ten times what a capacity-limited
//! reference server takes ends all online, with no timeout and (almost) no second connect:
//! the admission window makes the server, not the fleet, set the pace. Real sockets, real
//! io_uring; the counts prove it, not the clock.

mod common;

use std::time::Duration;

use mpush_fleet::control::{memory_stores, Fleet, FleetConfig};
use mpush_fleet::device::DeviceConfig;
use mpush_fleet::server::{CapacityLimits, Server, ServerConfig};
use mpush_fleet::shard::core::Admission;

#[test]
fn ten_times_a_limited_servers_capacity_ends_all_online_without_collapse() {
    if !common::io_uring_or_skip(
        "ten_times_a_limited_servers_capacity_ends_all_online_without_collapse",
    ) {
        return;
    }
    let capacity = 50.0;
    let server = Server::start(ServerConfig {
        capacity: CapacityLimits {
            handshakes_per_sec: capacity,
            ..CapacityLimits::default()
        },
        ..ServerConfig::new()
    })
    .expect("server starts");
    let devices = 300;
    let cfg = FleetConfig {
        devices,
        shards: 2,
        pin: false,
        rate: capacity * 10.0,
        servers: vec![server.local_addr()],
        seed: Some(3),
        report_every: Duration::from_millis(50),
        device: DeviceConfig::default(),
        admission: Admission {
            max_pending: 64,
            ..Admission::default()
        },
        driver: common::driver(),
        ..FleetConfig::default()
    };
    let mut fleet = Fleet::start(cfg, memory_stores(2)).expect("fleet starts");
    let n = i64::from(devices);
    let online = fleet.wait_until(Duration::from_secs(120), |c| {
        c.online == n && c.bound >= 300
    });
    let c = fleet.counters();
    assert!(online, "not all online: {c:?}");
    assert_eq!(c.request_timeouts, 0, "{c:?}");
    assert!(
        c.connects <= 315,
        "{} connects for {devices} devices: {c:?}",
        c.connects
    );
    let s = server.stats();
    assert!(
        s.capacity_delayed > 0,
        "the server was the bottleneck: {s:?}"
    );
    let result = fleet.stop().expect("fleet stops");
    let waited = result
        .stats
        .latencies
        .get(mpush_fleet::stats::Latency::WindowWait)
        .len();
    assert!(waited > 0, "starts waited for the window");
    server.shutdown();
}
