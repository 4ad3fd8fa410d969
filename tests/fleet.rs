//! The fleet engine against the reference server, in-process on loopback: real sockets, real
//! io_uring. Each test waits on conditions with deadlines, never on sleeps.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mpush_fleet::control::{memory_stores, Fleet, FleetConfig, FleetResult};
use mpush_fleet::device::{DeviceConfig, Template};
use mpush_fleet::server::{
    AckMode, PushTarget, Server, ServerConfig, ServerHandle, ServerStats, SessionConfig,
};
use mpush_fleet::stats::Latency;
use mpush_fleet::tickets::{Loaded, TicketStore};

/// Fleet tests open thousands of sockets each: run them one at a time so that together they
/// stay far below the descriptor limit.
static SERIAL: Mutex<()> = Mutex::new(());

/// Generous: loopback is fast, but CI machines are shared and slow.
const PATIENCE: Duration = Duration::from_secs(60);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn server(cfg: ServerConfig) -> ServerHandle {
    Server::start(cfg).expect("reference server starts")
}

fn fleet_config(server: SocketAddr, devices: u32, shards: usize) -> FleetConfig {
    FleetConfig {
        devices,
        shards,
        pin: false,
        rate: 0.0,
        servers: vec![server],
        seed: Some(7),
        report_every: Duration::from_millis(50),
        device: DeviceConfig {
            backoff_base_ms: 50,
            backoff_cap_ms: 400,
            ..DeviceConfig::default()
        },
        driver: common::driver(),
        ..FleetConfig::default()
    }
}

fn start(cfg: FleetConfig, stores: Vec<Box<dyn TicketStore>>) -> Fleet {
    Fleet::start(cfg, stores).expect("fleet starts")
}

fn wait_server(
    server: &ServerHandle,
    what: &str,
    done: impl Fn(&ServerStats) -> bool,
) -> ServerStats {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = server.stats();
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "server never reached: {what}; stats {s:?}"
        );
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn all_online_and_bound(fleet: &mut Fleet, n: u32, what: &str) {
    let n64 = u64::from(n);
    let ok = fleet.wait_until(PATIENCE, |c| c.online == i64::from(n) && c.bound >= n64);
    assert!(
        ok,
        "{what}: not all online and bound: {:?}",
        fleet.counters()
    );
}

fn stop(fleet: Fleet) -> FleetResult {
    fleet.stop().expect("fleet stops cleanly")
}

