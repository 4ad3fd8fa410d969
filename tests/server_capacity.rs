//! The capacity model over loopback: handshakes and fast connects over the limit wait and
//! are answered late, never refused; the admin switch changes the limits live. The counts
//! prove the waiting (`capacity_delayed`), not the clock: no assertion on elapsed time.

mod harness;

use std::net::SocketAddr;
use std::sync::Barrier;

use harness::client::{Client, Ticket};
use harness::http::{get, post, request};
use harness::wait_until;
use mpush_fleet::proto::message::ServerMessage;
use mpush_fleet::server::{
    CapacityChange, CapacityLimits, Server, ServerConfig, ServerHandle, ServerStats,
};
use serde_json::{json, Value};

fn start(handshakes_per_sec: f64) -> ServerHandle {
    let cfg = ServerConfig {
        admin: Some(([127, 0, 0, 1], 0).into()),
        workers: Some(2),
        capacity: CapacityLimits {
            handshakes_per_sec,
            burst: 1,
            ..CapacityLimits::default()
        },
        ..ServerConfig::new()
    };
    Server::start(cfg).expect("server starts")
}

/// `n` clients connect, then send their handshakes at once (a barrier, so they arrive
/// together); every one must be answered HandshakeOk. Returns the clients and tickets.
fn handshake_batch(addr: SocketAddr, tag: &str, n: usize) -> Vec<(Client, Ticket)> {
    let go = Barrier::new(n);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let go = &go;
                s.spawn(move || {
                    let mut c = Client::connect(addr);
                    go.wait();
                    // Panics on anything but HandshakeOk (an ERROR, a close, a timeout).
                    let (_, ticket) = c.handshake(&format!("{tag}-{i}"));
                    (c, ticket)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .collect()
    })
}

fn assert_none_closed(stats: &ServerStats) {
    assert!(
        stats.closes_by_reason.is_empty(),
        "nothing refused or closed: {:?}",
        stats.closes_by_reason
    );
}

#[test]
fn handshakes_over_the_limit_wait_and_the_admin_switch_lifts_it() {
    let server = start(5.0);
    let admin = server.admin_addr().expect("admin address");
    assert_eq!(get(admin, "/stats")["capacity"]["handshakes_per_sec"], 5.0);

    // 10 at once against 5/s with burst 1: the first runs, the others queue 200 ms apart.
    let first = handshake_batch(server.local_addr(), "a", 10);
    let stats = server.stats();
    assert_eq!(stats.handshakes, 10);
    assert_eq!(stats.connections, 10);
    assert_none_closed(&stats);
    assert!(stats.capacity_delayed >= 8, "delayed: {stats:?}");
    assert!(stats.capacity_wait_ms_total > 0);

    // The admin switch: a new limit, read back from /stats.
    let now = post(admin, "/capacity", json!({"handshakes_per_sec": 50}));
    assert_eq!(now["handshakes_per_sec"], 50.0);
    assert_eq!(now["fast_connects_per_sec"], 0.0, "unchanged");
    assert_eq!(get(admin, "/stats")["capacity"]["handshakes_per_sec"], 50.0);

    // 0 lifts it: a following batch is not delayed at all.
    let now = post(admin, "/capacity", json!({"handshakes_per_sec": 0}));
    assert_eq!(now["handshakes_per_sec"], 0.0);
    let stats: Value = get(admin, "/stats");
    assert_eq!(stats["capacity"]["handshakes_per_sec"], 0.0);
    let delayed = stats["capacity_delayed"].clone();
    let second = handshake_batch(server.local_addr(), "b", 10);
    let stats = get(admin, "/stats");
    assert_eq!(stats["handshakes"], 20);
    assert_eq!(stats["capacity_delayed"], delayed, "unlimited: none waited");
    drop((first, second));
}

#[test]
fn fast_connects_over_the_limit_wait_too() {
    let server = start(0.0);
    let tickets: Vec<Ticket> = handshake_batch(server.local_addr(), "fc", 5)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(server.stats().capacity_delayed, 0, "unlimited by default");
    wait_until("the handshake connections closed", || {
        server.stats().connections == 0
    });

    // In process this time: 5 fast connects at once against 2/s, burst 1.
    let limits = server.set_capacity(CapacityChange {
        fast_connects_per_sec: Some(2.0),
        ..CapacityChange::default()
    });
    assert_eq!(limits.fast_connects_per_sec, 2.0);
    assert_eq!(limits.handshakes_per_sec, 0.0, "unchanged");
    let go = Barrier::new(tickets.len());
    std::thread::scope(|s| {
        for t in &tickets {
            let go = &go;
            let addr = server.local_addr();
            s.spawn(move || {
                let mut c = Client::connect(addr);
                go.wait();
                let reply = c.fast_connect(t);
                assert!(
                    matches!(reply, ServerMessage::FastConnectOk(_)),
                    "answered, late: {reply:?}"
                );
            });
        }
    });
    let stats = server.stats();
    assert_eq!(stats.fast_connects, 5);
    assert!(stats.capacity_delayed >= 3, "delayed: {stats:?}");
}

#[test]
fn a_bad_capacity_body_is_a_400_with_the_reason() {
    let server = start(0.0);
    let admin = server.admin_addr().expect("admin address");
    let cases = [
        (json!({"handshakes_per_sec": -1}), "handshakes_per_sec"),
        (json!({"fast_connects_per_sec": "fast"}), "bad JSON body"),
        (json!({"handshakes": 5}), "unknown field"),
    ];
    for (body, reason) in cases {
        let (status, answer) = request(admin, "POST", "/capacity", Some(&body));
        assert_eq!(status, 400, "{body}: {answer}");
        let error = answer["error"].as_str().expect("error text");
        assert!(error.contains(reason), "{body}: {error}");
    }
    // Nothing changed; an empty body changes nothing and answers the limits.
    let (status, answer) = request(admin, "POST", "/capacity", None);
    assert_eq!(status, 200);
    assert_eq!(answer["handshakes_per_sec"], 0.0);
    assert_eq!(answer["burst"], 1);
    assert_eq!(get(admin, "/capacity"), answer);
}
