//! Device-originated traffic through the control API: a device PUSH (PROTOCOL.md 9.1) and an
//! HTTP request through the device's session (HTTP_PROXY, 9.2). The device state machine and
//! the shard send them (`device::upstream`, `shard::core::upstream`); this is the routing and
//! the JSON.
//!
//! An outcome of the upstream request is the answer, not an API error: a push ACKed, a timeout,
//! the server's HttpResponse (its raw 504 / 503 / 408 / 502 / 400 included, marked `raw`), an
//! ERROR frame. The HTTP status says which (200, 504, 502, 409 not online, 429 busy), and the
//! body always carries `outcome`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;

use super::{ControlPlane, Outcome};
use crate::device::{HttpCall, PushAck, UpstreamOutcome, UpstreamRequest};
use crate::proto::message::HttpMethod;
use crate::shard::{Command, UpstreamCommand, UpstreamReply};

/// Beyond the request's own deadline, how long the API waits for the shard's reply (the
/// shard answers every command exactly once; this bounds a shard that is gone).
const REPLY_MARGIN: Duration = Duration::from_secs(5);
/// The longest deadline a caller may ask for.
const MAX_TIMEOUT_MS: u32 = 600_000;

/// `POST /devices/{id}/push`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushBody {
    /// The content as text...
    #[serde(default)]
    pub content: Option<String>,
    /// ... or as base64.
    #[serde(default)]
    pub content_b64: Option<String>,
    /// `none` (default), `auto` (waits for the server's ACK) or `biz`.
    #[serde(default)]
    pub ack: Option<String>,
    /// How long to wait for the ACK, ms (default 10 s).
    #[serde(default)]
    pub timeout_ms: Option<u32>,
}

/// `POST /devices/{id}/http`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    /// `GET` (default), `POST`, `PUT` or `DELETE`.
    #[serde(default)]
    pub method: Option<String>,
    /// An absolute http URL (the server maps its host).
    pub uri: String,
    /// Request headers, name to value.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The body as text...
    #[serde(default)]
    pub body: Option<String>,
    /// ... or as base64.
    #[serde(default)]
    pub body_b64: Option<String>,
    /// The server's read timeout for the backend, ms (the `readTimeout` header).
    #[serde(default)]
    pub read_timeout_ms: Option<u32>,
    /// How long the device waits for the answer, ms (default: read timeout + 2 s, or 12 s).
    #[serde(default)]
    pub timeout_ms: Option<u32>,
}

/// The answer to a push or an HTTP request.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamView {
    /// `sent`, `acked`, `response`, `timeout`, `server-error`, `connection-lost`,
    /// `not-online`, `busy`, `bad-answer`.
    pub outcome: &'static str,
    /// From the shard taking the request to its outcome, ms.
    pub latency_ms: f64,
    /// The server's HttpResponse, for `response`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseView>,
    /// The ERROR frame's code and reason, for `server-error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<(u8, String)>,
    /// The device.
    pub device: String,
}

/// The server's HttpResponse.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseView {
    /// Status code.
    pub status: i32,
    /// Reason phrase.
    pub reason: String,
    /// `name:value\n` lines, as the server sent them.
    pub headers: String,
    /// The body as text, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body as base64.
    pub body_b64: String,
    /// Sent raw: the server's own failure (504, 503, 408, 502, 400), not the backend's answer.
    pub raw: bool,
}

impl UpstreamView {
    /// 200 when it did what was asked, else a status that says what happened.
    pub fn status(&self) -> u16 {
        match self.outcome {
            "sent" | "acked" | "response" => 200,
            "timeout" => 504,
            "not-online" => 409,
            "busy" => 429,
            _ => 502,
        }
    }
}

/// What a push or an HTTP request came to, for the HTTP layer.
#[derive(Debug)]
pub enum UpstreamResult {
    /// It ran: the outcome.
    Ran(UpstreamView),
    /// It could not be sent (unknown device, bad request, fleet gone).
    Not(Outcome),
}

fn bytes_of(text: Option<String>, b64: Option<String>, what: &str) -> Result<Bytes, String> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(format!("give {what} or {what}B64, not both")),
        (Some(t), None) => Ok(Bytes::from(t.into_bytes())),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map(Bytes::from)
            .map_err(|e| format!("{what}B64 is not base64: {e}")),
        (None, None) => Ok(Bytes::new()),
    }
}

fn timeout_of(ms: Option<u32>) -> Result<u32, String> {
    match ms {
        Some(ms) if ms == 0 || ms > MAX_TIMEOUT_MS => {
            Err(format!("timeoutMs must be 1..={MAX_TIMEOUT_MS}"))
        }
        Some(ms) => Ok(ms),
        None => Ok(0),
    }
}

