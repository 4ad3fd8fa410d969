//! Device-originated traffic (PROTOCOL.md 9): a device's own PUSH and its HTTP_PROXY
//! requests, each identified by the frame's sessionId, each with its own deadline, matched
//! against what the server answers (ACK, HttpResponse, ERROR) and turned into one
//! [`UpstreamOutcome`].
//!
//! The table of requests in flight is allocated the first time a device sends one and kept
//! (a device that speaks up once will again); a request costs no allocation beyond its
//! content. At most [`MAX_IN_FLIGHT`] wait per device. Whatever the server sends that does
//! not fit (an answer for a sessionId nothing waits for, an answer of the wrong kind, a body
//! that does not decode) is counted; the session goes on.

use std::sync::Arc;

use bytes::Bytes;

use super::state::State;
use super::{Device, Now, Shared, Tick, Transmit};
use crate::proto::message::{ErrorReply, HttpMethod, HttpRequest, HttpResponse, Push};
use crate::proto::{Cmd, Flags, MsgId};
use crate::stats::Latency;

/// Requests one device may have waiting at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// A device PUSH waits this long for its ACK unless told otherwise, ms.
pub const DEFAULT_PUSH_TIMEOUT_MS: u32 = 10_000;
/// The server's default read timeout for a proxied request (`mp.http.default-read-timeout`).
pub const SERVER_READ_TIMEOUT_MS: u32 = 10_000;
/// What a proxied request waits beyond its read timeout by default: the server's own 408
/// should come first.
pub const HTTP_TIMEOUT_MARGIN_MS: u32 = 2_000;

/// The ack a device PUSH asks for (its flags, PROTOCOL.md 9.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PushAck {
    /// No ack flag: nothing is awaited; the push is done once written.
    #[default]
    None,
    /// AUTO_ACK: the server answers ACK at once.
    Auto,
    /// BIZ_ACK: the stock server never acks it, so it ends in a timeout.
    Biz,
}

impl PushAck {
    fn flags(self) -> Flags {
        match self {
            PushAck::None => Flags::NONE,
            PushAck::Auto => Flags::AUTO_ACK,
            PushAck::Biz => Flags::BIZ_ACK,
        }
    }
}

/// An HTTP request for a device's session to carry (PROTOCOL.md 9.2), in its wire form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCall {
    request: HttpRequest,
    read_timeout_ms: Option<u32>,
}

impl HttpCall {
    /// A request; `read_timeout_ms` travels as the `readTimeout` header the server takes out.
    ///
    /// # Errors
    ///
    /// A header name that is empty or holds `:` or a line break, or a value with a line
    /// break: the `name:value\n` form could not carry it.
    pub fn new<'a>(
        method: HttpMethod,
        uri: impl Into<String>,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: Bytes,
        read_timeout_ms: Option<u32>,
    ) -> Result<Self, String> {
        let mut lines = String::new();
        for (name, value) in headers {
            if name.is_empty() || name.contains([':', '\n', '\r']) {
                return Err(format!("header name {name:?} cannot be sent"));
            }
            if value.contains(['\n', '\r']) {
                return Err(format!("header {name:?} has a line break in its value"));
            }
            lines.push_str(name);
            lines.push(':');
            lines.push_str(value);
            lines.push('\n');
        }
        if let Some(ms) = read_timeout_ms {
            lines.push_str(&format!("readTimeout:{ms}\n"));
        }
        let request = HttpRequest {
            method,
            uri: uri.into(),
            headers: lines,
            body,
        };
        Ok(Self {
            request,
            read_timeout_ms,
        })
    }

    /// The wire form.
    pub fn request(&self) -> &HttpRequest {
        &self.request
    }

    /// How long the device waits by default: the read timeout the server applies, plus a
    /// margin for its own 408 to arrive first.
    pub fn default_timeout_ms(&self) -> u32 {
        self.read_timeout_ms
            .unwrap_or(SERVER_READ_TIMEOUT_MS)
            .saturating_add(HTTP_TIMEOUT_MARGIN_MS)
    }
}

