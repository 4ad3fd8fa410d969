//! Bad input closes only the connection it came on, with the ERROR the real server sends
//! first (if any), and never a panic: unsupported commands, oversized and garbled frames,
//! parameter errors, the HTTP proxy, and the idle check.

mod harness;

use bytes::BytesMut;
use harness::client::{Client, Incoming};
use harness::wait_until;
use mpush_fleet::proto::message::{HttpMethod, HttpRequest};
use mpush_fleet::proto::{encode_frame, Cmd, Flags, MsgId};
use mpush_fleet::server::{Server, ServerConfig, ServerHandle, SessionConfig};

fn start_with(cfg: ServerConfig) -> ServerHandle {
    Server::start(ServerConfig {
        workers: Some(2),
        ..cfg
    })
    .expect("server starts")
}

fn start() -> ServerHandle {
    start_with(ServerConfig::new())
}

/// A bystander that must stay unaffected.
fn bystander(server: &ServerHandle) -> Client {
    let mut c = Client::connect(server.local_addr());
    c.handshake("bystander");
    c.bind("calm");
    c
}

fn still_fine(c: &mut Client) {
    c.send_heartbeat();
    assert!(
        matches!(c.recv(), Ok(Incoming::Heartbeat)),
        "the other connection carries on"
    );
}

fn frame(cmd: Cmd, flags: Flags, id: i32, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(&mut out, cmd, flags, MsgId(id), body);
    out
}

#[test]
fn unsupported_command_gets_error_101_and_close() {
    let server = start();
    let mut other = bystander(&server);
    let mut c = Client::connect(server.local_addr());
    c.write_bytes(&frame(Cmd::Login, Flags::NONE, 1, b""))
        .expect("write");
    let e = c.recv_error();
    assert_eq!(
        (e.cmd, e.code.0, e.reason.as_str()),
        (3, 101, "unsupported command")
    );
    c.expect_closed();
    // An unknown command byte is treated the same way.
    let mut c = Client::connect(server.local_addr());
    let mut raw = frame(Cmd::Login, Flags::NONE, 1, b"");
    raw[4] = 99;
    c.write_bytes(&raw).expect("write");
    assert_eq!(c.recv_error().code.0, 101);
    c.expect_closed();
    still_fine(&mut other);
    assert_eq!(server.stats().errors_by_code.get(&101), Some(&2));
}

#[test]
fn oversized_frame_closes_only_that_connection() {
    let server = start_with(ServerConfig {
        session: SessionConfig {
            limits: mpush_fleet::proto::BodyLimits {
                max_body: 1000,
                ..Default::default()
            },
            ..SessionConfig::default()
        },
        ..ServerConfig::new()
    });
    let mut other = bystander(&server);
    let mut c = Client::connect(server.local_addr());
    c.handshake("big");
    // Only the header: the length alone is over the limit.
    c.write_bytes(&frame(Cmd::Push, Flags::NONE, 5, &[0; 1001])[..13])
        .expect("write");
    c.expect_closed();
    // A body at the limit is fine.
    let mut ok = Client::connect(server.local_addr());
    ok.write_bytes(&frame(Cmd::Push, Flags::NONE, 5, &[1; 1000]))
        .expect("write");
    ok.send_heartbeat();
    assert!(matches!(ok.recv(), Ok(Incoming::Heartbeat)));
    // A negative length.
    let mut neg = Client::connect(server.local_addr());
    neg.write_bytes(&[0xFF, 0xFF, 0xFF, 0xF0, 15, 0, 0, 0, 0, 0, 0, 1, 0])
        .expect("write");
    neg.expect_closed();
    still_fine(&mut other);
    wait_until("both bad frames counted", || {
        server.stats().closes_by_reason.get("bad_frame") == Some(&2)
    });
}

