//! The reference server's HTTP_PROXY forwarding (PROTOCOL.md 9.2) against a real HTTP backend
//! on loopback (axum, in the test): mapping, the headers the backend gets, the answer with the
//! session cipher, redirects, and the raw failure statuses (504, 408, the empty-uri 400 then
//! 502). The connection carries on meanwhile and after.

mod harness;
#[path = "common/http_backend.rs"]
mod http_backend;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use harness::client::{Client, Incoming};
use mpush_fleet::proto::message::{HttpMethod, HttpRequest, HttpResponse, ServerMessage};
use mpush_fleet::proto::{Flags, MsgId};
use mpush_fleet::server::http_proxy::HttpProxyConfig;
use mpush_fleet::server::{Server, ServerConfig, ServerHandle, SessionConfig};

/// What the backend saw of each request: method, path, headers, body.
type Seen = Arc<Mutex<Vec<(String, String, HeaderMap, Bytes)>>>;

async fn record(
    State(seen): State<Seen>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let path = uri.path().to_owned();
    seen.lock()
        .unwrap()
        .push((method.to_string(), uri.to_string(), headers, body.clone()));
    match path.as_str() {
        "/old" => (StatusCode::FOUND, [("location", "/echo")]).into_response(),
        // Never answers: the read timeout's case.
        "/stall" => std::future::pending::<axum::response::Response>().await,
        _ => (
            StatusCode::CREATED,
            [("x-backend", "yes")],
            [b"got:".as_slice(), &body].concat(),
        )
            .into_response(),
    }
}

fn backend() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .fallback(record)
        .with_state(seen.clone());
    let addr = http_backend::spawn(app);
    (addr, seen)
}

fn server(mapping: &[String]) -> ServerHandle {
    let mut cfg = HttpProxyConfig::default();
    for m in mapping {
        cfg.add_mapping(m).unwrap();
    }
    Server::start(ServerConfig {
        workers: Some(2),
        session: SessionConfig {
            http_proxy: Some(Arc::new(cfg)),
            ..SessionConfig::default()
        },
        ..ServerConfig::new()
    })
    .expect("server starts")
}

fn request(method: HttpMethod, uri: &str, headers: &str, body: &'static [u8]) -> HttpRequest {
    HttpRequest {
        method,
        uri: uri.into(),
        headers: headers.into(),
        body: Bytes::from_static(body),
    }
}

/// The next HttpResponse for `id`, and whether it came with the session cipher.
fn response(c: &mut Client, id: MsgId) -> (HttpResponse, bool) {
    match c.recv_message() {
        (f, ServerMessage::HttpResponse(r)) => {
            assert_eq!(f.msg_id, id);
            (r, f.flags.contains(Flags::CRYPTO))
        }
        other => panic!("expected HttpResponse, got {other:?}"),
    }
}

#[test]
fn forwards_to_the_mapped_backend_with_the_headers_9_2_lists() {
    let (addr, seen) = backend();
    let server = server(&[format!("api.example={addr}")]);
    let mut c = Client::connect(server.local_addr());
    c.handshake("p1");
    let req = request(
        HttpMethod::POST,
        "http://api.example/v1/orders?x=1",
        "x-app:demo\nreadTimeout:5000\n",
        b"{\"a\":1}",
    );
    let id = c.send(&req, Flags::NONE);
    let (resp, ciphered) = response(&mut c, id);
    assert!(ciphered, "a backend's answer goes with the session cipher");
    assert_eq!(
        (resp.status_code, resp.reason_phrase.as_str()),
        (201, "Created")
    );
    assert_eq!(resp.body.as_ref(), b"got:{\"a\":1}");
    assert!(resp.headers.contains("x-backend:yes\n"), "{}", resp.headers);
    assert!(
        resp.headers.contains("content-length:11\n"),
        "{}",
        resp.headers
    );

    let seen = seen.lock().unwrap();
    let (method, uri, headers, body) = &seen[0];
    assert_eq!((method.as_str(), uri.as_str()), ("POST", "/v1/orders?x=1"));
    assert_eq!(body.as_ref(), b"{\"a\":1}");
    let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(h("x-app").as_deref(), Some("demo"));
    assert_eq!(
        h("readtimeout"),
        None,
        "readTimeout is the proxy's, not the backend's"
    );
    assert_eq!(
        h("host").as_deref(),
        Some("127.0.0.1"),
        "the mapped IP, no port"
    );
    assert_eq!(h("content-length").as_deref(), Some("7"));
    assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        h("x-forwarded-port"),
        Some(c.local_addr().port().to_string())
    );
    assert_eq!(h("connection").as_deref(), Some("keep-alive"));
    // The session carries on.
    c.send_heartbeat();
    assert!(matches!(c.recv(), Ok(Incoming::Heartbeat)));
    assert_eq!(server.stats().http_proxy, 1);
}

