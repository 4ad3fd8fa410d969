//! The reference server's session cycle (PROTOCOL.md 6) driven by the blocking test client
//! over loopback: handshake, bind, heartbeat, pushes and acks through the admin API, fast
//! connect, ERROR 103 after expiry, and KICK on a second bind.

mod harness;

use harness::client::{Client, Incoming};
use harness::http::{get, post};
use harness::wait_until;
use mpush_fleet::proto::message::ServerMessage;
use mpush_fleet::proto::{Flags, MsgId};
use mpush_fleet::server::{AckMode, PushTarget, Server, ServerConfig, ServerHandle};
use serde_json::{json, Value};

fn start() -> ServerHandle {
    let cfg = ServerConfig {
        admin: Some(([127, 0, 0, 1], 0).into()),
        workers: Some(2),
        ..ServerConfig::new()
    };
    Server::start(cfg).expect("server starts")
}

fn push_record(pushes: &Value, msg_id: i64) -> Value {
    pushes["pushes"]
        .as_array()
        .expect("pushes array")
        .iter()
        .find(|p| p["msg_id"] == msg_id)
        .cloned()
        .unwrap_or_else(|| panic!("push {msg_id} not listed in {pushes}"))
}

#[test]
fn full_cycle_with_acks_fast_connect_and_expiry() {
    let server = start();
    let admin = server.admin_addr().expect("admin address");
    let mut c = Client::connect(server.local_addr());
    let (ok, ticket) = c.handshake("device-1");
    assert_eq!(
        ok.heartbeat, 180_000,
        "the real server's default min = max = 3 minutes"
    );
    assert_eq!(ok.session_id.len(), 32);
    c.bind("alice");

    c.send_heartbeat();
    assert!(
        matches!(c.recv(), Ok(Incoming::Heartbeat)),
        "heartbeat echoed"
    );

    // AUTO_ACK through the admin API: the client acks at once.
    let body = json!({"user_id": "alice", "content": "hello", "ack": "auto"});
    let sent = post(admin, "/push", body);
    assert_eq!(sent["sent"], 1);
    let auto_id = sent["msg_ids"][0].as_i64().expect("msg id");
    let (f, content) = c.recv_push();
    assert_eq!(&content[..], b"hello");
    assert_eq!(f.msg_id, MsgId(auto_id as i32));
    assert!(f.flags.contains(Flags::AUTO_ACK) && f.flags.contains(Flags::CRYPTO));
    c.ack(f.msg_id);

    // BIZ_ACK with binary content; the "application" takes it, then the client acks.
    let body = json!({"user_id": "alice", "content_b64": "AAEC/w==", "ack": "biz"});
    let biz_id = post(admin, "/push", body)["msg_ids"][0]
        .as_i64()
        .expect("msg id");
    let (f, content) = c.recv_push();
    assert_eq!(&content[..], &[0, 1, 2, 0xFF]);
    assert!(f.flags.contains(Flags::BIZ_ACK));

    // No ack asked: stays unacked.
    let none_id = post(
        admin,
        "/push",
        json!({"user_id": "alice", "content": "fyi"}),
    )["msg_ids"][0]
        .as_i64()
        .expect("msg id");
    let (f, _) = c.recv_push();
    assert!(!f.flags.contains(Flags::AUTO_ACK) && !f.flags.contains(Flags::BIZ_ACK));

    wait_until("the auto ack is recorded", || {
        push_record(&get(admin, "/acks"), auto_id)["acked"] == true
    });
    assert_eq!(push_record(&get(admin, "/pushes"), biz_id)["acked"], false);
    c.ack(MsgId(biz_id as i32));
    wait_until("the biz ack is recorded", || {
        push_record(&get(admin, "/pushes"), biz_id)["acked"] == true
    });
    let pushes = get(admin, "/pushes");
    assert_eq!(push_record(&pushes, none_id)["acked"], false);
    assert_eq!(push_record(&pushes, biz_id)["ack"], "biz");

    // Reconnect with fast connect: the stored cipher carries the new connection.
    drop(c);
    let mut c = Client::connect(server.local_addr());
    match c.fast_connect(&ticket) {
        ServerMessage::FastConnectOk(ok) => assert_eq!(ok.heartbeat, 180_000),
        other => panic!("expected FastConnectOk, got {other:?}"),
    }
    c.bind("alice");
    let r = server.push(
        PushTarget::User("alice".into()),
        "again".into(),
        AckMode::Auto,
    );
    assert_eq!(r.sent, 1);
    let (f, content) = c.recv_push();
    assert_eq!((&content[..], f.msg_id.0), (&b"again"[..], r.msg_ids[0]));

    // Expire every session: a fast connect now gets ERROR 103, and the client handshakes
    // again on the same connection.
    let expired = post(admin, "/fault/expire-sessions", json!({}));
    assert!(expired["expired"].as_u64().expect("count") >= 1);
    let mut c2 = Client::connect(server.local_addr());
    match c2.fast_connect(&ticket) {
        ServerMessage::Error(e) => {
            assert_eq!(
                (e.cmd, e.code.0, e.reason.as_str()),
                (7, 103, "session expired")
            );
        }
        other => panic!("expected ERROR 103, got {other:?}"),
    }
    let (_, ticket2) = c2.handshake("device-1");
    assert_ne!(ticket2.session_id, ticket.session_id);

    // ERROR 104: somebody else's session id.
    let mut c3 = Client::connect(server.local_addr());
    let mut stolen = ticket2.clone();
    stolen.device_id = "device-2".into();
    match c3.fast_connect(&stolen) {
        ServerMessage::Error(e) => {
            assert_eq!((e.code.0, e.reason.as_str()), (104, "invalid device"))
        }
        other => panic!("expected ERROR 104, got {other:?}"),
    }

    let stats = get(admin, "/stats");
    assert_eq!(stats["handshakes"], 2);
    assert_eq!(stats["fast_connects"], 1);
    assert_eq!(stats["binds"], 2);
    assert_eq!(stats["heartbeats"], 1);
    assert_eq!(stats["pushes_sent"], 4);
    assert!(stats["acks_received"].as_u64().expect("acks") >= 2);
    assert_eq!(stats["errors_by_code"]["103"], 1);
    assert_eq!(stats["errors_by_code"]["104"], 1);
    assert!(stats["connections_total"].as_u64().expect("total") >= 4);
    server.shutdown();
}