/// What a device is asked to send up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamRequest {
    /// A device PUSH of `content`, sent with the session cipher.
    Push {
        /// The ack it asks for.
        ack: PushAck,
        /// The content bytes.
        content: Bytes,
    },
    /// An HTTP_PROXY request (shared: a load generator sends one request many times).
    Http(Arc<HttpCall>),
}

impl UpstreamRequest {
    /// The deadline a request gets when the caller names none, ms.
    pub fn default_timeout_ms(&self) -> u32 {
        match self {
            UpstreamRequest::Push { .. } => DEFAULT_PUSH_TIMEOUT_MS,
            UpstreamRequest::Http(call) => call.default_timeout_ms(),
        }
    }
}

/// The server's HttpResponse to a proxied request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    /// Status code.
    pub status: i32,
    /// Reason phrase.
    pub reason: String,
    /// `name:value\n` lines.
    pub headers: String,
    /// Body.
    pub body: Bytes,
    /// Sent without CRYPTO: the proxy's own failure (504, 503, 408, 502, 400), not a backend's.
    pub raw: bool,
}

/// How an upstream request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// A push without an ack flag was written; nothing is awaited.
    Sent,
    /// The server's ACK for the push.
    Acked,
    /// The server's HttpResponse.
    Response(HttpAnswer),
    /// No answer in time (a BIZ_ACK push always ends here against the stock server).
    Timeout,
    /// An ERROR frame for this request (101: the server does not proxy HTTP).
    ServerError {
        /// Error code.
        code: u8,
        /// The server's reason.
        reason: String,
    },
    /// The connection went down before the answer.
    ConnectionLost,
    /// The device has no session now.
    NotOnline,
    /// The device already has [`MAX_IN_FLIGHT`] requests waiting.
    Busy,
    /// An answer for this request that did not decode, or of the wrong kind.
    BadAnswer,
    /// No such device in this shard (given by the core, never by a device).
    NoSuchDevice,
}

/// A finished request, as the device hands it to its shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamFinished {
    /// The caller's tag.
    pub tag: u64,
    /// How it ended.
    pub outcome: UpstreamOutcome,
    /// From the start to the outcome, µs.
    pub latency_us: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Push(PushAck),
    Http,
}

#[derive(Debug)]
struct Pending {
    tag: u64,
    /// Start order: requests are written in it.
    seq: u32,
    msg_id: MsgId,
    kind: Kind,
    started_us: u64,
    deadline: Tick,
    /// Not yet written.
    request: Option<UpstreamRequest>,
    /// Finished, until polled: how, and when (µs).
    done: Option<(UpstreamOutcome, u64)>,
}

/// The requests of one device, in flight or finished and not yet polled.
#[derive(Debug, Default)]
pub(super) struct Upstream {
    slots: [Option<Pending>; MAX_IN_FLIGHT],
    seq: u32,
}

impl Upstream {
    pub(super) fn earliest(&self) -> Tick {
        self.slots
            .iter()
            .flatten()
            .map(|p| p.deadline)
            .min()
            .unwrap_or(Tick::NEVER)
    }

    fn waiting(&mut self, id: MsgId) -> Option<&mut Pending> {
        self.slots
            .iter_mut()
            .flatten()
            .find(|p| p.done.is_none() && p.request.is_none() && p.msg_id == id)
    }
}

