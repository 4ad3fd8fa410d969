//! The admin API: HTTP + JSON on a loopback listener, an axum [`Router`] served by the
//! process's one HTTP server ([`crate::http`]) in the server's runtime.
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
//! | `POST /fault/gateway-ack-race` | `{"on": true}` (or path `/on`, `/off`) | the gateway's ack race (PROTOCOL.md 8.6) |
//! | `POST /fault/delay-ms` | `{"ms": 500}` (or path `/500`) | the fault switches |
//! | `POST /fault/close-all` | | `{"closed": n}` |
//! | `POST /fault/garbage` | | `{"sent": n}` |
//! | `GET /capacity` | | the capacity limits ([`CapacityLimits`](super::CapacityLimits)) |
//! | `POST /capacity` | `{"handshakes_per_sec": 5, "fast_connects_per_sec": 0}` (either optional; 0 = unlimited) | the capacity limits now in force |
//!
//! The push body: `{"user_id": "u"}` or `{"all": true}`, with `"content": "text"` or
//! `"content_b64": "..."`, and `"ack": "none"` (default), `"auto"` or `"biz"`. Errors come
//! back as 400 / 404 with `{"error": "..."}`.

use axum::body::Bytes as Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::capacity::CapacityChange;
use super::runtime::{PushTarget, ServerOps};
use super::shared::AckMode;
use crate::http::Router;

/// Largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;

pub(crate) async fn serve(
    listener: TcpListener,
    ops: ServerOps,
    token: Option<String>,
    mut stop: watch::Receiver<bool>,
) {
    let stop = async move {
        // Err: the handle is gone, which stops the server too.
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let router = crate::http::auth::require_bearer(router(ops), token.as_deref());
    crate::http::serve(listener, router, stop).await;
}

/// A JSON answer.
type Answer = (u16, Value);

/// The routes (one line each: issue 13's control API adds its own the same way); an unknown
/// path or method is a 404 with `{"error": "no route ..."}`.
fn router(ops: ServerOps) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route("/peers", get(peers))
        .route("/pushes", get(pushes))
        .route("/acks", get(pushes))
        .route("/faults", get(fault_state))
        .route("/push", post(push_route))
        .route("/kick", post(kick))
        .route("/fault/{name}", post(fault_route))
        .route("/fault/{name}/{arg}", post(fault_arg_route))
        .route("/capacity", get(capacity).post(set_capacity))
        .fallback(no_route)
        .method_not_allowed_fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(ops)
}

type Ops = State<ServerOps>;

async fn stats(State(ops): Ops) -> Response {
    reply((200, json!(ops.stats())))
}

async fn peers(State(ops): Ops) -> Response {
    let peers: Vec<String> = ops.peers().iter().map(ToString::to_string).collect();
    reply((200, json!({ "peers": peers })))
}

async fn pushes(State(ops): Ops) -> Response {
    reply((200, json!({ "pushes": ops.pushes() })))
}

async fn fault_state(State(ops): Ops) -> Response {
    reply(faults(&ops))
}

async fn push_route(State(ops): Ops, body: Body) -> Response {
    reply(match push(&ops, &body) {
        Ok(v) | Err(v) => v,
    })
}

async fn kick(State(ops): Ops, body: Body) -> Response {
    reply(match serde_json::from_slice::<KickBody>(&body) {
        Ok(k) => (200, json!({ "kicked": ops.kick(&k.user_id) })),
        Err(e) => bad(format!("bad JSON body: {e}")),
    })
}

async fn capacity(State(ops): Ops) -> Response {
    reply((200, json!(ops.capacity())))
}

async fn set_capacity(State(ops): Ops, body: Body) -> Response {
    let change = parse::<CapacityChange>(&body).and_then(|c| c.validate().map(|()| c).map_err(bad));
    reply(match change {
        Ok(c) => (200, json!(ops.set_capacity(c))),
        Err(e) => e,
    })
}

async fn fault_route(State(ops): Ops, Path(name): Path<String>, body: Body) -> Response {
    reply(fault(&ops, &name, None, &body).await)
}

async fn fault_arg_route(
    State(ops): Ops,
    Path((name, arg)): Path<(String, String)>,
    body: Body,
) -> Response {
    reply(fault(&ops, &name, Some(&arg), &body).await)
}

async fn no_route(method: Method, uri: Uri) -> Response {
    reply((
        404,
        json!({ "error": format!("no route {method} {}", uri.path()) }),
    ))
}

fn reply((status, body): Answer) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn faults(ops: &ServerOps) -> Answer {
    (200, json!(ops.faults()))
}

/// `POST /fault/NAME[/VALUE]`. A switch takes its value from the path or a JSON body; the
/// one-shot faults ignore a trailing segment, as they always did.
async fn fault(ops: &ServerOps, switch: &str, arg: Option<&str>, body: &[u8]) -> Answer {
    match switch {
        "expire-sessions" => match ops.expire_sessions().await {
            Ok(n) => (200, json!({ "expired": n })),
            Err(e) => (500, json!({ "error": e.to_string() })),
        },
        "close-all" => (200, json!({ "closed": ops.close_all() })),
        "garbage" => (200, json!({ "sent": ops.send_garbage() })),
        "heartbeat-echo" | "reject-new" | "gateway-ack-race" => {
            let on = match switch_on(arg, body) {
                Ok(on) => on,
                Err(e) => return e,
            };
            match switch {
                "heartbeat-echo" => ops.set_heartbeat_echo(on),
                "reject-new" => ops.set_reject_new(on),
                _ => ops.set_gateway_ack_race(on),
            }
            faults(ops)
        }
        "delay-ms" => {
            let ms = match arg {
                Some(a) => a.parse().map_err(|_| bad("delay-ms wants a number")),
                None => parse::<SwitchBody>(body)
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
            json!({ "error": format!("no route POST /fault/{switch}{}", arg.map(|a| format!("/{a}")).unwrap_or_default()) }),
        ),
    }
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

fn bad(msg: impl Into<String>) -> Answer {
    (400, json!({ "error": msg.into() }))
}

fn parse<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, Answer> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("bad JSON body: {e}")))
}

fn switch_on(arg: Option<&str>, body: &[u8]) -> Result<bool, Answer> {
    match arg {
        Some("on" | "true" | "1") => Ok(true),
        Some("off" | "false" | "0") => Ok(false),
        Some(_) => Err(bad("switch wants on or off")),
        None => parse::<SwitchBody>(body)?
            .on
            .ok_or_else(|| bad("body needs \"on\"")),
    }
}

fn push(ops: &ServerOps, body: &[u8]) -> Result<Answer, Answer> {
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
