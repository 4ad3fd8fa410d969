//! Connects that never complete: a listener whose accept queue is full drops every further
//! SYN, so the fleet's connects hang until their timeout (on the uring driver, the connect's
//! linked timeout). The fleet then stops with connects still in flight, and the stop must
//! finish (the uring driver cancels them and waits for their completions before it frees
//! their memory). Runs on the driver `MPUSH_FLEET_DRIVER` names. Real sockets, real io_uring,
//! loopback; waits on conditions with deadlines.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use mpush_fleet::control::{memory_stores, Fleet, FleetConfig};
use mpush_fleet::device::DeviceConfig;
use socket2::{Domain, Protocol, Socket, Type};

const PATIENCE: Duration = Duration::from_secs(60);

/// A listener that never accepts, with room for one queued connection.
fn full_listener() -> (Socket, SocketAddr) {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .expect("bind");
    sock.listen(0).expect("listen");
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    (sock, addr)
}

#[test]
fn connects_to_a_full_listener_time_out_and_the_stop_finishes_with_connects_in_flight() {
    if !common::io_uring_or_skip(
        "connects_to_a_full_listener_time_out_and_the_stop_finishes_with_connects_in_flight",
    ) {
        return;
    }
    let (_listener, addr) = full_listener();
    let devices = 6;
    let cfg = FleetConfig {
        devices,
        shards: 1,
        pin: false,
        servers: vec![addr],
        seed: Some(11),
        report_every: Duration::from_millis(50),
        device: DeviceConfig {
            connect_timeout_ms: 200,
            request_timeout_ms: 60_000,
            backoff_base_ms: 20,
            backoff_cap_ms: 50,
            ..DeviceConfig::default()
        },
        driver: common::driver(),
        ..FleetConfig::default()
    };
    let mut fleet = Fleet::start(cfg, memory_stores(1)).expect("fleet starts");
    // At most two connections fit the full queue; every other connect hangs until its timeout,
    // then retries: several rounds of timeouts.
    let timed_out = fleet.wait_until(PATIENCE, |c| c.connect_failures >= 3 * u64::from(devices));
    let c = fleet.counters();
    assert!(timed_out, "connects did not time out: {c:?}");
    assert!(
        c.connected <= 2,
        "a full listener took more connections: {c:?}"
    );
    assert_eq!(c.online, 0, "{c:?}");
    // Stop while devices are still connecting.
    let result = fleet
        .stop()
        .expect("the fleet stops with connects in flight");
    assert!(result.stats.counters.connects > result.stats.counters.connected);
}
