//! The control API as JSON lines on the Unix sink socket (`--sink unix:PATH`), for a
//! consumer that already holds it: it writes a request line beside its ack lines, and the
//! answer comes back as a line beside the records, correlated by the request's `id`.
//!
//! ```text
//! -> {"id":1,"cmd":"add","device":{"deviceId":"phone-z","userId":"zoe"}}
//! <- {"id":1,"status":201,"device":{"deviceId":"phone-z",...,"phase":"expect-ticket",...}}
//! -> {"id":"b","cmd":"push","deviceId":"phone-z","push":{"content":"hi","ack":"auto"}}
//! <- {"id":"b","status":200,"result":{"outcome":"acked","latencyMs":1.2,"device":"phone-z"}}
//! ```
//!
//! `cmd` is one of `add` (with `device`), `remove`, `state`, `bind` (with `userId`, `tags`),
//! `unbind`, `kick`, `close`, `open`, `push` (with `push`, the HTTP route's body) and `http`
//! (with `http`). `status` is the HTTP route's status; an error is `{"id":..,"status":4xx,
//! "error":why}`. Record lines have `seq`, answer lines `status`: a consumer tells them apart.
//! Requests for one device are answered in order, as over HTTP.

use serde_json::{json, Value};

use super::upstream::{http_request, push_request, HttpBody, PushBody, UpstreamResult};
use super::{ControlPlane, Outcome};
use crate::device::Identity;
use crate::sink::LineHandler;

type Respond = Box<dyn FnOnce(Vec<u8>) + Send>;

/// The sink's handler for `plane`: requests run on a thread of their own, in arrival order.
///
/// # Errors
/// The thread or its runtime cannot be started.
pub fn handler(plane: ControlPlane) -> anyhow::Result<LineHandler> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, Respond)>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("control-lines".into())
        .spawn(move || {
            rt.block_on(async move {
                // Ends when the sink (holding the handler) is gone.
                while let Some((line, respond)) = rx.recv().await {
                    let plane = plane.clone();
                    // Spawned in arrival order on one thread: each reaches its device's turn
                    // in that order.
                    tokio::spawn(async move {
                        let answer = run(&plane, &line).await;
                        respond(answer.to_string().into_bytes());
                    });
                }
            });
        })?;
    Ok(std::sync::Arc::new(move |line, respond| {
        let _ = tx.send((line, respond));
    }))
}

/// Runs one request line; the answer line's JSON.
pub async fn run(plane: &ControlPlane, line: &[u8]) -> Value {
    let request: Value = match serde_json::from_slice(line) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return json!({"status": 400, "error": "a request line is a JSON object"}),
        Err(e) => return json!({"status": 400, "error": format!("bad JSON line: {e}")}),
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let mut answer = match dispatch(plane, &request).await {
        Ok(v) => v,
        Err(why) => json!({"status": 400, "error": why}),
    };
    answer["id"] = id;
    answer
}

fn field<T: serde::de::DeserializeOwned>(request: &Value, name: &str) -> Result<T, String> {
    let v = request
        .get(name)
        .cloned()
        .ok_or_else(|| format!("{name} is missing"))?;
    serde_json::from_value(v).map_err(|e| format!("{name}: {e}"))
}

fn outcome(o: &Outcome, created: bool) -> Value {
    let status = o.status(created);
    match o {
        Outcome::Done(_) => json!({"status": status, "device": o.body()}),
        _ => {
            let mut v = o.body();
            v["status"] = status.into();
            v
        }
    }
}

fn upstream(r: UpstreamResult) -> Value {
    match r {
        UpstreamResult::Ran(v) => {
            json!({"status": v.status(), "result": serde_json::to_value(&v).unwrap_or_default()})
        }
        UpstreamResult::Not(o) => outcome(&o, false),
    }
}

async fn dispatch(plane: &ControlPlane, request: &Value) -> Result<Value, String> {
    let cmd: String = field(request, "cmd")?;
    if cmd == "add" {
        let identity: Identity = field(request, "device")?;
        return Ok(outcome(&plane.add(identity).await, true));
    }
    let id: String = field(request, "deviceId")?;
    let o = match cmd.as_str() {
        "remove" => plane.remove(&id).await,
        "state" => plane.state(&id).await,
        "bind" => {
            let user: String = field(request, "userId")?;
            let tags: String = request
                .get("tags")
                .map(|t| serde_json::from_value(t.clone()).map_err(|e| format!("tags: {e}")))
                .transpose()?
                .unwrap_or_default();
            plane.bind(&id, user, tags).await
        }
        "unbind" => plane.unbind(&id).await,
        "kick" => plane.kick(&id).await,
        "close" => plane.close(&id).await,
        "open" => plane.open(&id).await,
        "push" => {
            let (req, timeout) = push_request(field::<PushBody>(request, "push")?)?;
            return Ok(upstream(plane.upstream(&id, req, timeout).await));
        }
        "http" => {
            let (req, timeout) = http_request(field::<HttpBody>(request, "http")?)?;
            return Ok(upstream(plane.upstream(&id, req, timeout).await));
        }
        other => {
            return Err(format!(
                "unknown cmd {other:?} (add, remove, state, bind, unbind, kick, close, open, \
                 push, http)"
            ))
        }
    };
    Ok(outcome(&o, false))
}
