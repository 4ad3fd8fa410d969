//! A tiny blocking HTTP/1.1 client for the admin API (std only, one request per connection).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use serde_json::Value;

use super::client::READ_TIMEOUT;

/// Sends `method path` with an optional JSON body; returns the status and the JSON answer.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(addr).expect("connect to the admin API");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("set read timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).expect("write request");
    let mut resp = Vec::new();
    stream.read_to_end(&mut resp).expect("read response");
    let text = String::from_utf8(resp).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, json)
}

/// `GET path`, expecting 200.
pub fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, json) = request(addr, "GET", path, None);
    assert_eq!(status, 200, "GET {path}: {json}");
    json
}

/// `POST path` with a JSON body, expecting 200.
pub fn post(addr: SocketAddr, path: &str, body: Value) -> Value {
    let (status, json) = request(addr, "POST", path, Some(&body));
    assert_eq!(status, 200, "POST {path}: {json}");
    json
}