#[test]
fn follows_a_redirect_and_takes_unmapped_hosts_as_they_are() {
    let (addr, seen) = backend();
    let server = server(&[]);
    let mut c = Client::connect(server.local_addr());
    c.handshake("p2");
    let uri = format!("http://{addr}/old");
    let id = c.send(&request(HttpMethod::GET, &uri, "", b""), Flags::NONE);
    let (resp, _) = response(&mut c, id);
    assert_eq!(resp.status_code, 201);
    let paths: Vec<String> = seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
    assert_eq!(paths, ["/old", "/echo"]);
}

#[test]
fn failures_answer_raw_with_the_real_statuses() {
    let (addr, _seen) = backend();
    // A mapped entry where nothing listens: connect fails, 504.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let server = server(&[
        format!("down.example={dead}"),
        format!("slow.example={addr}"),
    ]);
    let mut c = Client::connect(server.local_addr());
    c.handshake("p3");

    let id = c.send(
        &request(HttpMethod::GET, "http://down.example/", "", b""),
        Flags::NONE,
    );
    let (resp, ciphered) = response(&mut c, id);
    assert_eq!(
        (resp.status_code, resp.reason_phrase.as_str(), ciphered),
        (504, "Gateway Timeout", false)
    );

    // No answer within the request's own read timeout: 408.
    let slow = request(
        HttpMethod::GET,
        "http://slow.example/stall",
        "readTimeout:300\n",
        b"",
    );
    let id = c.send(&slow, Flags::NONE);
    let (resp, ciphered) = response(&mut c, id);
    assert_eq!(
        (resp.status_code, resp.reason_phrase.as_str(), ciphered),
        (408, "Request Timeout", false)
    );

    // An empty uri: 400, then a second answer, 502, for the same sessionId.
    let id = c.send(&request(HttpMethod::GET, "", "", b""), Flags::NONE);
    let (first, _) = response(&mut c, id);
    let (second, ciphered) = response(&mut c, id);
    assert_eq!(
        (first.status_code, second.status_code, ciphered),
        (400, 502, false)
    );

    // A URL that cannot be requested: 502.
    let id = c.send(&request(HttpMethod::GET, "ftp://x/", "", b""), Flags::NONE);
    let (resp, _) = response(&mut c, id);
    assert_eq!(resp.status_code, 502);

    c.send_heartbeat();
    assert!(matches!(c.recv(), Ok(Incoming::Heartbeat)));
    assert_eq!(server.stats().http_proxy, 4);
}

#[test]
fn a_backend_that_answers_garbage_gets_502_and_the_session_carries_on() {
    // Not HTTP at all, then a close: the proxy must answer 502 raw, not hang or panic.
    let liar = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = liar.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in liar.incoming().take(2) {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"\x00\xffNOT-HTTP garbage\r\n\r\n\xde\xad");
        }
    });
    let server = server(&[format!("liar.example={addr}")]);
    let mut c = Client::connect(server.local_addr());
    c.handshake("p4");
    let id = c.send(
        &request(HttpMethod::GET, "http://liar.example/", "", b""),
        Flags::NONE,
    );
    let (resp, ciphered) = response(&mut c, id);
    assert_eq!((resp.status_code, ciphered), (502, false));
    c.send_heartbeat();
    assert!(matches!(c.recv(), Ok(Incoming::Heartbeat)));
}