/// Done-when 1 and 2: 2,000 devices over 2 shards handshake and bind, and the server agrees;
/// stopped and started again, the fleet comes back entirely by fast connect.
#[test]
fn two_thousand_devices_handshake_bind_then_return_by_fast_connect() {
    if !common::io_uring_or_skip("two_thousand_devices_handshake_bind_then_return_by_fast_connect")
    {
        return;
    }
    let _serial = serial();
    let server = server(ServerConfig::new());
    let n = 2_000;
    let mut fleet = start(fleet_config(server.local_addr(), n, 2), memory_stores(2));
    all_online_and_bound(&mut fleet, n, "first run");
    let s = wait_server(&server, "2000 binds", |s| s.binds >= 2_000);
    assert_eq!(
        (s.handshakes, s.fast_connects, s.binds, s.connections),
        (2_000, 0, 2_000, 2_000)
    );
    // The live view (status line, metrics, a worker's link) is built from the latency samples
    // the shards report since their last report: it reaches one sample per device too.
    let deadline = Instant::now() + Duration::from_secs(30);
    let live = |fleet: &Fleet, l| fleet.stats().latencies.get(l).len();
    while live(&fleet, Latency::Handshake) < 2_000 || live(&fleet, Latency::Bind) < 2_000 {
        assert!(
            Instant::now() < deadline,
            "live handshake/bind samples: {} / {}",
            live(&fleet, Latency::Handshake),
            live(&fleet, Latency::Bind)
        );
        fleet.poll(Duration::from_millis(100));
    }
    assert_eq!(live(&fleet, Latency::Handshake), 2_000);
    assert_eq!(live(&fleet, Latency::Connect), 2_000);
    let first = stop(fleet);
    assert_eq!(first.stats.counters.handshakes, 2_000);
    assert_eq!(first.stats.counters.tickets_saved, 2_000);
    // The report's histograms count one sample per device and phase, with ordered percentiles.
    let report = mpush_fleet::control::report::RunReport::new(n, &first.stats, first.elapsed);
    for name in ["connect", "handshake", "bind"] {
        let h = &report.latency[name];
        assert_eq!(h.count, 2_000, "{name}: {h:?}");
        assert!(
            h.p50_ms <= h.p90_ms && h.p90_ms <= h.p99_ms && h.p99_ms <= h.max_ms,
            "{name}: {h:?}"
        );
        assert!(h.max_ms > 0.0, "{name}: {h:?}");
    }
    assert_eq!(report.latency["fast_connect"].count, 0);
    assert!(report.sessions_per_sec > 0.0);
    wait_server(&server, "all closed", |s| s.connections == 0);

    let mut fleet = start(fleet_config(server.local_addr(), n, 2), first.stores);
    all_online_and_bound(&mut fleet, n, "second run");
    let second = stop(fleet);
    let c = &second.stats.counters;
    assert_eq!(
        (c.fast_connects, c.handshakes),
        (2_000, 0),
        "second run: {c:?}"
    );
    let s = server.stats();
    assert_eq!(
        (s.handshakes, s.fast_connects),
        (2_000, 2_000),
        "0 new RSA handshakes"
    );
    server.shutdown();
}

/// Done-when 3: after the server expires every session, a restart falls back to handshakes.
#[test]
fn expired_sessions_fall_back_to_handshakes() {
    if !common::io_uring_or_skip("expired_sessions_fall_back_to_handshakes") {
        return;
    }
    let _serial = serial();
    let server = server(ServerConfig::new());
    let n = 500;
    let mut fleet = start(fleet_config(server.local_addr(), n, 2), memory_stores(2));
    all_online_and_bound(&mut fleet, n, "first run");
    let first = stop(fleet);
    server.expire_sessions().expect("expire");
    let mut fleet = start(fleet_config(server.local_addr(), n, 2), first.stores);
    all_online_and_bound(&mut fleet, n, "after expiry");
    let c = stop(fleet).stats.counters;
    assert_eq!(
        (c.fast_connects, c.fast_connect_rejected, c.handshakes),
        (0, 500, 500),
        "{c:?}"
    );
    assert_eq!(c.errors.get(&103), Some(&500));
    server.shutdown();
}

/// Done-when 3, second half: with the server's sessionId quirk (ids from the millisecond
/// alone), devices whose session was overwritten get ERROR 104, handshake again, and every
/// device ends online.
#[test]
fn sessionid_quirk_104s_are_taken_in_stride() {
    if !common::io_uring_or_skip("sessionid_quirk_104s_are_taken_in_stride") {
        return;
    }
    let _serial = serial();
    let server = server(ServerConfig {
        session: SessionConfig {
            sessionid_quirk: true,
            ..SessionConfig::default()
        },
        ..ServerConfig::new()
    });
    let n = 500;
    let mut fleet = start(fleet_config(server.local_addr(), n, 2), memory_stores(2));
    all_online_and_bound(&mut fleet, n, "first run");
    let mut stores = stop(fleet).stores;
    // Make one 104 certain whatever the timing: give device-1 the ticket of a device whose
    // session id is not device-1's own (what the quirk does when two devices handshake in the
    // same millisecond: the session belongs to whichever stored it last).
    let own = load(&mut stores[0], 1);
    let other = (2..250)
        .map(|i| load(&mut stores[0], i))
        .find(|t| t.session_id != own.session_id)
        .expect("not every device shares one millisecond");
    stores[0].save(1, &other, 0);
    let mut fleet = start(fleet_config(server.local_addr(), n, 2), stores);
    all_online_and_bound(&mut fleet, n, "after collisions");
    let c = stop(fleet).stats.counters;
    let rejected_104 = c.errors.get(&104).copied().unwrap_or(0);
    assert!(rejected_104 >= 1, "{c:?}");
    assert_eq!(
        c.fast_connect_rejected, rejected_104,
        "only 104s here: {c:?}"
    );
    assert_eq!(
        c.fast_connects + c.fast_connect_rejected,
        500,
        "every device tried fast connect"
    );
    assert_eq!(
        c.handshakes, c.fast_connect_rejected,
        "each rejected device handshook again"
    );
    server.shutdown();
}

