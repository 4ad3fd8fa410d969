//! Discovery through a real ZooKeeper (Debian's package, started by the harness on a free
//! loopback port): `serve --zookeeper` processes register as the real server does, a fleet
//! (`run --zookeeper`) finds them, spreads its devices over them, follows one leaving (its
//! devices come back on the other by fast connect: the servers share one Redis for sessions)
//! and one joining (it gets connects). A hand-written registration with garbage data is
//! ignored along the way.

mod common;
#[path = "common/redis.rs"]
mod redis_harness;
#[path = "common/serve.rs"]
mod serve_harness;
#[path = "common/zookeeper.rs"]
mod zk_harness;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use redis_harness::RedisProcess;
use serde_json::Value;
use serve_harness::{Proc, Serve, PATIENCE};
use zk_harness::ZkProcess;
use zookeeper_client::{Acls, Client, CreateMode};

const DEVICES: u64 = 60;

/// `GET /stats` of a serve's admin API.
fn stats(admin: SocketAddr) -> Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).expect("admin API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").expect("HTTP answer").1;
    serde_json::from_str(body).expect("JSON stats")
}

fn post(admin: SocketAddr, path: &str) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).expect("admin API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// Waits until `done` holds for the servers' stats, or panics with them after `PATIENCE`.
fn wait_stats(servers: &[&Serve], what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let all: Vec<Value> = servers.iter().map(|s| stats(s.admin)).collect();
        if done(&all) {
            return all;
        }
        assert!(Instant::now() < deadline, "{what}: {all:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The children of `/mpush/cluster/cs`, read with the real server's credentials.
fn registered(rt: &tokio::runtime::Runtime, zk: &ZkProcess) -> Vec<String> {
    rt.block_on(async {
        let client = Client::connector()
            .with_auth("digest", b"mpush")
            .connect(&zk.connect_string())
            .await
            .expect("ZooKeeper session");
        let mut v = client
            .list_children("/mpush/cluster/cs")
            .await
            .expect("list");
        v.sort();
        v
    })
}

#[test]
fn fleet_follows_servers_joining_and_leaving_zookeeper() {
    let name = "fleet_follows_servers_joining_and_leaving_zookeeper";
    if !common::io_uring_or_skip(name) {
        return;
    }
    let Some(zk) = ZkProcess::start(name) else {
        return;
    };
    let Some(redis) = RedisProcess::start(name) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ensemble = zk.connect_string();
    let flags = ["--zookeeper", ensemble.as_str(), "--redis", &redis.url()];
    let mut a = Serve::start(&flags);
    let mut b = Serve::start(&flags);
    for s in [&mut a, &mut b] {
        s.proc
            .wait_out("registered in ZooKeeper as /mpush/cluster/cs/");
    }
    // A registration nobody can use: garbage data. The fleet must ignore it, not fail.
    rt.block_on(async {
        let client = Client::connector()
            .with_auth("digest", b"mpush")
            .connect(&ensemble)
            .await
            .unwrap();
        let ephemeral = CreateMode::Persistent.with_acls(Acls::creator_all());
        client
            .create("/mpush/cluster/cs/garbage", b"{\"host\":", &ephemeral)
            .await
            .unwrap();
    });
    assert_eq!(registered(&rt, &zk).len(), 3);

    let report = std::env::temp_dir().join(format!("zk-run-{}.json", std::process::id()));
    let mut run = Proc::spawn(&[
        "run",
        "--zookeeper",
        &ensemble,
        "--devices",
        &DEVICES.to_string(),
        "--rate",
        "0",
        "--shards",
        "2",
        "--duration",
        "600s",
        "--report",
        report.to_str().unwrap(),
    ]);
    // Spread over both.
    let before = wait_stats(&[&a, &b], "devices on both servers", |s| {
        n(&s[0], "connections") + n(&s[1], "connections") == DEVICES
            && n(&s[0], "binds") + n(&s[1], "binds") >= DEVICES
            && n(&s[0], "connections") > 0
            && n(&s[1], "connections") > 0
    });
    let on_a = n(&before[0], "connections");
    let a_addr = a.addr;
    let b_handshakes = n(&before[1], "handshakes");

    // A stops: it deregisters, closes, and its devices come back on B by fast connect.
    assert_eq!(a.proc.terminate(), Some(0));
    assert!(a
        .proc
        .out_lines
        .iter()
        .any(|l| l == "deregistered from ZooKeeper"));
    assert_eq!(registered(&rt, &zk).len(), 2, "A's node is gone");
    let after = wait_stats(&[&b], "every device on B", |s| {
        n(&s[0], "connections") == DEVICES && n(&s[0], "fast_connects") >= on_a
    });
    assert_eq!(
        n(&after[0], "handshakes"),
        b_handshakes,
        "A's devices came back by fast connect, not by a new RSA handshake"
    );

    // C joins: once the fleet has it, devices that reconnect get a share of it.
    let mut c = Serve::start(&flags);
    c.proc
        .wait_out("registered in ZooKeeper as /mpush/cluster/cs/");
    run.wait_err(&["servers now:", &c.addr.to_string(), &b.addr.to_string()]);
    post(b.admin, "/fault/close-all");
    let end = wait_stats(&[&b, &c], "devices back over B and C", |s| {
        n(&s[0], "connections") + n(&s[1], "connections") == DEVICES && n(&s[1], "connections") > 0
    });
    assert!(
        n(&end[1], "fast_connects") > 0,
        "C took connects: {:?}",
        end[1]
    );
    assert_eq!(
        n(&end[1], "handshakes"),
        0,
        "sessions from Redis: {:?}",
        end[1]
    );

    assert_eq!(run.terminate(), Some(0), "{:?}", run.err_lines);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).unwrap();
    let _ = std::fs::remove_file(&report);
    assert!(
        !run.err_lines.iter().any(|l| l.contains("panicked")),
        "{:?}",
        run.err_lines
    );
    assert!(
        run.err_lines
            .iter()
            .any(|l| l.contains("ignoring a registration")),
        "the garbage node was seen and skipped: {:?}",
        run.err_lines
    );
    assert_eq!(json["ever_online"], DEVICES, "{json}");
    // Per server: connects went to all three, the devices online at the stop were on B and
    // C, and A's figures stay in the report.
    let by = &json["servers"];
    for s in [&a_addr, &b.addr, &c.addr] {
        assert!(n(&by[s.to_string()], "connects") > 0, "{s}: {by}");
    }
    let online = |s: &SocketAddr| by[s.to_string()]["online"].as_i64().unwrap();
    assert_eq!(online(&a_addr), 0, "{by}");
    let total = json["online"].as_i64().unwrap();
    assert_eq!(online(&b.addr) + online(&c.addr), total, "{by}");
    assert!(online(&c.addr) > 0, "{by}");
    drop((b, c));
}

#[test]
fn push_finds_the_gateway_a_serve_registered() {
    let name = "push_finds_the_gateway_a_serve_registered";
    let Some(zk) = ZkProcess::start(name) else {
        return;
    };
    let ensemble = zk.connect_string();
    let mut s = Serve::start(&["--zookeeper", ensemble.as_str(), "--gateway", "127.0.0.1:0"]);
    let gateway = s.proc.wait_out("gateway on ");
    // Both registrations: the connection server, then its gateway port.
    s.proc
        .wait_out("registered in ZooKeeper as /mpush/cluster/cs/");
    s.proc
        .wait_out("registered in ZooKeeper as /mpush/cluster/gs/");
    let out = std::process::Command::new(serve_harness::exe())
        .args([
            "push",
            "--zookeeper",
            &ensemble,
            "--to",
            "user-{i}",
            "--range",
            "0..3",
        ])
        .args(["--count", "3", "--json"])
        .output()
        .expect("push runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("gateways from ZooKeeper: {gateway}")),
        "{stdout}"
    );
    // Nobody is online: the gateway answered each push, OFFLINE.
    let json: Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("a JSON report line");
    assert_eq!(json["outcomes"]["error.1.OFFLINE"], 3, "{json}");
    drop(s);
}

/// Writes `data` into a node (`/mpush/...`) with the real server's credentials; returns what
/// it held before.
fn set_node(rt: &tokio::runtime::Runtime, zk: &ZkProcess, path: &str, data: &[u8]) -> Value {
    rt.block_on(async {
        let client = Client::connector()
            .with_auth("digest", b"mpush")
            .connect(&zk.connect_string())
            .await
            .expect("ZooKeeper session");
        let (before, _) = client.get_data(path).await.expect("get_data");
        client.set_data(path, data, None).await.expect("set_data");
        serde_json::from_slice(&before).expect("JSON node data")
    })
}

#[test]
fn a_changed_weight_is_followed() {
    let name = "a_changed_weight_is_followed";
    if !common::io_uring_or_skip(name) {
        return;
    }
    let Some(zk) = ZkProcess::start(name) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ensemble = zk.connect_string();
    let mut a = Serve::start(&["--zookeeper", ensemble.as_str(), "--weight", "2"]);
    let mut b = Serve::start(&["--zookeeper", ensemble.as_str()]);
    let a_node = a.proc.wait_out("registered in ZooKeeper as ");
    b.proc.wait_out("registered in ZooKeeper as ");
    let devices = 40;
    let mut run = Proc::spawn(&[
        "run",
        "--zookeeper",
        &ensemble,
        "--devices",
        &devices.to_string(),
        "--rate",
        "0",
        "--shards",
        "1",
        "--duration",
        "600s",
    ]);
    // Weights 2 and 1: both servers get devices.
    wait_stats(&[&a, &b], "devices on both servers", |s| {
        n(&s[0], "connections") + n(&s[1], "connections") == devices
            && n(&s[0], "connections") > 0
            && n(&s[1], "connections") > 0
    });
    // A's weight goes to 6 (an operator editing its node, as a real deployment may): the
    // fleet sees the data change and its rotation becomes A six times to B's once.
    let data = format!(
        r#"{{"attrs":{{"weight":6}},"host":"127.0.0.1","port":{}}}"#,
        a.addr.port()
    );
    let registered = set_node(&rt, &zk, &a_node, data.as_bytes());
    assert_eq!(
        registered["attrs"]["weight"], 2,
        "serve --weight: {registered}"
    );
    assert_eq!(registered["port"], a.addr.port(), "{registered}");
    run.wait_err(&[
        "servers now:",
        &format!("{}x6", a.addr),
        &format!("{}x1", b.addr),
    ]);
    // Every device reconnects (both servers close all): the new connects follow the weights.
    post(a.admin, "/fault/close-all");
    post(b.admin, "/fault/close-all");
    let end = wait_stats(&[&a, &b], "every device back", |s| {
        n(&s[0], "connections_total") + n(&s[1], "connections_total") >= 2 * devices
            && n(&s[0], "connections") + n(&s[1], "connections") == devices
    });
    let (on_a, on_b) = (n(&end[0], "connections"), n(&end[1], "connections"));
    // 6:1 gives A about 34 of 40; the old 2:1 about 27.
    assert!(on_a > 3 * on_b, "A {on_a}, B {on_b}: {end:?}");
    assert_eq!(run.terminate(), Some(0), "{:?}", run.err_lines);
    drop((a, b));
}

/// `GET /stats`'s gateway counters of a serve: single pushes handled.
fn gateway_pushes(s: &Serve) -> u64 {
    n(&stats(s.admin)["gateway"], "pushes")
}

#[test]
fn push_follows_gateways_leaving_and_joining() {
    let name = "push_follows_gateways_leaving_and_joining";
    let Some(zk) = ZkProcess::start(name) else {
        return;
    };
    let ensemble = zk.connect_string();
    let flags = ["--zookeeper", ensemble.as_str(), "--gateway", "127.0.0.1:0"];
    let start = || {
        let mut s = Serve::start(&flags);
        let g = s.proc.wait_out("gateway on ");
        s.proc
            .wait_out("registered in ZooKeeper as /mpush/cluster/gs/");
        (s, g)
    };
    let (mut a, ga) = start();
    let (b, gb) = start();
    // Paced and long (the duration only bounds it): the test stops it with SIGTERM.
    let mut push = Proc::spawn(&[
        "push",
        "--zookeeper",
        &ensemble,
        "--to",
        "user-{i}",
        "--range",
        "0..10",
        "--rate",
        "200",
        "--duration",
        "600s",
        "--connections",
        "2",
        "--json",
    ]);
    let found = push.wait_out("gateways from ZooKeeper: ");
    assert!(found.contains(&ga) && found.contains(&gb), "{found}");
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + PATIENCE;
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("both gateways get pushes", &|| {
        gateway_pushes(&a) > 0 && gateway_pushes(&b) > 0
    });

    // A stops mid-push: it deregisters, the push drops it and sends it nothing more.
    assert_eq!(a.proc.terminate(), Some(0));
    let left: u64 = push
        .wait_out(&format!("gateway {ga} left after "))
        .trim_end_matches(" requests")
        .parse()
        .unwrap();
    assert_eq!(push.wait_out("gateways now: "), gb);

    // C joins: it gets its share.
    let (c, gc) = start();
    push.wait_out(&format!("gateway {gc} joined"));
    wait("C gets pushes", &|| gateway_pushes(&c) > 0);
    let b_then = gateway_pushes(&b);
    wait("B still gets pushes", &|| gateway_pushes(&b) > b_then);

    assert_eq!(push.terminate(), Some(0), "{:?}", push.err_lines);
    let json: Value = push
        .out_lines
        .iter()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(Value::is_object)
        })
        .unwrap_or_else(|| panic!("a JSON report line in {:?}", push.out_lines));
    // Every push accounted: each has an outcome, and each went to one gateway.
    let sent = n(&json, "sent");
    let outcomes: u64 = json["outcomes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(outcomes, sent, "{json}");
    let by = json["gateways"].as_object().unwrap();
    assert_eq!(by.len(), 3, "{json}");
    let mut total = 0;
    for (g, f) in by {
        assert_eq!(
            n(f, "sent"),
            n(f, "ok") + n(f, "errors") + n(f, "no_reply"),
            "{g}: {json}"
        );
        total += n(f, "sent");
    }
    assert_eq!(total, sent, "{json}");
    // Nothing more went to A after it left.
    assert_eq!(n(&by[&ga], "sent"), left, "{json}");
    // B and C stayed up: every push they were sent they handled and answered (OFFLINE:
    // nobody is online), none lost.
    for (s, g) in [(&b, &gb), (&c, &gc)] {
        let f = &by[g.as_str()];
        assert!(n(f, "sent") > 0, "{g}: {json}");
        assert_eq!(n(f, "no_reply"), 0, "{g}: {json}");
        assert_eq!(n(f, "errors"), n(f, "sent"), "{g}: {json}");
        assert_eq!(gateway_pushes(s), n(f, "sent"), "{g}: {json}");
    }
    drop((b, c));
}
