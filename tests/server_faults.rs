//! Every fault switch of the reference server, through the admin HTTP API, over loopback.

mod harness;

use std::time::Instant;

use harness::client::{Client, Incoming, RecvError};
use harness::http::{get, post, request};
use harness::wait_until;
use mpush_fleet::proto::message::ServerMessage;
use mpush_fleet::server::{Server, ServerConfig, ServerHandle};
use serde_json::json;

fn start() -> ServerHandle {
    let cfg = ServerConfig {
        admin: Some(([127, 0, 0, 1], 0).into()),
        workers: Some(2),
        ..ServerConfig::new()
    };
    Server::start(cfg).expect("server starts")
}

fn online(server: &ServerHandle, device: &str, user: &str) -> Client {
    let mut c = Client::connect(server.local_addr());
    c.handshake(device);
    c.bind(user);
    c
}

#[test]
fn heartbeat_echo_off_and_on() {
    let server = start();
    let admin = server.admin_addr().expect("admin");
    let mut c = online(&server, "d1", "u1");
    let f = post(admin, "/fault/heartbeat-echo/off", json!({}));
    assert_eq!(f["heartbeat_echo"], false);
    // The server handles units in order: if the heartbeat were echoed, the echo would come
    // before the OK of the bind sent after it.
    c.send_heartbeat();
    c.bind("u1");
    post(admin, "/fault/heartbeat-echo", json!({"on": true}));
    c.send_heartbeat();
    assert!(matches!(c.recv(), Ok(Incoming::Heartbeat)));
    assert_eq!(
        server.stats().heartbeats,
        2,
        "both heartbeats were received and counted"
    );
}

#[test]
fn close_all_closes_every_connection() {
    let server = start();
    let admin = server.admin_addr().expect("admin");
    let mut a = online(&server, "d1", "u1");
    let mut b = Client::connect(server.local_addr());
    wait_until("both connections registered", || {
        server.stats().connections == 2
    });
    assert_eq!(post(admin, "/fault/close-all", json!({}))["closed"], 2);
    a.expect_closed();
    b.expect_closed();
    wait_until("no connections left", || server.stats().connections == 0);
    assert_eq!(server.stats().closes_by_reason.get("close_all"), Some(&2));
    // New connections are still welcome.
    online(&server, "d2", "u2");
}

#[test]
fn reject_new_closes_at_accept() {
    let server = start();
    let admin = server.admin_addr().expect("admin");
    let mut old = online(&server, "d1", "u1");
    assert_eq!(
        post(admin, "/fault/reject-new/on", json!({}))["reject_new"],
        true
    );
    let mut c = Client::connect(server.local_addr());
    c.expect_closed();
    assert_eq!(server.stats().closes_by_reason.get("rejected"), Some(&1));
    // The open connection is unaffected.
    old.send_heartbeat();
    assert!(matches!(old.recv(), Ok(Incoming::Heartbeat)));
    post(admin, "/fault/reject-new", json!({"on": false}));
    online(&server, "d2", "u2");
}

#[test]
fn delay_every_reply() {
    let server = start();
    let admin = server.admin_addr().expect("admin");
    let mut c = online(&server, "d1", "u1");
    let f = post(admin, "/fault/delay-ms", json!({"ms": 150}));
    assert_eq!(f["delay_ms"], 150);
    let started = Instant::now();
    c.send_heartbeat();
    assert!(matches!(c.recv(), Ok(Incoming::Heartbeat)));
    // A lower bound the server guarantees (it sleeps before writing): cannot flake.
    assert!(started.elapsed().as_millis() >= 150);
    assert_eq!(post(admin, "/fault/delay-ms/0", json!({}))["delay_ms"], 0);
    assert_eq!(get(admin, "/faults")["delay_ms"], 0);
}

#[test]
fn garbage_frame_reaches_every_connection() {
    let server = start();
    let admin = server.admin_addr().expect("admin");
    let mut a = online(&server, "d1", "u1");
    let mut b = online(&server, "d2", "u2");
    assert_eq!(post(admin, "/fault/garbage", json!({}))["sent"], 2);
    for c in [&mut a, &mut b] {
        match c.recv() {
            Err(RecvError::Garbled(_)) => {}
            other => panic!("expected an undecodable frame, got {other:?}"),
        }
    }
}

#[test]
fn expire_sessions_then_fast_connect_gets_103() {
    let server = start();
    let admin = server.admin_addr().expect("admin");
    let mut c = Client::connect(server.local_addr());
    let (_, ticket) = c.handshake("d1");
    assert_eq!(server.expire_sessions().expect("store answers"), 1);
    let mut again = Client::connect(server.local_addr());
    match again.fast_connect(&ticket) {
        ServerMessage::Error(e) => assert_eq!(e.code.0, 103),
        other => panic!("expected ERROR 103, got {other:?}"),
    }
    // Through HTTP as well (nothing left to expire).
    assert_eq!(
        post(admin, "/fault/expire-sessions", json!({}))["expired"],
        0
    );
}

#[test]
fn admin_api_rejects_bad_requests() {
    let server = start();
    let admin = server.admin_addr().expect("admin");
    let (status, _) = request(admin, "GET", "/nope", None);
    assert_eq!(status, 404);
    let (status, body) = request(
        admin,
        "POST",
        "/push",
        Some(&json!({"content": "no target"})),
    );
    assert_eq!(status, 400, "{body}");
    let (status, _) = request(
        admin,
        "POST",
        "/push",
        Some(&json!({"all": true, "content_b64": "!"})),
    );
    assert_eq!(status, 400);
    let (status, _) = request(admin, "POST", "/fault/heartbeat-echo/maybe", None);
    assert_eq!(status, 400);
}