/// The stored ticket of device `device` (global index; `device-{i}` renders it).
fn load(
    store: &mut Box<dyn TicketStore>,
    device: u32,
) -> mpush_fleet::tickets::format::ClientTicket {
    store.load(device);
    let mut out: Vec<Loaded> = Vec::new();
    store.drain_ready(&mut out);
    out.pop().and_then(|l| l.ticket).expect("ticket stored")
}

/// Done-when 4: with a 1 s server heartbeat, sessions stay up over several periods; when the
/// server stops answering heartbeats, every device reconnects on its own.
#[test]
fn heartbeats_keep_sessions_and_silence_makes_devices_reconnect() {
    if !common::io_uring_or_skip("heartbeats_keep_sessions_and_silence_makes_devices_reconnect") {
        return;
    }
    let _serial = serial();
    let server = server(ServerConfig {
        session: SessionConfig {
            min_heartbeat_ms: 1_000,
            max_heartbeat_ms: 1_000,
            ..SessionConfig::default()
        },
        ..ServerConfig::new()
    });
    let n = 200;
    let mut cfg = fleet_config(server.local_addr(), n, 2);
    cfg.device.min_heartbeat = 1_000;
    cfg.device.max_heartbeat = 1_000;
    let mut fleet = start(cfg, memory_stores(2));
    all_online_and_bound(&mut fleet, n, "start");
    // Several periods: at least 4 echoed heartbeats per device.
    assert!(
        fleet.wait_until(PATIENCE, |c| c.heartbeats_received >= 4 * 200),
        "{:?}",
        fleet.counters()
    );
    let c = fleet.counters();
    assert_eq!(
        (c.online, c.reconnects, c.read_timeouts),
        (200, 0, 0),
        "{c:?}"
    );
    let s = server.stats();
    assert_eq!(
        s.closes_by_reason.get("idle_timeout"),
        None,
        "the server timed a session out: {s:?}"
    );
    assert_eq!(s.connections, 200);

    server.set_heartbeat_echo(false);
    assert!(
        fleet.wait_until(PATIENCE, |c| c.read_timeouts >= 200),
        "devices did not notice the silence: {:?}",
        fleet.counters()
    );
    server.set_heartbeat_echo(true);
    all_online_and_bound(&mut fleet, n, "after reconnecting");
    let c = stop(fleet).stats.counters;
    assert!(c.reconnects >= 200 && c.fast_connects >= 200, "{c:?}");
    server.shutdown();
}

