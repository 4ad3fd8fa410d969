//! The reference server's gateway port (PROTOCOL.md 8) through real sockets: single pushes
//! in each ack mode (OK only after the device's ACK), OFFLINE, broadcasts with tags, the ack
//! race switch, the refusals and the 10 KiB close, and the gateway client's "no reply".
//! Devices are the harness's blocking client; loopback only; conditions awaited with deadlines.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use harness::client::Client;
use harness::wait_until;
use mpush_fleet::gateway::driver::{self, Plan, Targets};
use mpush_fleet::gateway::{encode_push, GatewayKickUser, GatewayPush, GatewayReply, Outcome};
use mpush_fleet::proto::message::{Bind, ErrorCode, UserBinding};
use mpush_fleet::proto::pipeline::Encoder;
use mpush_fleet::proto::{Cmd, Flags, FrameDecoder, MsgId, Unit};
use mpush_fleet::server::{Server, ServerConfig, ServerHandle};

fn start(ack_race: bool) -> ServerHandle {
    Server::start(ServerConfig {
        workers: Some(2),
        gateway: Some(([127, 0, 0, 1], 0).into()),
        gateway_ack_race: ack_race,
        ..ServerConfig::new()
    })
    .expect("server starts")
}

/// A device (osName android: client type 1) bound as `user` with `tags`.
fn device(server: &ServerHandle, user: &str, tags: &str) -> Client {
    let mut c = Client::connect(server.local_addr());
    c.handshake(&format!("dev-{user}"));
    let bind = Bind(UserBinding {
        user_id: user.into(),
        tags: tags.into(),
        ..Default::default()
    });
    c.send(&bind, Flags::NONE);
    assert_eq!(c.recv_ok().cmd, Cmd::Bind as u8);
    c
}

/// A raw gateway connection, as upstream's: no handshake.
struct Gw {
    stream: TcpStream,
    rx: BytesMut,
}

impl Gw {
    fn connect(server: &ServerHandle) -> Gw {
        let stream = TcpStream::connect(server.gateway_addr().expect("gateway port")).unwrap();
        stream.set_read_timeout(Some(harness::PATIENCE)).unwrap();
        Gw {
            stream,
            rx: BytesMut::new(),
        }
    }

    fn push(&mut self, id: i32, user: &str, flags: Flags, content: &[u8]) {
        let push = GatewayPush {
            user_id: user.into(),
            client_type: 1,
            timeout: 2_500,
            content: Bytes::copy_from_slice(content),
            ..GatewayPush::default()
        };
        let mut out = BytesMut::new();
        encode_push(&mut out, &push, MsgId(id), flags);
        self.stream.write_all(&out).unwrap();
    }

    /// The next reply, or `None` when the gateway closed the connection.
    fn recv(&mut self) -> Option<(MsgId, GatewayReply)> {
        loop {
            if let Some(Unit::Frame(f)) = FrameDecoder::default().decode(&mut self.rx).unwrap() {
                return Some((
                    f.msg_id,
                    GatewayReply::decode(&f).unwrap().expect("OK/ERROR"),
                ));
            }
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
            }
        }
    }
}

#[test]
fn single_pushes_in_each_ack_mode_and_ok_only_after_the_ack() {
    let server = start(false);
    let mut dev = device(&server, "u1", "");
    let mut gw = Gw::connect(&server);
    // NO_ACK: OK once the write succeeded; the device acks nothing.
    gw.push(1, "u1", Flags::NONE, b"hello none");
    let (_, content) = dev.recv_push();
    assert_eq!(&content[..], b"hello none");
    let (id, reply) = gw.recv().unwrap();
    assert_eq!((id, reply.code(), reply.cmd()), (MsgId(1), 0, 16));
    assert!(reply.data().contains("\"success-end\"") && !reply.data().contains("waiting-ack"));
    for (gw_id, flags) in [(2, Flags::AUTO_ACK), (3, Flags::BIZ_ACK)] {
        gw.push(gw_id, "u1", flags, b"hello ack");
        let (f, _) = dev.recv_push();
        assert!(
            f.flags.contains(flags),
            "the ack flag reaches the device: {:?}",
            f.flags
        );
        // The device has the push but has not acked: the gateway has sent nothing yet.
        let before = server.stats().gateway;
        assert_eq!(before.ok, (gw_id - 1) as u64, "{before:?}");
        dev.ack(f.msg_id);
        let (id, reply) = gw.recv().unwrap();
        assert_eq!((id, reply.code()), (MsgId(gw_id), 0));
        assert!(reply.data().contains("\"waiting-ack\""), "{}", reply.data());
        assert!(
            reply.data().contains("\"userId\":\"u1\""),
            "{}",
            reply.data()
        );
    }
    let s = server.stats().gateway;
    assert_eq!(
        (s.pushes, s.ok, s.acks_matched, s.acks_unmatched),
        (3, 3, 2, 0)
    );
}

