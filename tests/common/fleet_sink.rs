//! A small fleet that hands its pushes to a sink, against a reference server in the test
//! process, and a look at whether the server saw a push acked.

use std::time::Duration;

use mpush_fleet::control::{memory_stores, Fleet, FleetConfig};
use mpush_fleet::device::DeviceConfig;
use mpush_fleet::server::ServerHandle;
use mpush_fleet::sink::Sink;

/// How long a condition may take to come true.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// `n` devices on 2 shards, every one bound before this returns.
pub fn fleet(server: &ServerHandle, n: u32, sink: &Sink) -> Fleet {
    let cfg = FleetConfig {
        devices: n,
        shards: 2,
        pin: false,
        servers: vec![server.local_addr()],
        seed: Some(3),
        report_every: Duration::from_millis(50),
        sink: Some(sink.sender()),
        device: DeviceConfig {
            backoff_base_ms: 50,
            ..DeviceConfig::default()
        },
        driver: crate::common::driver(),
        ..FleetConfig::default()
    };
    let mut fleet = Fleet::start(cfg, memory_stores(2)).expect("fleet starts");
    assert!(
        fleet.wait_until(PATIENCE, |c| c.bound == u64::from(n)),
        "{:?}",
        fleet.counters()
    );
    fleet
}

/// Whether the server saw the push `msg_id` acked.
pub fn acked(server: &ServerHandle, msg_id: i32) -> bool {
    server
        .pushes()
        .iter()
        .any(|p| p.msg_id == msg_id && p.acked)
}
