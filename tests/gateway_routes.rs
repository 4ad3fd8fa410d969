//! Routes in Redis (PROTOCOL.md 8.2, 8.4) with two `serve --redis --gateway` processes and a
//! real redis-server: each server writes its users' routes at bind and marks them offline at
//! close; `push --redis` sends each push to the gateway of the server that holds the user,
//! counts a user with no route as `no_route`; a push sent to the wrong server's gateway gets
//! ROUTER_CHANGE, and one for a user whose route went offline gets OFFLINE. Also: the admin
//! API's ack-race switch, seen by `run --push-rate`. Deadlines on every wait.

mod common;
#[path = "common/redis.rs"]
mod redis_harness;
#[path = "common/serve.rs"]
mod serve_harness;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use mpush_fleet::control::{memory_stores, Fleet, FleetConfig};
use redis_harness::RedisProcess;
use serde_json::Value;
use serve_harness::{Serve, PATIENCE};

fn http(admin: SocketAddr, method: &str, path: &str) -> Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).expect("admin API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").expect("HTTP answer").1;
    serde_json::from_str(body).expect("JSON")
}

fn fleet(server: SocketAddr, first: u32, devices: u32) -> Fleet {
    let cfg = FleetConfig {
        devices,
        first_device: first,
        shards: 1,
        pin: false,
        rate: 0.0,
        servers: vec![server],
        seed: Some(5),
        report_every: Duration::from_millis(50),
        driver: common::driver(),
        ..FleetConfig::default()
    };
    let mut fleet = Fleet::start(cfg, memory_stores(1)).expect("fleet starts");
    assert!(
        fleet.wait_until(PATIENCE, |c| c.bound >= u64::from(devices)),
        "not all bound: {:?}",
        fleet.counters()
    );
    fleet
}

/// `mpush-fleet push ARGS --json`: its exit code and report.
fn push(args: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_mpush-fleet"))
        .arg("push")
        .args(args)
        .arg("--json")
        .args(if args.contains(&"--timeout") {
            &[][..]
        } else {
            &["--timeout", "20s"][..]
        })
        .output()
        .expect("push runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no JSON report: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (out.status.code(), json)
}

fn route(redis: &RedisProcess, user: &str) -> Option<Value> {
    let text = redis
        .resp()
        .cmd(&["HGET", &format!("mp:ur:{user}"), "1"])
        .ok()?
        .text()?;
    serde_json::from_str(&text).ok()
}

#[test]
fn pushes_follow_the_routes_each_server_writes() {
    if !common::io_uring_or_skip("pushes_follow_the_routes_each_server_writes") {
        return;
    }
    let Some(redis) = RedisProcess::start("pushes_follow_the_routes_each_server_writes") else {
        return;
    };
    let url = redis.url();
    let mut a = Serve::start(&["--gateway", "127.0.0.1:0", "--redis", &url]);
    let ga = a.proc.wait_out("gateway on ");
    let mut b = Serve::start(&["--gateway", "127.0.0.1:0", "--redis", &url]);
    let gb = b.proc.wait_out("gateway on ");
    // Users 0..4 on server A, 4..8 on server B; 8 and 9 nowhere.
    let fleet_a = fleet(a.addr, 0, 4);
    let fleet_b = fleet(b.addr, 4, 4);
    // Written at bind, before the bind's OK: there as soon as the devices are bound.
    let r0 = route(&redis, "user-0").expect("user-0's route");
    assert_eq!(
        format!("{}:{}", r0["host"].as_str().unwrap(), r0["port"]),
        ga,
        "{r0}"
    );
    assert_eq!(r0["deviceId"], "device-0");
    assert!(r0["connId"].is_string(), "online: {r0}");
    let r5 = route(&redis, "user-5").expect("user-5's route");
    assert_eq!(
        format!("{}:{}", r5["host"].as_str().unwrap(), r5["port"]),
        gb
    );

    let (code, json) = push(&[
        "--redis", &url, "--to", "user-{i}", "--range", "0..10", "--count", "10", "--ack", "auto",
    ]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["outcomes"]["ok"], 8, "{json}");
    assert_eq!(json["outcomes"]["no_route"], 2, "{json}");
    assert_eq!(http(a.admin, "GET", "/stats")["gateway"]["pushes"], 4);
    assert_eq!(http(b.admin, "GET", "/stats")["gateway"]["pushes"], 4);

    // A push to the wrong server: B holds no connection for user-0, Redis names A.
    let (_, json) = push(&[
        "--gateway",
        &gb,
        "--to",
        "user-{i}",
        "--range",
        "0..4",
        "--count",
        "4",
    ]);
    assert_eq!(json["outcomes"]["error.3.ROUTER_CHANGE"], 4, "{json}");

    // A's devices leave: their routes stay, without connId (offline).
    let c = fleet_a.stop().expect("fleet A stops").stats.counters;
    assert_eq!(c.pushes_received, 4);
    let deadline = Instant::now() + PATIENCE;
    while route(&redis, "user-0").is_some_and(|r| r["connId"].is_string()) {
        assert!(
            Instant::now() < deadline,
            "user-0's route never went offline"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(route(&redis, "user-0").is_some(), "the route is kept");
    let (_, json) = push(&["--gateway", &ga, "--to", "user-0"]);
    assert_eq!(json["outcomes"]["error.1.OFFLINE"], 1, "{json}");
    let (_, json) = push(&[
        "--redis", &url, "--to", "user-{i}", "--range", "0..8", "--count", "8",
    ]);
    assert_eq!(json["outcomes"]["no_route"], 4, "{json}");
    assert_eq!(json["outcomes"]["ok"], 4, "{json}");
    assert_eq!(
        fleet_b
            .stop()
            .expect("fleet B stops")
            .stats
            .counters
            .pushes_received,
        8
    );
}

#[test]
fn the_ack_race_switch_of_the_admin_api() {
    if !common::io_uring_or_skip("the_ack_race_switch_of_the_admin_api") {
        return;
    }
    let mut serve = Serve::start(&["--gateway", "127.0.0.1:0"]);
    let gateway = serve.proc.wait_out("gateway on ");
    assert_eq!(
        http(serve.admin, "GET", "/faults")["gateway_ack_race"],
        false
    );
    let f = http(serve.admin, "POST", "/fault/gateway-ack-race/on");
    assert_eq!(f["gateway_ack_race"], true, "{f}");
    let fleet = fleet(serve.addr, 0, 2);
    let run = |expect_replies: bool| {
        let (_, json) = push(&[
            "--gateway",
            &gateway,
            "--to",
            "user-{i}",
            "--range",
            "0..2",
            "--count",
            "6",
            "--ack",
            "auto",
            "--timeout",
            "1s",
        ]);
        let (ok, none) = (&json["outcomes"]["ok"], &json["outcomes"]["no_reply"]);
        if expect_replies {
            assert_eq!((ok, none.as_u64()), (&Value::from(6), None), "{json}");
        } else {
            assert_eq!((ok.as_u64(), none), (None, &Value::from(6)), "{json}");
        }
    };
    run(false);
    let f = http(serve.admin, "POST", "/fault/gateway-ack-race/off");
    assert_eq!(f["gateway_ack_race"], false);
    run(true);
    let stats = http(serve.admin, "GET", "/stats");
    assert_eq!(
        stats["gateway"]["acks_unmatched"], 6,
        "the race's ACKs found no wait"
    );
    assert_eq!(stats["gateway"]["acks_matched"], 6);
    assert_eq!(
        fleet.stop().expect("fleet stops").stats.counters.acks_sent,
        12
    );
}