#[test]
fn offline_user_and_client_type_zero_get_offline() {
    let server = start(false);
    let _dev = device(&server, "here", "");
    let mut gw = Gw::connect(&server);
    gw.push(7, "nobody", Flags::AUTO_ACK, b"x");
    let (id, reply) = gw.recv().unwrap();
    assert_eq!((id, reply.code()), (MsgId(7), ErrorCode::OFFLINE.0));
    let GatewayReply::Error(e) = &reply else {
        panic!("{reply:?}")
    };
    assert_eq!(e.reason, "user offline");
    assert!(
        e.data.contains("\"offline-end\"") && e.data.contains("\"clientType\":1"),
        "{}",
        e.data
    );
    // clientType 0 to an online user: no route of that type (live: OFFLINE).
    let push = GatewayPush {
        user_id: "here".into(),
        timeout: 2_500,
        content: Bytes::from_static(b"x"),
        ..GatewayPush::default()
    };
    let mut out = BytesMut::new();
    encode_push(&mut out, &push, MsgId(8), Flags::NONE);
    gw.stream.write_all(&out).unwrap();
    let (id, reply) = gw.recv().unwrap();
    assert_eq!((id, reply.code()), (MsgId(8), 1));
    assert!(!reply.data().contains("clientType"), "{}", reply.data());
}

#[test]
fn broadcast_with_tags_reaches_exactly_the_matching_devices() {
    let server = start(false);
    let mut vip = device(&server, "b-vip", "vip,test");
    let mut supervip = device(&server, "b-super", "supervip");
    let mut basic = device(&server, "b-basic", "basic");
    let mut untagged = device(&server, "b-none", "");
    let mut gw = Gw::connect(&server);
    let push = GatewayPush {
        content: Bytes::from_static(b"sale"),
        tags: r#"["vip"]"#.into(),
        ..GatewayPush::default()
    };
    let mut out = BytesMut::new();
    encode_push(&mut out, &push, MsgId(40), Flags::AUTO_ACK);
    gw.stream.write_all(&out).unwrap();
    // One OK, data null, once every matching device's write completed.
    let (id, reply) = gw.recv().unwrap();
    assert_eq!((id, reply.code(), reply.data()), (MsgId(40), 0, ""));
    for d in [&mut vip, &mut supervip] {
        let (f, content) = d.recv_push();
        assert_eq!(&content[..], b"sale");
        assert!(
            !f.flags.contains(Flags::AUTO_ACK),
            "broadcasts carry no ack flag"
        );
    }
    // The others got nothing: the next thing each receives is a push sent after the OK.
    for (d, user) in [(&mut basic, "b-basic"), (&mut untagged, "b-none")] {
        gw.push(41, user, Flags::NONE, b"after");
        assert_eq!(&d.recv_push().1[..], b"after", "{user} got the broadcast");
        assert_eq!(gw.recv().unwrap().1.code(), 0);
    }
    assert_eq!(server.stats().gateway.broadcast_device_pushes, 2);
    // No match at all: OK at once. A condition matches nobody (no JavaScript engine).
    for (tags, condition) in [(r#"["nomatch"]"#, ""), ("", "tags!=null")] {
        let push = GatewayPush {
            content: Bytes::from_static(b"none"),
            tags: tags.into(),
            condition: condition.into(),
            ..GatewayPush::default()
        };
        let mut out = BytesMut::new();
        encode_push(&mut out, &push, MsgId(42), Flags::NONE);
        gw.stream.write_all(&out).unwrap();
        assert_eq!(
            gw.recv().unwrap(),
            (MsgId(42), GatewayReply::ok(String::new()))
        );
    }
    assert_eq!(server.stats().gateway.broadcast_device_pushes, 2);
}

fn plan(gateway: SocketAddr, user: &str, flags: Flags, timeout: Duration) -> Plan {
    Plan {
        gateway: vec![gateway],
        connections: 1,
        targets: Targets::Users {
            pattern: user.into(),
            range: 0..1,
        },
        client_type: 1,
        flags,
        content: Bytes::from_static(b"race"),
        rate: 0.0,
        count: Some(1),
        duration: None,
        timeout,
        wire_timeout_ms: 400,
        routes: None,
    }
}

#[test]
fn the_ack_race_switch_gives_no_reply_though_the_device_received_and_acked() {
    let server = start(true);
    let mut dev = device(&server, "r1", "");
    let acker = std::thread::spawn(move || {
        let (f, content) = dev.recv_push();
        dev.ack(f.msg_id);
        content
    });
    let gateway = server.gateway_addr().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(driver::run(
        &plan(gateway, "r1", Flags::AUTO_ACK, Duration::from_secs(1)),
        |_| {},
    ));
    assert_eq!(
        &acker.join().unwrap()[..],
        b"race",
        "the device received it"
    );
    assert_eq!(
        (report.sent, report.count(Outcome::NoReply)),
        (1, 1),
        "{report:?}"
    );
    wait_until("the ACK was dropped", || {
        server.stats().gateway.acks_unmatched == 1
    });
    assert_eq!(server.stats().gateway.ok, 0);
}

#[test]
fn the_client_matches_pipelined_replies_on_several_connections() {
    let server = start(false);
    let devices: Vec<Client> = (0..3)
        .map(|i| device(&server, &format!("p-{i}"), ""))
        .collect();
    let acked: Vec<_> = devices
        .into_iter()
        .map(|mut d| {
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let (f, _) = d.recv_push();
                    d.ack(f.msg_id);
                }
            })
        })
        .collect();
    let mut p = plan(
        server.gateway_addr().unwrap(),
        "p-{i}",
        Flags::AUTO_ACK,
        harness::PATIENCE,
    );
    p.targets = Targets::Users {
        pattern: "p-{i}".into(),
        range: 0..3,
    };
    (p.count, p.connections, p.wire_timeout_ms) = (Some(30), 2, 20_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(driver::run(&p, |_| {}));
    for t in acked {
        t.join().unwrap();
    }
    assert_eq!(
        (report.sent, report.count(Outcome::Ok), report.unmatched),
        (30, 30, 0),
        "{report:?}"
    );
    assert_eq!(report.reply_latency_us.len(), 30);
}