#[test]
fn garbled_frames_get_error_100_and_close() {
    let server = start();
    let mut other = bystander(&server);
    // After the handshake: a Bind flagged CRYPTO whose body is no AES ciphertext.
    let mut c = Client::connect(server.local_addr());
    c.handshake("g1");
    c.write_bytes(&frame(Cmd::Bind, Flags::CRYPTO, 9, &[0xAB; 7]))
        .expect("write");
    let e = c.recv_error();
    assert_eq!(
        (e.cmd, e.code.0, e.reason.as_str()),
        (5, 100, "handle message error")
    );
    c.expect_closed();
    // Before it: a handshake whose RSA body is garbage.
    let mut c = Client::connect(server.local_addr());
    c.write_bytes(&frame(Cmd::Handshake, Flags::CRYPTO, 1, &[0x42; 128]))
        .expect("write");
    assert_eq!(c.recv_error().code.0, 100);
    c.expect_closed();
    // A truncated FastConnect body.
    let mut c = Client::connect(server.local_addr());
    c.write_bytes(&frame(Cmd::FastConnect, Flags::NONE, 1, &[0, 40, b'x']))
        .expect("write");
    assert_eq!(c.recv_error().code.0, 100);
    c.expect_closed();
    // A deflate bomb-ish garbage body flagged COMPRESS.
    let mut c = Client::connect(server.local_addr());
    c.write_bytes(&frame(Cmd::Push, Flags::COMPRESS, 1, b"not zlib"))
        .expect("write");
    assert_eq!(c.recv_error().code.0, 100);
    c.expect_closed();
    still_fine(&mut other);
    wait_until("garbled closes counted", || {
        server.stats().closes_by_reason.get("garbled") == Some(&4)
    });
}

#[test]
fn parameter_errors_close_with_their_reasons() {
    let server = start();
    let mut c = Client::connect(server.local_addr());
    let hs = Client::handshake_fields("", "android", 180_000);
    c.send_handshake(&hs);
    let e = c.recv_error();
    assert_eq!(
        (e.cmd, e.code.0, e.reason.as_str()),
        (2, 0, "Param invalid")
    );
    c.expect_closed();

    let mut c = Client::connect(server.local_addr());
    c.send_bind("early");
    assert_eq!(c.recv_error().reason, "not handshake");
    c.expect_closed();

    let mut c = Client::connect(server.local_addr());
    c.handshake("p1");
    c.send_bind("");
    assert_eq!(c.recv_error().reason, "invalid param");
    c.expect_closed();

    // A repeated handshake is answered ERROR 102, and the connection stays.
    let mut c = Client::connect(server.local_addr());
    let (_, ticket) = c.handshake("p2");
    let hs = Client::handshake_fields("p2", "android", 180_000);
    c.send(&hs, Flags::NONE); // with the session cipher, as the client's cipher now is
    let e = c.recv_error();
    assert_eq!((e.code.0, e.reason.as_str()), (102, "repeat handshake"));
    assert_eq!(c.cipher(), Some(&ticket.cipher));
    c.bind("still-here");
}

#[test]
fn http_proxy_is_refused_by_default() {
    // The real server's default (`proxy-enabled=false`): ERROR 101 and a close.
    let server = start();
    let mut by = bystander(&server);
    let mut c = Client::connect(server.local_addr());
    c.handshake("h2");
    let req = HttpRequest {
        method: HttpMethod::POST,
        uri: "http://upstream.invalid/api".into(),
        headers: "a:b\n".into(),
        body: bytes::Bytes::from_static(b"{}"),
    };
    c.send(&req, Flags::NONE);
    let e = c.recv_error();
    assert_eq!((e.code.0, e.reason.as_str()), (101, "unsupported command"));
    c.expect_closed();
    still_fine(&mut by);
}

#[test]
fn silent_connection_is_closed_by_the_idle_check() {
    // Short periods so the test is quick; the test waits on the close, not on a clock.
    let server = start_with(ServerConfig {
        session: SessionConfig {
            min_heartbeat_ms: 100,
            max_heartbeat_ms: 100,
            pre_handshake_heartbeat_ms: 100,
            ..SessionConfig::default()
        },
        ..ServerConfig::new()
    });
    let mut c = Client::connect(server.local_addr());
    let (ok, _) = c.handshake_as("quiet", "android", 100);
    assert_eq!(ok.heartbeat, 100);
    c.expect_closed();
    assert_eq!(
        server.stats().closes_by_reason.get("idle_timeout"),
        Some(&1)
    );
}
