//! The fleet with its tickets in a real redis-server (started by the harness on a free
//! loopback port) against the reference server, in-process, plus the `run`/`serve` commands
//! as child processes. Real sockets, real io_uring; waits on conditions with deadlines.

mod common;
#[path = "common/redis.rs"]
mod redis_harness;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mpush_fleet::control::{Fleet, FleetConfig, FleetResult};
use mpush_fleet::device::DeviceConfig;
use mpush_fleet::server::{Server, ServerConfig, ServerHandle};
use mpush_fleet::tickets::format::ClientTicket;
use mpush_fleet::tickets::{RedisConfig, RedisTickets, TicketStore};
use redis_harness::RedisProcess;

/// One fleet test at a time: each holds hundreds of sockets.
static SERIAL: Mutex<()> = Mutex::new(());

const PATIENCE: Duration = Duration::from_secs(60);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fleet_config(server: SocketAddr, devices: u32, first: u32) -> FleetConfig {
    FleetConfig {
        devices,
        first_device: first,
        shards: 2,
        pin: false,
        rate: 0.0,
        servers: vec![server],
        seed: Some(11),
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

fn stores(redis: &RedisProcess) -> Vec<Box<dyn TicketStore>> {
    RedisTickets::fleet(
        RedisConfig::new(redis.url()),
        DeviceConfig::default().device_id,
        2,
    )
    .expect("valid URL")
}

fn start(cfg: FleetConfig, stores: Vec<Box<dyn TicketStore>>) -> Fleet {
    Fleet::start(cfg, stores).expect("fleet starts")
}

fn all_online(fleet: &mut Fleet, n: u32, what: &str) {
    let ok = fleet.wait_until(PATIENCE, |c| {
        c.online == i64::from(n) && c.bound >= u64::from(n)
    });
    assert!(
        ok,
        "{what}: not all online and bound: {:?}",
        fleet.counters()
    );
}

fn stop(fleet: Fleet) -> FleetResult {
    fleet.stop().expect("fleet stops cleanly")
}

fn server() -> ServerHandle {
    Server::start(ServerConfig::new()).expect("reference server starts")
}

/// A fleet saves one ticket per device, in the Java JSON; a second run with new stores (so
/// only Redis remembers) comes back entirely by fast connect; so does a third with the
/// stores handed back by the second (a store moved to a new shard runtime reconnects).
#[test]
fn tickets_in_redis_bring_the_next_run_back_by_fast_connect() {
    let name = "tickets_in_redis_bring_the_next_run_back_by_fast_connect";
    if !common::io_uring_or_skip(name) {
        return;
    }
    let Some(redis) = RedisProcess::start(name) else {
        return;
    };
    let _serial = serial();
    let server = server();
    let n = 400;
    let mut fleet = start(fleet_config(server.local_addr(), n, 0), stores(&redis));
    all_online(&mut fleet, n, "first run");
    let first = stop(fleet);
    let c = &first.stats.counters;
    assert_eq!(
        (c.handshakes, c.tickets_saved, c.ticket_errors),
        (400, 400, 0),
        "{c:?}"
    );

    let mut resp = redis.resp();
    assert_eq!(resp.keys("mp:fcd:*").len(), 400, "one ticket per device");
    let value = resp.get("mp:fcd:device-17").expect("device-17's ticket");
    assert!(
        value.starts_with("{\"expireTime\":\""),
        "the Java writer's field order: {value}"
    );
    let ticket = ClientTicket::from_json(&value).expect("the Java JSON");
    assert_eq!(ticket.session_id.len(), 32);
    let ttl = resp.pttl("mp:fcd:device-17");
    assert!(ttl > 0 && ttl <= 300_000, "the seed's 300 s at most: {ttl}");

    let mut fleet = start(fleet_config(server.local_addr(), n, 0), stores(&redis));
    all_online(&mut fleet, n, "second run");
    let second = stop(fleet);
    let c = &second.stats.counters;
    assert_eq!(
        (c.fast_connects, c.handshakes, c.ticket_errors),
        (400, 0, 0),
        "{c:?}"
    );
    assert_eq!(
        server.stats().handshakes,
        400,
        "no new RSA handshake on the server"
    );

    let mut fleet = start(fleet_config(server.local_addr(), n, 0), second.stores);
    all_online(&mut fleet, n, "third run, stores reused");
    let c = stop(fleet).stats.counters;
    assert_eq!((c.fast_connects, c.handshakes), (400, 0), "{c:?}");
    server.shutdown();
}

/// Two fleets with disjoint device ranges share one Redis (as two processes would, each
/// with its own stores and connections) and both come back by fast connect.
#[test]
fn two_fleets_with_disjoint_ranges_share_one_redis() {
    let name = "two_fleets_with_disjoint_ranges_share_one_redis";
    if !common::io_uring_or_skip(name) {
        return;
    }
    let Some(redis) = RedisProcess::start(name) else {
        return;
    };
    let _serial = serial();
    let server = server();
    let n = 200;
    let mut a = start(fleet_config(server.local_addr(), n, 0), stores(&redis));
    let mut b = start(fleet_config(server.local_addr(), n, 200), stores(&redis));
    all_online(&mut a, n, "fleet a");
    all_online(&mut b, n, "fleet b");
    stop(a);
    stop(b);
    let mut keys = redis.resp().keys("mp:fcd:*");
    keys.sort_by_key(|k| k["mp:fcd:device-".len()..].parse::<u32>().unwrap());
    let want: Vec<String> = (0..400).map(|i| format!("mp:fcd:device-{i}")).collect();
    assert_eq!(keys, want);

    // Swapped ranges: each fleet now resumes the sessions the other one made.
    let mut a = start(fleet_config(server.local_addr(), n, 200), stores(&redis));
    let mut b = start(fleet_config(server.local_addr(), n, 0), stores(&redis));
    all_online(&mut a, n, "fleet a, second run");
    all_online(&mut b, n, "fleet b, second run");
    for c in [stop(a).stats.counters, stop(b).stats.counters] {
        assert_eq!((c.fast_connects, c.handshakes), (200, 0), "{c:?}");
    }
    server.shutdown();
}

/// Redis killed under a running fleet: the devices stay online; reconnecting devices
/// handshake (their loads fail as counted errors); Redis restarted on the same port: ticket
/// saves land again.
#[test]
fn redis_killed_mid_run_and_restarted_the_fleet_recovers() {
    let name = "redis_killed_mid_run_and_restarted_the_fleet_recovers";
    if !common::io_uring_or_skip(name) {
        return;
    }
    let Some(mut redis) = RedisProcess::start(name) else {
        return;
    };
    let _serial = serial();
    let server = server();
    let n = 200;
    let mut fleet = start(fleet_config(server.local_addr(), n, 0), stores(&redis));
    all_online(&mut fleet, n, "start");

    redis.kill();
    let before = fleet.counters();
    assert_eq!(server.close_all(), 200);
    let ok = fleet.wait_until(PATIENCE, |c| {
        c.online == 200 && c.bound >= before.bound + 200 && c.handshakes >= before.handshakes + 200
    });
    assert!(
        ok,
        "devices came back by handshake while Redis was down: {:?}",
        fleet.counters()
    );
    let down = fleet.counters();
    assert!(
        down.ticket_errors >= 200,
        "failed loads and saves are counted: {down:?}"
    );

    redis.restart();
    let mut resp = redis.resp();
    // Each round closes every session; the devices reconnect and save new tickets, which
    // land once the store has reconnected.
    let deadline = Instant::now() + PATIENCE;
    while resp.keys("mp:fcd:*").len() < 200 {
        assert!(
            Instant::now() < deadline,
            "saves never resumed: {:?}",
            fleet.counters()
        );
        let bound = fleet.counters().bound;
        server.close_all();
        let ok = fleet.wait_until(PATIENCE, |c| c.online == 200 && c.bound >= bound + 200);
        assert!(ok, "devices did not come back: {:?}", fleet.counters());
    }
    let c = stop(fleet).stats.counters;
    assert_eq!(c.ever_online, 200);
    server.shutdown();
}

/// Corrupted tickets: the devices with a bad value handshake, each a counted error; the
/// others fast connect.
#[test]
fn corrupted_tickets_in_redis_mean_handshakes_not_panics() {
    let name = "corrupted_tickets_in_redis_mean_handshakes_not_panics";
    if !common::io_uring_or_skip(name) {
        return;
    }
    let Some(redis) = RedisProcess::start(name) else {
        return;
    };
    let _serial = serial();
    let server = server();
    let n = 100;
    let mut fleet = start(fleet_config(server.local_addr(), n, 0), stores(&redis));
    all_online(&mut fleet, n, "first run");
    stop(fleet);

    let mut resp = redis.resp();
    let good = resp.get("mp:fcd:device-3").unwrap();
    resp.ok(&["SET", "mp:fcd:device-1", "not json"]);
    resp.ok(&[
        "SET",
        "mp:fcd:device-2",
        &good
            .replacen("\"expireTime\":\"", "\"expireTime\":", 1)
            .replacen("\",\"sessionId\"", ",\"sessionId\"", 1),
    ]);
    resp.ok(&["SET", "mp:fcd:device-3", &good.replacen('|', ",", 1)]);
    resp.ok(&["DEL", "mp:fcd:device-4"]);
    resp.ok(&["HSET", "mp:fcd:device-4", "f", "v"]);

    let mut fleet = start(fleet_config(server.local_addr(), n, 0), stores(&redis));
    all_online(&mut fleet, n, "second run");
    let c = stop(fleet).stats.counters;
    assert_eq!((c.fast_connects, c.handshakes), (96, 4), "{c:?}");
    // The 4 bad loads; the saves after their handshakes replace the bad values (SET
    // replaces a key of any type).
    assert_eq!(c.ticket_errors, 4, "{c:?}");
    assert!(
        ClientTicket::from_json(&resp.get("mp:fcd:device-1").unwrap()).is_ok(),
        "re-saved"
    );
    server.shutdown();
}

/// A child process, killed on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `serve --redis` and two `run --redis` processes with disjoint `--first-device` ranges:
/// tickets of both in one Redis, the server's sessions there in the `mp:rs:` format; a second
/// pair of runs (one new server process, same Redis) comes back by fast connect.
#[test]
fn run_and_serve_processes_share_one_redis() {
    let name = "run_and_serve_processes_share_one_redis";
    if !common::io_uring_or_skip(name) {
        return;
    }
    let Some(redis) = RedisProcess::start(name) else {
        return;
    };
    let _serial = serial();
    let exe = env!("CARGO_BIN_EXE_mpush-fleet");
    let serve = |redis: &RedisProcess| {
        let port = RedisProcess::unused_port();
        let child = Command::new(exe)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--redis",
                &redis.url(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "serve never listened");
            std::thread::sleep(Duration::from_millis(5));
        }
        (ChildGuard(child), addr)
    };
    let run = |addr: SocketAddr, first: u32, tag: &str| {
        let report =
            std::env::temp_dir().join(format!("redis-run-{}-{tag}.json", std::process::id()));
        let status = Command::new(exe)
            .args([
                "run",
                "--server",
                &addr.to_string(),
                "--devices",
                "100",
                "--rate",
                "0",
            ])
            .args([
                "--first-device",
                &first.to_string(),
                "--shards",
                "2",
                "--duration",
                "120s",
                "--stop-when-online",
            ])
            .args([
                "--redis",
                &redis.url(),
                "--report",
                report.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("run");
        let text = std::fs::read_to_string(&report).expect("report written");
        let _ = std::fs::remove_file(&report);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(status.success(), "run {tag}: {status}, {json}");
        (
            json["handshakes"].as_u64().unwrap(),
            json["fast_connects"].as_u64().unwrap(),
        )
    };

    let (server, addr) = serve(&redis);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(addr, 0, "a1"));
        let b = s.spawn(|| run(addr, 100, "b1"));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!((a, b), ((100, 0), (100, 0)));
    let mut resp = redis.resp();
    assert_eq!(resp.keys("mp:fcd:*").len(), 200);
    let sessions = resp.keys("mp:rs:*");
    assert!(
        !sessions.is_empty(),
        "the server keeps its sessions in Redis"
    );
    let session = resp.get(&sessions[0]).unwrap();
    let s = mpush_fleet::tickets::format::ReusableSession::decode(&session).expect("mp:rs: format");
    assert_eq!(s.os_name, "android");
    drop(server);

    // A new server process: only Redis remembers the sessions.
    let (_server, addr) = serve(&redis);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(addr, 0, "a2"));
        let b = s.spawn(|| run(addr, 100, "b2"));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!((a, b), ((0, 100), (0, 100)));
}