#[test]
fn refusals_get_error_101_or_100_and_a_close() {
    let server = start(false);
    // A heartbeat: ERROR {1, 101}, sessionId 0, close.
    let mut gw = Gw::connect(&server);
    gw.stream.write_all(&[0xDF]).unwrap();
    let (id, reply) = gw.recv().unwrap();
    assert_eq!((id, reply.cmd(), reply.code()), (MsgId(0), 1, 101));
    assert!(gw.recv().is_none(), "closed");
    // GATEWAY_KICK: ERROR {14, 101}, close.
    let mut gw = Gw::connect(&server);
    let mut out = BytesMut::new();
    Encoder::default().write_raw(
        &mut out,
        &GatewayKickUser::default(),
        MsgId(9101),
        Flags::NONE,
    );
    gw.stream.write_all(&out).unwrap();
    assert_eq!(
        gw.recv().map(|(i, r)| (i, r.cmd(), r.code())),
        Some((MsgId(9101), 14, 101))
    );
    assert!(gw.recv().is_none(), "closed");
    // A body shorter than its fields (the live probe's bytes): ERROR {16, 100}, close.
    let mut gw = Gw::connect(&server);
    gw.stream
        .write_all(&[
            0, 0, 0, 4, 16, 0, 0, 0, 0, 0, 0x23, 0x8e, 0, 0, 5, 0x61, 0x62,
        ])
        .unwrap();
    let (id, reply) = gw.recv().unwrap();
    assert_eq!((id, reply.cmd(), reply.code()), (MsgId(9102), 16, 100));
    let GatewayReply::Error(e) = reply else {
        panic!()
    };
    assert_eq!(e.reason, "handle message error");
    assert!(gw.recv().is_none(), "closed");
    assert_eq!(server.stats().gateway.refusals, 3);
}

#[test]
fn a_30000_byte_push_is_read_in_full_then_closed_with_no_reply() {
    let server = start(false);
    let mut dev = device(&server, "big", "");
    let mut gw = Gw::connect(&server);
    gw.push(1, "big", Flags::NONE, &vec![b'x'; 30_000]);
    assert!(gw.recv().is_none(), "no reply, then the close");
    assert!(gw.rx.is_empty(), "not a byte of reply");
    // The device got nothing: its next push is one sent on a fresh connection.
    let mut gw = Gw::connect(&server);
    gw.push(2, "big", Flags::NONE, b"small");
    assert_eq!(&dev.recv_push().1[..], b"small");
    assert_eq!(gw.recv().unwrap().0, MsgId(2));
}
