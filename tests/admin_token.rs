//! Whoever reaches the admin API can act for the whole server: with a token, every request
//! needs `Authorization: Bearer <token>` (401 otherwise); off loopback, `serve` refuses to
//! start without one (exit 2, a message that says how).

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use mpush_fleet::http::auth::Token;
use mpush_fleet::server::{Server, ServerConfig};

/// `GET /stats` with an optional Authorization header; the status code.
fn status(addr: SocketAddr, auth: Option<&str>) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(harness::client::READ_TIMEOUT))
        .unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /stats HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn admin_api_with_a_token_answers_only_who_gives_it() {
    let server = Server::start(ServerConfig {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        admin_token: Some(Token("s3cret-token".into())),
        ..ServerConfig::new()
    })
    .unwrap();
    let admin = server.admin_addr().unwrap();
    assert_eq!(status(admin, None), 401);
    assert_eq!(status(admin, Some("Bearer wrong")), 401);
    assert_eq!(status(admin, Some("Bearer s3cret-toke")), 401);
    assert_eq!(status(admin, Some("Bearer s3cret-tokenX")), 401);
    assert_eq!(status(admin, Some("Basic s3cret-token")), 401);
    assert_eq!(status(admin, Some("Bearer s3cret-token")), 200);
    server.shutdown();
}

#[test]
fn admin_api_without_a_token_stays_open_on_loopback() {
    let server = Server::start(ServerConfig {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerConfig::new()
    })
    .unwrap();
    assert_eq!(status(server.admin_addr().unwrap(), None), 200);
    server.shutdown();
}

#[test]
fn serve_refuses_a_non_loopback_admin_without_a_token() {
    // The check comes before any bind: nothing listens off loopback, even for a moment.
    let out = Command::new(env!("CARGO_BIN_EXE_mpush-fleet"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0"])
        .env_remove("MPUSH_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-token"), "{err}");
    assert!(err.contains("not a loopback address"), "{err}");
}