impl Device {
    /// Starts a device-originated request; its outcome comes out of
    /// [`poll_effect`](Self::poll_effect) as `Effect::Upstream` with `tag`. `timeout_ms` 0
    /// means the request's default. Refused at once (`NotOnline`, `Busy`) without effect.
    ///
    /// # Errors
    ///
    /// The outcome of a request that could not start.
    pub fn start_upstream(
        &mut self,
        now: Now,
        sh: &mut Shared,
        tag: u64,
        request: UpstreamRequest,
        timeout_ms: u32,
    ) -> Result<(), UpstreamOutcome> {
        if !matches!(self.state, State::Online(_)) {
            sh.stats.counters.upstream_refused += 1;
            return Err(UpstreamOutcome::NotOnline);
        }
        let up = self.upstream.get_or_insert_with(Box::default);
        let Some(free) = up.slots.iter_mut().find(|p| p.is_none()) else {
            sh.stats.counters.upstream_refused += 1;
            return Err(UpstreamOutcome::Busy);
        };
        let timeout = match timeout_ms {
            0 => request.default_timeout_ms(),
            ms => ms,
        };
        let kind = match &request {
            UpstreamRequest::Push { ack, .. } => Kind::Push(*ack),
            UpstreamRequest::Http(_) => Kind::Http,
        };
        up.seq = up.seq.wrapping_add(1);
        *free = Some(Pending {
            tag,
            seq: up.seq,
            msg_id: MsgId(0),
            kind,
            started_us: now.us,
            deadline: now.tick().after(u64::from(timeout)),
            request: Some(request),
            done: None,
        });
        Ok(())
    }

    /// Writes the requests not yet written, in start order (called from poll_transmit).
    pub(super) fn transmit_upstream(
        &mut self,
        now: Now,
        sh: &mut Shared,
        out: &mut Transmit,
    ) -> bool {
        let State::Online(o) = &self.state else {
            return false;
        };
        let Some(up) = self.upstream.as_mut() else {
            return false;
        };
        let mut wrote = false;
        loop {
            let next = up
                .slots
                .iter_mut()
                .flatten()
                .filter(|p| p.request.is_some())
                .min_by_key(|p| p.seq);
            let Some(p) = next else { break };
            let Some(request) = p.request.take() else {
                break;
            };
            self.next_msg_id = self.next_msg_id.wrapping_add(1);
            p.msg_id = MsgId(self.next_msg_id);
            let c = &mut sh.stats.counters;
            match request {
                UpstreamRequest::Push { ack, content } => {
                    out.sealed_with(&Push { content }, p.msg_id, ack.flags(), &o.cipher);
                    c.device_pushes_sent += 1;
                    if ack == PushAck::None {
                        p.finish(now, UpstreamOutcome::Sent);
                    }
                }
                UpstreamRequest::Http(call) => {
                    out.sealed_with(call.request(), p.msg_id, Flags::NONE, &o.cipher);
                    c.http_requests_sent += 1;
                }
            }
            wrote = true;
        }
        if wrote {
            self.last_write = now.tick();
        }
        wrote
    }

    /// An ACK (cmd 23) arrived.
    pub(super) fn on_upstream_ack(&mut self, now: Now, sh: &mut Shared, id: MsgId) {
        let c = &mut sh.stats.counters;
        let Some(p) = self.upstream.as_mut().and_then(|u| u.waiting(id)) else {
            c.upstream_unmatched += 1;
            return;
        };
        if p.kind == Kind::Http {
            c.upstream_bad_answers += 1;
            c.http_failed += 1;
            return p.finish(now, UpstreamOutcome::BadAnswer);
        }
        c.device_push_acked += 1;
        let took = now.us.saturating_sub(p.started_us);
        sh.stats.latencies.record(Latency::DevicePushAck, took);
        p.finish(now, UpstreamOutcome::Acked);
    }

    /// An HttpResponse arrived (`raw`: without CRYPTO).
    pub(super) fn on_upstream_response(
        &mut self,
        now: Now,
        sh: &mut Shared,
        id: MsgId,
        raw: bool,
        resp: HttpResponse,
    ) {
        let c = &mut sh.stats.counters;
        let Some(p) = self.upstream.as_mut().and_then(|u| u.waiting(id)) else {
            c.upstream_unmatched += 1;
            return;
        };
        if p.kind != Kind::Http {
            c.upstream_bad_answers += 1;
            c.device_push_failed += 1;
            return p.finish(now, UpstreamOutcome::BadAnswer);
        }
        c.http_responses += 1;
        if raw {
            c.http_raw_failures += 1;
        } else if (200..300).contains(&resp.status_code) {
            c.http_responses_2xx += 1;
        }
        let took = now.us.saturating_sub(p.started_us);
        sh.stats.latencies.record(Latency::HttpProxy, took);
        p.finish(
            now,
            UpstreamOutcome::Response(HttpAnswer {
                status: resp.status_code,
                reason: resp.reason_phrase,
                headers: resp.headers,
                body: resp.body,
                raw,
            }),
        );
    }