#[test]
fn second_bind_kicks_the_older_connection() {
    let server = start();
    let admin = server.admin_addr().expect("admin address");
    let mut old = Client::connect(server.local_addr());
    old.handshake("phone-1");
    old.bind("bob");
    let mut new = Client::connect(server.local_addr());
    new.handshake_as("phone-2", "iOS", 180_000); // same client type as android: mobile
    new.bind("bob");
    match old.recv_message() {
        (f, ServerMessage::Kick(k)) => {
            assert!(
                f.flags.contains(Flags::CRYPTO),
                "KICK goes with the session cipher"
            );
            assert_eq!(
                (k.device_id.as_str(), k.user_id.as_str()),
                ("phone-1", "bob")
            );
        }
        other => panic!("expected KICK, got {other:?}"),
    }
    // A desktop binding the same user is another client type: nobody is kicked, and a push
    // to the user reaches both routes.
    let mut pc = Client::connect(server.local_addr());
    pc.handshake_as("pc-1", "Windows", 180_000);
    pc.bind("bob");
    let r = server.push(PushTarget::User("bob".into()), "both".into(), AckMode::None);
    assert_eq!(r.sent, 2);
    assert_eq!(&new.recv_push().1[..], b"both");
    assert_eq!(&pc.recv_push().1[..], b"both");

    // The admin kick sends KICK to every route of the user.
    assert_eq!(post(admin, "/kick", json!({"user_id": "bob"}))["kicked"], 2);
    assert!(matches!(new.recv_message().1, ServerMessage::Kick(_)));
    assert!(matches!(pc.recv_message().1, ServerMessage::Kick(_)));
    assert_eq!(server.stats().kicks, 3);

    // Unbind, then pushes no longer reach that connection.
    pc.unbind("bob");
    assert_eq!(
        server
            .push(PushTarget::User("bob".into()), "x".into(), AckMode::None)
            .sent,
        1
    );
    assert_eq!(server.stats().unbinds, 1);
}

#[test]
fn peers_and_push_to_all() {
    let server = start();
    let admin = server.admin_addr().expect("admin address");
    let mut a = Client::connect(server.local_addr());
    let mut b = Client::connect(server.local_addr());
    a.handshake("d-a");
    b.handshake("d-b");
    a.bind("ua");
    b.bind("ub");
    let peers = get(admin, "/peers");
    let peers: Vec<String> = serde_json::from_value(peers["peers"].clone()).expect("peer list");
    assert!(peers.contains(&a.local_addr().to_string()));
    assert!(peers.contains(&b.local_addr().to_string()));
    let r = post(admin, "/push", json!({"all": true, "content": "everyone"}));
    assert_eq!(r["sent"], 2);
    assert_eq!(&a.recv_push().1[..], b"everyone");
    assert_eq!(&b.recv_push().1[..], b"everyone");
    // A user nobody bound: nothing sent.
    assert_eq!(
        post(admin, "/push", json!({"user_id": "ghost", "content": "?"}))["sent"],
        0
    );
}
