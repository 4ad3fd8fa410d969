//! `mpush-fleet push` and the fleet's devices through the reference server's gateway: the
//! binary's report, and a COMPRESS-flagged push on raw content (PROTOCOL.md 8.3) that costs
//! the push, not the session. Loopback, real io_uring shards, deadlines on every wait.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mpush_fleet::control::{memory_stores, Fleet, FleetConfig};
use mpush_fleet::gateway::driver::{self, Plan, Targets};
use mpush_fleet::gateway::{GatewayPush, Outcome};
use mpush_fleet::proto::frame::{begin_frame, finish_frame};
use mpush_fleet::proto::pipeline::deflate;
use mpush_fleet::proto::{Cmd, Flags, Message, MsgId};
use mpush_fleet::server::{Server, ServerConfig, ServerHandle};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(60);

fn server() -> ServerHandle {
    Server::start(ServerConfig {
        workers: Some(2),
        gateway: Some(([127, 0, 0, 1], 0).into()),
        ..ServerConfig::new()
    })
    .expect("server starts")
}

fn fleet(server: &ServerHandle, devices: u32) -> Fleet {
    let cfg = FleetConfig {
        devices,
        shards: 1,
        pin: false,
        rate: 0.0,
        servers: vec![server.local_addr()],
        seed: Some(3),
        report_every: Duration::from_millis(50),
        ..FleetConfig::default()
    };
    let mut fleet = Fleet::start(cfg, memory_stores(1)).expect("fleet starts");
    let n = i64::from(devices);
    assert!(
        fleet.wait_until(PATIENCE, |c| c.online == n && c.bound >= devices.into()),
        "not all bound: {:?}",
        fleet.counters()
    );
    fleet
}

#[test]
fn push_binary_reports_every_outcome_by_code() {
    if !common::io_uring_or_skip("push_binary_reports_every_outcome_by_code") {
        return;
    }
    let server = server();
    let fleet = fleet(&server, 3);
    let gateway = server.gateway_addr().unwrap().to_string();
    // Users 0..4: the fleet holds 0, 1, 2 (AUTO_ACK: the devices ack), 3 is offline.
    let out = Command::new(env!("CARGO_BIN_EXE_mpush-fleet"))
        .args([
            "push",
            "--gateway",
            &gateway,
            "--to",
            "user-{i}",
            "--range",
            "0..4",
        ])
        .args([
            "--count",
            "40",
            "--ack",
            "auto",
            "--json",
            "--connections",
            "2",
        ])
        .args(["--timeout", "20s", "--fail-on", "errors.1>10"])
        .output()
        .expect("push runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("a JSON report line");
    assert_eq!(json["sent"], 40, "{json}");
    assert_eq!(json["outcomes"]["ok"], 30, "{json}");
    assert_eq!(json["outcomes"]["error.1.OFFLINE"], 10, "{json}");
    assert_eq!(json["reply_latency"]["count"], 40, "{json}");
    assert_eq!(json["unmatched_replies"], 0, "{json}");
    // The same run fails its check when the threshold is crossed: exit 1, the reason printed.
    // The gateway given by name this time: `localhost` resolves to the loopback address.
    let by_name = format!("localhost:{}", server.gateway_addr().unwrap().port());
    let out = Command::new(env!("CARGO_BIN_EXE_mpush-fleet"))
        .args([
            "push",
            "--gateway",
            &by_name,
            "--to",
            "user-{i}",
            "--range",
            "3..4",
        ])
        .args(["--fail-on", "errors.1>0"])
        .output()
        .expect("push runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL: errors.1>0"));
    // A gateway name that does not resolve is a usage error at start, naming it.
    let out = Command::new(env!("CARGO_BIN_EXE_mpush-fleet"))
        .args([
            "push",
            "--gateway",
            "no-such-gateway.invalid:3001",
            "--to",
            "u",
        ])
        .output()
        .expect("push runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-gateway.invalid"));
    let c = fleet.stop().expect("fleet stops").stats.counters;
    assert_eq!(c.pushes_received, 30);
    assert_eq!(c.acks_sent, 30);
}

#[test]
fn compress_on_raw_content_leaves_the_session_up() {
    if !common::io_uring_or_skip("compress_on_raw_content_leaves_the_session_up") {
        return;
    }
    let server = server();
    let mut fleet = fleet(&server, 1);
    // The live probe: a deflated GATEWAY_PUSH flagged COMPRESS. The server inflates it and
    // copies COMPRESS onto the device PUSH, whose content it does not deflate.
    let push = GatewayPush {
        user_id: "user-0".into(),
        client_type: 1,
        timeout: 2_500,
        content: Bytes::from_static(b"{\"content\":\"probe 21\",\"msgType\":2}"),
        ..GatewayPush::default()
    };
    let mut body = BytesMut::new();
    push.encode_body(&mut body);
    let mut frame = BytesMut::new();
    let start = begin_frame(&mut frame, Cmd::GatewayPush, Flags::COMPRESS, MsgId(9201));
    frame.extend_from_slice(&deflate(&body));
    finish_frame(&mut frame, start);
    let mut gw = TcpStream::connect(server.gateway_addr().unwrap()).unwrap();
    gw.write_all(&frame).unwrap();
    assert!(
        fleet.wait_until(PATIENCE, |c| c.push_decode_errors == 1),
        "{:?}",
        fleet.counters()
    );
    // The session is still up: an AUTO_ACK push through the gateway is received and acked.
    let plan = Plan {
        gateway: vec![server.gateway_addr().unwrap()],
        connections: 1,
        targets: Targets::Users {
            pattern: "user-0".into(),
            range: 0..1,
        },
        client_type: 1,
        flags: Flags::AUTO_ACK,
        content: Bytes::from_static(b"after"),
        rate: 0.0,
        count: Some(1),
        duration: None,
        timeout: PATIENCE,
        wire_timeout_ms: 30_000,
        routes: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(driver::run(&plan, |_| {}));
    assert_eq!(report.count(Outcome::Ok), 1, "{report:?}");
    let c = fleet.stop().expect("fleet stops").stats.counters;
    assert_eq!((c.push_decode_errors, c.decode_errors), (1, 0));
    assert_eq!(
        (c.pushes_received, c.acks_sent),
        (1, 1),
        "the broken push was not acked"
    );
    assert_eq!(
        (c.reconnects, c.handshakes),
        (0, 1),
        "one session throughout"
    );
    drop(gw);
}