/// Done-when 5: a kick, an AUTO_ACK push, an ERROR reply, a garbage frame and a server that
/// closes everything: each handled, the rest of the fleet unaffected.
#[test]
fn kick_push_error_garbage_and_close_all_are_each_handled() {
    if !common::io_uring_or_skip("kick_push_error_garbage_and_close_all_are_each_handled") {
        return;
    }
    let _serial = serial();
    let server = server(ServerConfig::new());
    let n = 100;
    let mut fleet = start(fleet_config(server.local_addr(), n, 2), memory_stores(2));
    all_online_and_bound(&mut fleet, n, "start");

    // Push with AUTO_ACK: the server sees the ack.
    let sent = server.push(
        PushTarget::User("user-5".into()),
        Bytes::from_static(b"hi"),
        AckMode::Auto,
    );
    assert_eq!(sent.sent, 1);
    wait_server(&server, "ack of the push", |s| s.acks_received >= 1);
    assert!(server
        .pushes()
        .iter()
        .any(|p| p.user_id == "user-5" && p.acked));
    assert!(fleet.wait_until(PATIENCE, |c| c.pushes_received == 1 && c.acks_sent == 1));

    // Kick: user-7 binds again from another connection of the same client type (a
    // one-device fleet with device index 7), so the server kicks the fleet's device 7.
    let mut twin_cfg = fleet_config(server.local_addr(), 1, 1);
    twin_cfg.first_device = 7;
    twin_cfg.device.device_id = Template::new("twin-{i}");
    let mut twin = start(twin_cfg, memory_stores(1));
    all_online_and_bound(&mut twin, 1, "twin");
    assert!(
        fleet.wait_until(PATIENCE, |c| c.kicks == 1 && c.online == 99),
        "{:?}",
        fleet.counters()
    );
    stop(twin);

    // An ERROR reply: devices with an empty device id get "Param invalid" and a close.
    let mut bad_cfg = fleet_config(server.local_addr(), 3, 1);
    bad_cfg.first_device = 1_000;
    bad_cfg.device.device_id = Template::new("");
    let mut bad = start(bad_cfg, memory_stores(1));
    assert!(
        bad.wait_until(PATIENCE, |c| !c.errors.is_empty() && c.reconnects >= 3),
        "{:?}",
        bad.counters()
    );
    stop(bad);

    // A garbage frame to every connection: each device drops its connection and comes back.
    // First the stopped fleets' connections must be gone from the server too (their closes
    // reach it a moment after `stop` returns).
    wait_server(&server, "only the fleet's 99 connections", |s| {
        s.connections == 99
    });
    let before = fleet.counters();
    assert_eq!(server.send_garbage(), 99);
    assert!(
        fleet.wait_until(PATIENCE, |c| c.decode_errors + c.peer_closed
            >= before.decode_errors + 99
            && c.online == 99
            && c.bound >= before.bound + 99),
        "{:?}",
        fleet.counters()
    );

    // The server closes everything: every device reconnects by fast connect.
    let before = fleet.counters();
    server.close_all();
    assert!(
        fleet.wait_until(PATIENCE, |c| c.fast_connects >= before.fast_connects + 99
            && c.online == 99
            && c.bound >= before.bound + 99),
        "{:?}",
        fleet.counters()
    );
    let c = stop(fleet).stats.counters;
    assert_eq!(c.kicks, 1);
    assert_eq!(c.ever_online, 100);
    server.shutdown();
}

/// Done-when 6: a fleet bound to two source addresses uses both.
#[test]
fn two_source_addresses_are_both_used() {
    if !common::io_uring_or_skip("two_source_addresses_are_both_used") {
        return;
    }
    let _serial = serial();
    let server = server(ServerConfig::new());
    let n = 50;
    let mut cfg = fleet_config(server.local_addr(), n, 2);
    cfg.sources = vec![IpAddr::from([127, 0, 0, 2]), IpAddr::from([127, 0, 0, 3])];
    let mut fleet = start(cfg, memory_stores(2));
    all_online_and_bound(&mut fleet, n, "start");
    let peers = server.peers();
    let from = |ip: [u8; 4]| peers.iter().filter(|p| p.ip() == IpAddr::from(ip)).count();
    assert_eq!(from([127, 0, 0, 2]) + from([127, 0, 0, 3]), 50, "{peers:?}");
    assert!(
        from([127, 0, 0, 2]) >= 20 && from([127, 0, 0, 3]) >= 20,
        "{peers:?}"
    );
    stop(fleet);
    server.shutdown();
}