    /// An HttpResponse frame whose body did not decode: that request's answer is bad; the
    /// stream itself is intact.
    pub(super) fn on_upstream_garbled(&mut self, now: Now, sh: &mut Shared, id: MsgId) {
        let c = &mut sh.stats.counters;
        c.upstream_bad_answers += 1;
        if let Some(p) = self.upstream.as_mut().and_then(|u| u.waiting(id)) {
            count_failed(c, p.kind);
            p.finish(now, UpstreamOutcome::BadAnswer);
        }
    }

    /// An ERROR for a PUSH or HTTP_PROXY; `false` if no request waits for it.
    pub(super) fn on_upstream_error(
        &mut self,
        now: Now,
        sh: &mut Shared,
        id: MsgId,
        e: &ErrorReply,
    ) -> bool {
        let is_ours = e.cmd == Cmd::Push as u8 || e.cmd == Cmd::HttpProxy as u8;
        let Some(p) = self
            .upstream
            .as_mut()
            .and_then(|u| u.waiting(id))
            .filter(|_| is_ours)
        else {
            return false;
        };
        count_failed(&mut sh.stats.counters, p.kind);
        p.finish(
            now,
            UpstreamOutcome::ServerError {
                code: e.code.0,
                reason: e.reason.clone(),
            },
        );
        true
    }

    /// Requests past their deadline time out.
    pub(super) fn upstream_timeouts(&mut self, now: Now, sh: &mut Shared) {
        let Some(up) = self.upstream.as_mut() else {
            return;
        };
        let t = now.tick();
        for p in up.slots.iter_mut().flatten() {
            if p.done.is_none() && p.deadline <= t {
                let c = &mut sh.stats.counters;
                match p.kind {
                    Kind::Push(_) => c.device_push_timeouts += 1,
                    Kind::Http => c.http_timeouts += 1,
                }
                p.finish(now, UpstreamOutcome::Timeout);
            }
        }
    }

    /// The connection is gone: everything waiting on it is lost.
    pub(super) fn upstream_lost(&mut self, now: Now, sh: &mut Shared) {
        let Some(up) = self.upstream.as_mut() else {
            return;
        };
        for p in up.slots.iter_mut().flatten() {
            if p.done.is_none() {
                count_failed(&mut sh.stats.counters, p.kind);
                p.request = None;
                p.finish(now, UpstreamOutcome::ConnectionLost);
            }
        }
    }

    /// The next finished request, freeing its place.
    pub(super) fn poll_upstream(&mut self) -> Option<UpstreamFinished> {
        let up = self.upstream.as_mut()?;
        let slot = up
            .slots
            .iter_mut()
            .filter(|p| p.as_ref().is_some_and(|p| p.done.is_some()))
            .min_by_key(|p| p.as_ref().map_or(0, |p| p.seq))?;
        let p = slot.take()?;
        let (outcome, at_us) = p.done?;
        Some(UpstreamFinished {
            tag: p.tag,
            outcome,
            latency_us: at_us.saturating_sub(p.started_us),
        })
    }

    /// Requests waiting or finished and not yet polled.
    pub fn upstream_in_flight(&self) -> usize {
        self.upstream
            .as_ref()
            .map_or(0, |u| u.slots.iter().flatten().count())
    }
}

impl Pending {
    fn finish(&mut self, now: Now, outcome: UpstreamOutcome) {
        self.done = Some((outcome, now.us));
        self.deadline = Tick::NEVER;
    }
}

fn count_failed(c: &mut crate::stats::Counters, kind: Kind) {
    match kind {
        Kind::Push(_) => c.device_push_failed += 1,
        Kind::Http => c.http_failed += 1,
    }
}
