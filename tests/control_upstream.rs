//! Device-originated traffic through the control API, against a `serve` process whose HTTP
//! proxy maps a host to a backend in this test: a device PUSH (AUTO_ACK answered by the
//! server's ACK; BIZ_ACK timing out as PROTOCOL.md 9.1 says; no ack: sent), and an HTTP
//! request through the device's session (the backend's answer, and the server's raw 408 and
//! 504), plus the requests the API refuses with a reason.

mod common;
mod harness;
#[path = "common/http_backend.rs"]
mod http_backend;
#[path = "common/serve.rs"]
mod serve_harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::Value;
use serve_harness::{Proc, Serve};

fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect to the control API");
    s.set_read_timeout(Some(harness::client::READ_TIMEOUT))
        .unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("a response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn backend(uri: axum::http::Uri, body: Bytes) -> axum::response::Response {
    match uri.path() {
        // Never answers: the server's read timeout answers 408.
        "/stall" => std::future::pending::<axum::response::Response>().await,
        _ => (
            StatusCode::CREATED,
            [("x-backend", "yes")],
            [b"got:".as_slice(), &body].concat(),
        )
            .into_response(),
    }
}

#[test]
fn device_push_and_http_proxy_through_the_control_api() {
    let name = "device_push_and_http_proxy_through_the_control_api";
    if !common::io_uring_or_skip(name) {
        return;
    }
    let backend = http_backend::spawn(axum::Router::new().fallback(backend));
    // A port nothing listens on: the server's connect fails (504).
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let api_map = format!("api.test={backend}");
    let down_map = format!("down.test=127.0.0.1:{closed_port}");
    let serve = Serve::start(&["--http-proxy", &api_map, "--http-proxy", &down_map]);
    let server = serve.addr.to_string();
    let mut run = Proc::spawn(&[
        "run",
        "--server",
        &server,
        "--devices",
        "2",
        "--rate",
        "0",
        "--no-pin",
        "--control",
        "127.0.0.1:0",
        "--duration",
        "300s",
    ]);
    let line = run.wait_err(&["control API on http://"]);
    let ctl: SocketAddr = line.rsplit("http://").next().unwrap().parse().unwrap();
    for id in ["device-0", "device-1"] {
        harness::wait_until(&format!("{id} bound"), || {
            let (_, v) = call(ctl, "GET", &format!("/devices/{id}"), "");
            v["bound"] == true
        });
    }

    // PUSH: AUTO_ACK gets the server's ACK; BIZ_ACK is never acked (9.1); no flag: sent.
    let (status, v) = call(
        ctl,
        "POST",
        "/devices/device-0/push",
        r#"{"content":"up","ack":"auto"}"#,
    );
    assert_eq!((status, v["outcome"].as_str()), (200, Some("acked")), "{v}");
    assert_eq!(v["device"], "device-0");
    let (status, v) = call(
        ctl,
        "POST",
        "/devices/device-0/push",
        r#"{"contentB64":"AAEC","ack":"biz","timeoutMs":300}"#,
    );
    assert_eq!(
        (status, v["outcome"].as_str()),
        (504, Some("timeout")),
        "{v}"
    );
    let (status, v) = call(
        ctl,
        "POST",
        "/devices/device-0/push",
        r#"{"content":"fire"}"#,
    );
    assert_eq!((status, v["outcome"].as_str()), (200, Some("sent")), "{v}");

    // HTTP_PROXY: the backend's answer through the session.
    let (status, v) = call(
        ctl,
        "POST",
        "/devices/device-1/http",
        r#"{"method":"POST","uri":"http://api.test/echo","headers":{"x-a":"1"},"body":"hello"}"#,
    );
    assert_eq!(
        (status, v["outcome"].as_str()),
        (200, Some("response")),
        "{v}"
    );
    let r = &v["response"];
    assert_eq!(r["status"], 201, "{v}");
    assert_eq!(r["body"], "got:hello", "{v}");
    assert_eq!(r["raw"], false, "{v}");
    assert!(
        r["headers"].as_str().unwrap().contains("x-backend:yes"),
        "{v}"
    );
    // The server's own failures, raw: no answer in the read timeout, and no backend at all.
    let (status, v) = call(
        ctl,
        "POST",
        "/devices/device-1/http",
        r#"{"uri":"http://api.test/stall","readTimeoutMs":300}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            v["response"]["status"].as_i64(),
            v["response"]["raw"].as_bool()
        ),
        (Some(408), Some(true)),
        "{v}"
    );
    let (status, v) = call(
        ctl,
        "POST",
        "/devices/device-1/http",
        r#"{"uri":"http://down.test/x"}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            v["response"]["status"].as_i64(),
            v["response"]["raw"].as_bool()
        ),
        (Some(504), Some(true)),
        "{v}"
    );

    // What the API refuses, and why.
    for (path, body, want) in [
        ("/devices/device-0/push", r#"{"ack":"sometimes"}"#, 400),
        (
            "/devices/device-0/push",
            r#"{"content":"a","contentB64":"YQ=="}"#,
            400,
        ),
        ("/devices/device-0/push", r#"{"contentB64":"***"}"#, 400),
        ("/devices/device-0/push", r#"{"timeoutMs":0}"#, 400),
        (
            "/devices/device-1/http",
            r#"{"method":"PATCH","uri":"http://api.test/"}"#,
            400,
        ),
        (
            "/devices/device-1/http",
            r#"{"uri":"http://api.test/","headers":{"a:b":"c"}}"#,
            400,
        ),
        ("/devices/device-1/http", r#"{"headers":{}}"#, 400),
        ("/devices/device-9/push", r#"{"content":"x"}"#, 404),
    ] {
        let (status, v) = call(ctl, "POST", path, body);
        assert_eq!(status, want, "{path} {body}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    // A device that is down: 409, the session's outcome named.
    call(ctl, "POST", "/devices/device-0/close", "");
    let (status, v) = call(ctl, "POST", "/devices/device-0/push", r#"{"content":"x"}"#);
    assert_eq!(
        (status, v["outcome"].as_str()),
        (409, Some("not-online")),
        "{v}"
    );

    assert_eq!(run.terminate(), Some(0), "stderr {:?}", run.err_lines);
}
