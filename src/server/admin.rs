//! The admin API: minimal HTTP/1.1 + JSON on a loopback listener, hand-rolled on tokio (one
//! request per connection, `Connection: close`), so the server needs no HTTP dependency.
//!
//! | method, path | body | answer |
//! |---|---|---|
//! | `GET /stats` | | counters ([`ServerStats`](super::ServerStats)) |
//! | `GET /peers` | | `{"peers": ["127.0.0.1:40000", ...]}` |
//! | `GET /pushes` (or `/acks`) | | `{"pushes": [{"msg_id", "user_id", "conn", "ack", "acked"}]}` |
//! | `GET /faults` | | the fault switches |
//! | `POST /push` | see below | `{"sent": n, "msg_ids": [..]}` |
//! | `POST /kick` | `{"user_id": "u"}` | `{"kicked": n}` |
//! | `POST /fault/expire-sessions` | | `{"expired": n}` |
//! | `POST /fault/heartbeat-echo` | `{"on": false}` (or path `/on`, `/off`) | the fault switches |
//! | `POST /fault/reject-new` | `{"on": true}` (or path `/on`, `/off`) | the fault switches |
//! | `POST /fault/delay-ms` | `{"ms": 500}` (or path `/500`) | the fault switches |
//! | `POST /fault/close-all` | | `{"closed": n}` |
//! | `POST /fault/garbage` | | `{"sent": n}` |
//!
//! The push body: `{"user_id": "u"}` or `{"all": true}`, with `"content": "text"` or
//! `"content_b64": "..."`, and `"ack": "none"` (default), `"auto"` or `"biz"`. Errors come
//! back as 400 / 404 with `{"error": "..."}`.

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::runtime::{PushTarget, ServerOps};
use super::shared::AckMode;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;

pub(crate) async fn serve(listener: TcpListener, ops: ServerOps, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, ops.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

async fn handle(mut stream: TcpStream, ops: ServerOps) {
    let (status, body) = match read_request(&mut stream).await {
        Ok(req) => route(&ops, &req).await,
        Err(msg) => (400, json!({ "error": msg })),
    };
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut TcpStream) -> Result<Request, String> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return Err("request head too large".into());
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed mid-request".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let method = first.next().ok_or("no method")?.to_ascii_uppercase();
    let target = first.next().ok_or("no path")?;
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let mut content_length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().map_err(|_| "bad Content-Length")?;
            }
        }
    }
    if content_length > MAX_BODY {
        return Err("body too large".into());
    }
    let mut body = buf.split_off(head_end + 4);
    while body.len() < content_length {
        let mut chunk = vec![0u8; (content_length - body.len()).min(64 * 1024)];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed mid-body".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(content_length);
    Ok(Request { method, path, body })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PushBody {
    user_id: Option<String>,
    #[serde(default)]
    all: bool,
    content: Option<String>,
    content_b64: Option<String>,
    #[serde(default)]
    ack: AckMode,
}

#[derive(Deserialize)]
struct KickBody {
    user_id: String,
}

#[derive(Deserialize, Default)]
struct SwitchBody {
    on: Option<bool>,
    ms: Option<u64>,
}

fn bad(msg: impl Into<String>) -> (u16, Value) {
    (400, json!({ "error": msg.into() }))
}

fn parse<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, (u16, Value)> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("bad JSON body: {e}")))
}

async fn route(ops: &ServerOps, req: &Request) -> (u16, Value) {
    let path = req.path.trim_end_matches('/');
    let (base, arg) = match path.strip_prefix("/fault/") {
        Some(rest) => match rest.split_once('/') {
            Some((name, arg)) => (name, Some(arg)),
            None => (rest, None),
        },
        None => (path, None),
    };
    let faults = |ops: &ServerOps| (200, json!(ops.faults()));
    match (req.method.as_str(), path.starts_with("/fault/"), base) {
        ("GET", false, "/stats") => (200, json!(ops.stats())),
        ("GET", false, "/peers") => {
            let peers: Vec<String> = ops.peers().iter().map(ToString::to_string).collect();
            (200, json!({ "peers": peers }))
        }
        ("GET", false, "/pushes" | "/acks") => (200, json!({ "pushes": ops.pushes() })),
        ("GET", false, "/faults") => faults(ops),
        ("POST", false, "/push") => match push(ops, &req.body) {
            Ok(v) | Err(v) => v,
        },
        ("POST", false, "/kick") => match serde_json::from_slice::<KickBody>(&req.body) {
            Ok(k) => (200, json!({ "kicked": ops.kick(&k.user_id) })),
            Err(e) => bad(format!("bad JSON body: {e}")),
        },
        ("POST", true, "expire-sessions") => match ops.expire_sessions().await {
            Ok(n) => (200, json!({ "expired": n })),
            Err(e) => (500, json!({ "error": e.to_string() })),
        },
        ("POST", true, "close-all") => (200, json!({ "closed": ops.close_all() })),
        ("POST", true, "garbage") => (200, json!({ "sent": ops.send_garbage() })),
        ("POST", true, "heartbeat-echo" | "reject-new") => {
            let on = match switch_on(arg, &req.body) {
                Ok(on) => on,
                Err(e) => return e,
            };
            if base == "heartbeat-echo" {
                ops.set_heartbeat_echo(on);
            } else {
                ops.set_reject_new(on);
            }
            faults(ops)
        }
        ("POST", true, "delay-ms") => {
            let ms = match arg {
                Some(a) => a.parse().map_err(|_| bad("delay-ms wants a number")),
                None => parse::<SwitchBody>(&req.body)
                    .and_then(|b| b.ms.ok_or_else(|| bad("body needs \"ms\""))),
            };
            match ms {
                Ok(ms) => {
                    ops.set_delay_ms(ms);
                    faults(ops)
                }
                Err(e) => e,
            }
        }
        _ => (
            404,
            json!({ "error": format!("no route {} {}", req.method, req.path) }),
        ),
    }
}

fn switch_on(arg: Option<&str>, body: &[u8]) -> Result<bool, (u16, Value)> {
    match arg {
        Some("on" | "true" | "1") => Ok(true),
        Some("off" | "false" | "0") => Ok(false),
        Some(_) => Err(bad("switch wants on or off")),
        None => parse::<SwitchBody>(body)?
            .on
            .ok_or_else(|| bad("body needs \"on\"")),
    }
}

fn push(ops: &ServerOps, body: &[u8]) -> Result<(u16, Value), (u16, Value)> {
    let p: PushBody =
        serde_json::from_slice(body).map_err(|e| bad(format!("bad JSON body: {e}")))?;
    let target = match (p.user_id, p.all) {
        (Some(u), false) if !u.is_empty() => PushTarget::User(u),
        (None, true) => PushTarget::All,
        _ => return Err(bad("give exactly one of \"user_id\" or \"all\": true")),
    };
    let content = match (p.content, p.content_b64) {
        (Some(text), None) => Bytes::from(text.into_bytes()),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map(Bytes::from)
            .map_err(|_| bad("content_b64 is not base64"))?,
        _ => return Err(bad("give exactly one of \"content\" or \"content_b64\"")),
    };
    Ok((200, json!(ops.push(target, content, p.ack))))
}