/// The push request of a body, or why it is bad.
pub fn push_request(body: PushBody) -> Result<(UpstreamRequest, u32), String> {
    let ack = match body.ack.as_deref() {
        None | Some("none") => PushAck::None,
        Some("auto") => PushAck::Auto,
        Some("biz") => PushAck::Biz,
        Some(other) => return Err(format!("ack {other:?}: use none, auto or biz")),
    };
    let content = bytes_of(body.content, body.content_b64, "content")?;
    let timeout = timeout_of(body.timeout_ms)?;
    Ok((UpstreamRequest::Push { ack, content }, timeout))
}

/// The HTTP_PROXY request of a body, or why it is bad.
pub fn http_request(body: HttpBody) -> Result<(UpstreamRequest, u32), String> {
    let method = match body
        .method
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("GET") => HttpMethod::GET,
        Some("POST") => HttpMethod::POST,
        Some("PUT") => HttpMethod::PUT,
        Some("DELETE") => HttpMethod::DELETE,
        Some(other) => {
            return Err(format!(
                "method {other:?}: HTTP_PROXY carries GET, POST, PUT or DELETE"
            ))
        }
    };
    let payload = bytes_of(body.body, body.body_b64, "body")?;
    let timeout = timeout_of(body.timeout_ms)?;
    let headers = body.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let call = HttpCall::new(method, body.uri, headers, payload, body.read_timeout_ms)?;
    Ok((UpstreamRequest::Http(Arc::new(call)), timeout))
}

fn view(reply: UpstreamReply, device: String) -> UpstreamResult {
    let latency_ms = reply.latency.as_secs_f64() * 1000.0;
    let mut v = UpstreamView {
        outcome: "",
        latency_ms,
        response: None,
        error: None,
        device,
    };
    v.outcome = match reply.outcome {
        UpstreamOutcome::Sent => "sent",
        UpstreamOutcome::Acked => "acked",
        UpstreamOutcome::Response(a) => {
            v.response = Some(ResponseView {
                status: a.status,
                reason: a.reason,
                headers: a.headers,
                body: std::str::from_utf8(&a.body).ok().map(str::to_owned),
                body_b64: base64::engine::general_purpose::STANDARD.encode(&a.body),
                raw: a.raw,
            });
            "response"
        }
        UpstreamOutcome::Timeout => "timeout",
        UpstreamOutcome::ServerError { code, reason } => {
            v.error = Some((code, reason));
            "server-error"
        }
        UpstreamOutcome::ConnectionLost => "connection-lost",
        UpstreamOutcome::NotOnline => "not-online",
        UpstreamOutcome::Busy => "busy",
        UpstreamOutcome::BadAnswer => "bad-answer",
        UpstreamOutcome::NoSuchDevice => return UpstreamResult::Not(Outcome::Unknown),
    };
    UpstreamResult::Ran(v)
}

impl ControlPlane {
    /// Sends `request` through device `id`'s session, in the device's turn, and waits for its
    /// outcome (the request's deadline, `timeout_ms`; 0: its default).
    pub async fn upstream(
        &self,
        id: &str,
        request: UpstreamRequest,
        timeout_ms: u32,
    ) -> UpstreamResult {
        let Some((index, _)) = self.find(id) else {
            return UpstreamResult::Not(Outcome::Unknown);
        };
        let turn = self.turn(index);
        let _turn = turn.lock().await;
        let Some((index, shard)) = self.find(id) else {
            return UpstreamResult::Not(Outcome::Unknown);
        };
        let device = self.id_of(index);
        let (tx, rx) = crossbeam_channel::bounded(1);
        // The shard answers every request once, by its deadline; this only bounds a shard
        // that is gone.
        let deadline = match timeout_ms {
            0 => Duration::from_millis(u64::from(MAX_TIMEOUT_MS)),
            ms => Duration::from_millis(u64::from(ms)),
        };
        let command = UpstreamCommand {
            device: u64::from(index),
            tag: 0,
            request,
            timeout: Duration::from_millis(u64::from(timeout_ms)),
            reply: tx,
        };
        if self.shards[shard]
            .commands
            .send(Command::Upstream(command))
            .is_err()
        {
            return UpstreamResult::Not(Outcome::Unavailable("the fleet is not running".into()));
        }
        // The reply channel is crossbeam's: wait for it off the API's runtime thread.
        let wait = deadline + REPLY_MARGIN;
        let got = tokio::task::spawn_blocking(move || rx.recv_timeout(wait)).await;
        match got {
            Ok(Ok(reply)) => view(reply, device),
            _ => UpstreamResult::Not(Outcome::Unavailable(
                "the shard did not answer in time".into(),
            )),
        }
    }
}
