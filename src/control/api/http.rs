//! `--control ADDR`: the control API as HTTP+JSON routes, on the process's one HTTP server
//! crate (axum, [`crate::http`]), behind the bearer-token rule of [`crate::http::auth`].
//!
//! | Route | Does |
//! |---|---|
//! | `POST /devices` `{"deviceId":..,"userId":..,"tags":..,"osName":..}` | adds and starts a device (201) |
//! | `GET /devices/{id}` | its state and counters |
//! | `DELETE /devices/{id}` | closes it gracefully (earned acks sent) and removes it |
//! | `POST /devices/{id}/bind` `{"userId":..,"tags":..}` | binds a user |
//! | `POST /devices/{id}/unbind` | unbinds its user |
//! | `POST /devices/{id}/kick` | drops its connection; it reconnects |
//! | `POST /devices/{id}/close` | closes its session; it stays down |
//! | `POST /devices/{id}/open` | starts it again |
//! | `POST /devices/{id}/push` `{"content":..,"ack":"auto","timeoutMs":..}` | a device PUSH; with `auto` the answer waits for the server's ACK |
//! | `POST /devices/{id}/http` `{"method":"GET","uri":..,"headers":{..},"body":..,"readTimeoutMs":..}` | an HTTP request through its session; the answer is the server's HttpResponse |
//!
//! Answers are JSON: the device (`deviceId`, `userId`, `tags`, `shard`, `phase`, `connected`,
//! `bound`, `heartbeatMs`, `server`, `counters`) or `{"error": reason}` with 400 (a bad
//! request), 404 (no such device), 409 (not possible now), 401 (token) or 503 (stopping).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::upstream::{http_request, push_request, HttpBody, PushBody, UpstreamResult};
use super::{ControlPlane, Outcome};
use crate::device::Identity;
use crate::http::{HttpServer, Router};

/// Largest request body: a device, a bind (and later a push or a proxied request).
const MAX_BODY: usize = 1 << 20;

/// The control routes for `plane`, every request checked for `token` if there is one.
pub fn router(plane: ControlPlane, token: Option<&str>) -> Router {
    let routes = Router::new()
        .route("/devices", post(add))
        .route("/devices/{id}", get(state).delete(remove))
        .route("/devices/{id}/bind", post(bind))
        .route("/devices/{id}/unbind", post(unbind))
        .route("/devices/{id}/kick", post(kick))
        .route("/devices/{id}/close", post(close))
        .route("/devices/{id}/open", post(open))
        .route("/devices/{id}/push", post(push))
        .route("/devices/{id}/http", post(http_proxy))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(plane);
    crate::http::auth::require_bearer(routes, token)
}

/// Checks the address against the token rule, then serves the API on its own thread.
///
/// # Errors
/// A non-loopback address without a token (or an empty token), or an address that cannot be
/// bound.
pub fn serve_control(
    addr: SocketAddr,
    token: Option<&str>,
    plane: ControlPlane,
) -> anyhow::Result<HttpServer> {
    crate::http::auth::check_exposure(addr, token, "--control")?;
    crate::http::spawn(addr, router(plane, token), "control")
}

type Plane = State<ControlPlane>;

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_string(body) {
        Ok(text) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            text + "\n",
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn error(status: StatusCode, why: &str) -> Response {
    json(status, &serde_json::json!({ "error": why }))
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn answer(outcome: Outcome, created: bool) -> Response {
    json(status(outcome.status(created)), &outcome.body())
}

/// A JSON body, or what is wrong with it (a 400).
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad JSON body: {e}"))
}

fn bad(why: &str) -> Response {
    error(StatusCode::BAD_REQUEST, why)
}

async fn add(State(plane): Plane, body: Bytes) -> Response {
    match parse::<Identity>(&body) {
        Ok(identity) => answer(plane.add(identity).await, true),
        Err(why) => bad(&why),
    }
}

async fn state(State(plane): Plane, Path(id): Path<String>) -> Response {
    answer(plane.state(&id).await, false)
}

async fn remove(State(plane): Plane, Path(id): Path<String>) -> Response {
    answer(plane.remove(&id).await, false)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BindBody {
    user_id: String,
    #[serde(default)]
    tags: String,
}

async fn bind(State(plane): Plane, Path(id): Path<String>, body: Bytes) -> Response {
    match parse::<BindBody>(&body) {
        Ok(b) => answer(plane.bind(&id, b.user_id, b.tags).await, false),
        Err(why) => bad(&why),
    }
}

async fn unbind(State(plane): Plane, Path(id): Path<String>) -> Response {
    answer(plane.unbind(&id).await, false)
}

async fn kick(State(plane): Plane, Path(id): Path<String>) -> Response {
    answer(plane.kick(&id).await, false)
}

async fn close(State(plane): Plane, Path(id): Path<String>) -> Response {
    answer(plane.close(&id).await, false)
}

async fn open(State(plane): Plane, Path(id): Path<String>) -> Response {
    answer(plane.open(&id).await, false)
}

async fn push(State(plane): Plane, Path(id): Path<String>, body: Bytes) -> Response {
    let request = parse::<PushBody>(&body).and_then(push_request);
    match request {
        Ok((request, timeout)) => ran(plane.upstream(&id, request, timeout).await),
        Err(why) => bad(&why),
    }
}

async fn http_proxy(State(plane): Plane, Path(id): Path<String>, body: Bytes) -> Response {
    let request = parse::<HttpBody>(&body).and_then(http_request);
    match request {
        Ok((request, timeout)) => ran(plane.upstream(&id, request, timeout).await),
        Err(why) => bad(&why),
    }
}

/// An upstream outcome: 200 when it did what was asked, else a status that says what.
fn ran(result: UpstreamResult) -> Response {
    match result {
        UpstreamResult::Ran(v) => json(status(v.status()), &v),
        UpstreamResult::Not(outcome) => answer(outcome, false),
    }
}

async fn no_route(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!(
            "no route {method} {}; see the README's control API",
            uri.path()
        ),
    )
}
