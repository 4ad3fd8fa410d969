//! The sans-IO server session: one connection's side of PROTOCOL.md section 6, as the real
//! server plays it (`mpush-core` handlers, `MessageDispatcher`, `ServerConnectionManager`).
//!
//! No sockets, clocks, RNG or locks in here. The shell feeds a [`ServerSession`] through
//! `handle_*` and drains it through `poll_*` in this order after every input:
//! [`ServerSession::poll_transmit`] (bytes to write), [`ServerSession::poll_timeout`] (re-arm
//! the idle check), then [`ServerSession::poll_effect`] until it returns `None`. Effects are
//! what only the shell can do (the route table, the session store, counters, closing). An
//! effect that needs an answer returns one as an input: [`Effect::LoadSession`] is answered by
//! [`ServerSession::handle_session_loaded`], and the shell must answer it before it feeds the
//! next unit, as the real server handles one packet at a time.
//!
//! Time comes in as [`Tick`] (monotonic ms) and wall-clock ms (`wall_ms`, for the session id
//! and the expire time); randomness (the server key) comes in as an RNG argument.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rand::{CryptoRng, RngCore};

use crate::crypto::{AesCipher, RsaDecryptor};
use crate::proto::frame::{begin_frame, finish_frame};
use crate::proto::message::{ErrorCode, FastConnectOk, HttpResponse, Kick, Push};
use crate::proto::pipeline::Encoder;
use crate::proto::{BodyLimits, Cmd, DecodeError, Flags, Frame, MsgId};

pub use types::{error_message, ClientType, CloseReason, Effect, SessionEvent, SessionLookup};

/// Monotonic time in milliseconds since the shell's start. Only differences matter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(pub u64);

impl Tick {
    /// `self` plus `ms` milliseconds.
    #[must_use]
    pub const fn plus(self, ms: u64) -> Tick {
        Tick(self.0.saturating_add(ms))
    }
}

/// The heartbeat a connection has before its handshake: the Java `SessionContext` default.
pub const PRE_HANDSHAKE_HEARTBEAT_MS: u32 = 10_000;
/// `max-hb-timeout-times`: a connection is closed on the check that finds it idle for the
/// third time in a row (`++timeoutTimes > 2`).
pub const MAX_HB_TIMEOUT_TIMES: u8 = 2;
/// Slack on top of the heartbeat before a check counts as idle (`isReadTimeout`).
pub const READ_TIMEOUT_SLACK_MS: u64 = 1_000;

/// What every session of one server shares: keys and limits. Immutable once built.
#[derive(Debug)]
pub struct SessionConfig {
    /// The server's RSA private key, for Handshake bodies.
    pub rsa: RsaDecryptor,
    /// `min-heartbeat`, ms.
    pub min_heartbeat_ms: i32,
    /// `max-heartbeat`, ms.
    pub max_heartbeat_ms: i32,
    /// `session-expired-time`, seconds.
    pub session_expire_secs: u32,
    /// `max-packet-size` and `compress-threshold`, plus our inflate cap.
    pub limits: BodyLimits,
    /// Reproduce the real server's sessionId quirk: MD5 of the *previous* deviceId of the
    /// connection (`"null"` on a fresh one) followed by the time (PROTOCOL.md 7).
    pub sessionid_quirk: bool,
    /// Forward HTTP_PROXY requests (section 9.2) with this configuration. `None`, the real
    /// server's default (`mp.http.proxy-enabled=false`): no handler, ERROR 101 and a close.
    pub http_proxy: Option<Arc<super::http_proxy::HttpProxyConfig>>,
    /// Heartbeat period before a handshake (the real server: 10 s).
    pub pre_handshake_heartbeat_ms: u32,
}

impl Default for SessionConfig {
    /// The real server's defaults (`conf/reference.conf`) with MPUSH's default key pair.
    fn default() -> Self {
        SessionConfig {
            rsa: RsaDecryptor::mpush_default(),
            min_heartbeat_ms: super::DEFAULT_HEARTBEAT_MS,
            max_heartbeat_ms: super::DEFAULT_HEARTBEAT_MS,
            session_expire_secs: super::DEFAULT_SESSION_EXPIRE_SECS,
            limits: BodyLimits::default(),
            sessionid_quirk: false,
            http_proxy: None,
            pre_handshake_heartbeat_ms: PRE_HANDSHAKE_HEARTBEAT_MS,
        }
    }
}

impl SessionConfig {
    /// `ConfigTools.getHeartbeat`: `max(min, min(client max, max))`. The client's min is not
    /// used by the real server either.
    pub fn heartbeat_for(&self, client_max: i32) -> i32 {
        self.min_heartbeat_ms
            .max(client_max.min(self.max_heartbeat_ms))
    }
}

/// What a connection knows after a handshake or fast connect (Java `SessionContext`).
#[derive(Debug)]
struct Context {
    device_id: String,
    os_name: String,
    user_id: Option<String>,
}

/// A fast connect waiting for its session lookup.
#[derive(Debug)]
struct PendingFastConnect {
    msg_id: MsgId,
    device_id: String,
    max_heartbeat: i32,
}

/// One connection's server side. See the module doc for the driving order.
#[derive(Debug)]
pub struct ServerSession {
    cfg: Arc<SessionConfig>,
    /// `None` is the RSA stage: bodies flagged CRYPTO are RSA-decrypted with the server key.
    cipher: Option<AesCipher>,
    ctx: Option<Box<Context>>,
    pending: Option<Box<PendingFastConnect>>,
    heartbeat_ms: u32,
    last_read: Tick,
    next_check: Tick,
    idle_checks: u8,
    closed: bool,
    echo_heartbeats: bool,
    tx: BytesMut,
    effects: VecDeque<Effect>,
    encoder: Encoder,
}

impl ServerSession {
    /// A session for a connection accepted at `now`.
    pub fn new(cfg: Arc<SessionConfig>, now: Tick) -> Self {
        let heartbeat_ms = cfg.pre_handshake_heartbeat_ms;
        let encoder = Encoder::new(cfg.limits.compress_threshold);
        ServerSession {
            cfg,
            cipher: None,
            ctx: None,
            pending: None,
            heartbeat_ms,
            last_read: now,
            next_check: now.plus(u64::from(heartbeat_ms)),
            idle_checks: 0,
            closed: false,
            echo_heartbeats: true,
            tx: BytesMut::new(),
            effects: VecDeque::new(),
            encoder,
        }
    }

    // ----- getters -----

    /// Whether the session has asked to close (it ignores input from then on).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The device id, once handshaked or fast-connected.
    pub fn device_id(&self) -> Option<&str> {
        self.ctx.as_deref().map(|c| c.device_id.as_str())
    }

    /// The handshake's osName, once handshaked or fast-connected.
    pub fn os_name(&self) -> Option<&str> {
        self.ctx.as_deref().map(|c| c.os_name.as_str())
    }

    /// The bound user, if any.
    pub fn user_id(&self) -> Option<&str> {
        self.ctx.as_deref().and_then(|c| c.user_id.as_deref())
    }

    /// The heartbeat period in force, ms.
    pub fn heartbeat_ms(&self) -> u32 {
        self.heartbeat_ms
    }

    /// Whether the session has a session cipher (handshake or fast connect done).
    pub fn is_online(&self) -> bool {
        self.cipher.is_some() && self.ctx.is_some()
    }

    // ----- mutators -----

    /// Whether heartbeats are echoed (the "stop answering heartbeats" fault turns it off).
    pub fn set_echo_heartbeats(&mut self, on: bool) {
        self.echo_heartbeats = on;
    }

    // ----- input -----

    /// A `0xDF` heartbeat byte arrived.
    pub fn handle_heartbeat(&mut self, now: Tick) {
        if self.closed {
            return;
        }
        self.last_read = now;
        self.on_heartbeat();
    }

    /// The shell's decoder failed (over-limit or negative length): the real server's decoder
    /// throws and Netty closes the channel, with no ERROR.
    pub fn handle_decode_error(&mut self, _err: &DecodeError) {
        self.close(CloseReason::BadFrame);
    }

    /// A whole frame arrived.
    pub fn handle_frame<R: RngCore + CryptoRng>(
        &mut self,
        now: Tick,
        wall_ms: i64,
        rng: &mut R,
        frame: Frame,
    ) {
        if self.closed {
            return;
        }
        self.last_read = now;
        match frame.command() {
            Some(Cmd::Heartbeat) => self.on_heartbeat(),
            Some(Cmd::Handshake) => self.on_handshake(wall_ms, rng, &frame),
            Some(Cmd::FastConnect) => self.on_fast_connect(&frame),
            Some(Cmd::Bind) => self.on_bind(&frame, false),
            Some(Cmd::Unbind) => self.on_bind(&frame, true),
            Some(Cmd::Push) => self.on_client_push(&frame),
            Some(Cmd::Ack) => self.effects.push_back(Effect::Acked(frame.msg_id)),
            Some(Cmd::HttpProxy) if self.cfg.http_proxy.is_some() => self.on_http_proxy(&frame),
            _ => self.error(
                &frame,
                ErrorCode::UNSUPPORTED_CMD,
                None,
                Some(CloseReason::UnsupportedCmd),
            ),
        }
    }

    /// The answer to [`Effect::LoadSession`] (FastConnectHandler).
    pub fn handle_session_loaded(&mut self, lookup: SessionLookup) {
        let Some(p) = self.pending.take() else { return };
        if self.closed {
            return;
        }
        let req = (Cmd::FastConnect as u8, p.msg_id);
        match lookup {
            SessionLookup::Failed => {
                self.error_to(
                    req,
                    ErrorCode::DISPATCH_ERROR,
                    None,
                    Some(CloseReason::StoreFailed),
                );
            }
            SessionLookup::Missing => {
                self.error_to(req, ErrorCode::SESSION_EXPIRED, None, None);
            }
            SessionLookup::Found(s) if s.device_id != p.device_id => {
                self.error_to(req, ErrorCode::INVALID_DEVICE, None, None);
            }
            SessionLookup::Found(s) => {
                let heartbeat = self.cfg.heartbeat_for(p.max_heartbeat);
                let ok = FastConnectOk { heartbeat };
                self.encoder
                    .write_raw(&mut self.tx, &ok, p.msg_id, Flags::NONE);
                // The stored context replaces the connection's, cipher included.
                self.cipher = Some(s.cipher.clone());
                self.ctx = Some(Box::new(Context {
                    device_id: s.device_id.clone(),
                    os_name: s.os_name.clone(),
                    user_id: None,
                }));
                self.set_heartbeat(heartbeat);
                self.event(SessionEvent::FastConnect);
            }
        }
    }

    /// Push `content` to the client with "send" (deflate above the threshold, then the session
    /// cipher). Returns `false`, writing nothing, when the session is not online.
    pub fn handle_push(&mut self, msg_id: MsgId, content: Bytes, flags: Flags) -> bool {
        if self.closed || !self.is_online() {
            return false;
        }
        let flags = flags.without(Flags::CRYPTO).without(Flags::COMPRESS);
        let push = Push { content };
        self.encoder
            .write(&mut self.tx, &push, msg_id, flags, self.cipher.as_ref());
        self.event(SessionEvent::PushSent);
        true
    }

    /// The answer to [`Effect::HttpProxy`]: a backend's response goes with the session cipher
    /// (deflated above the threshold), the proxy's own failure statuses raw (`raw`).
    pub fn handle_http_response(&mut self, msg_id: MsgId, response: HttpResponse, raw: bool) {
        if self.closed {
            return;
        }
        let cipher = if raw { None } else { self.cipher.as_ref() };
        self.encoder
            .write(&mut self.tx, &response, msg_id, Flags::NONE, cipher);
    }

    /// A push from the gateway port: as [`ServerSession::handle_push`], but the gateway
    /// frame's flags are ORed in whole, as the real server does (PROTOCOL.md 8.5): a COMPRESS
    /// flag reaches the device on content that was not deflated. Returns `false`, writing
    /// nothing, when the session is not online.
    pub fn handle_gateway_push(&mut self, msg_id: MsgId, content: Bytes, flags: Flags) -> bool {
        if self.closed || !self.is_online() {
            return false;
        }
        let push = Push { content };
        let flags = flags.without(Flags::CRYPTO);
        self.encoder
            .write(&mut self.tx, &push, msg_id, flags, self.cipher.as_ref());
        self.event(SessionEvent::PushSent);
        true
    }

    /// Another connection bound `user_id`: send KICK with the session cipher
    /// (`RouterChangeListener.sendKickUserMessage2Client`). The connection stays open; the
    /// client gives it up. Returns `false` when there is nothing to kick.
    pub fn handle_kick(&mut self, msg_id: MsgId, user_id: &str) -> bool {
        if self.closed {
            return false;
        }
        let device_id = self.device_id().unwrap_or_default().to_owned();
        let kick = Kick {
            device_id,
            user_id: user_id.to_owned(),
        };
        self.encoder.write(
            &mut self.tx,
            &kick,
            msg_id,
            Flags::NONE,
            self.cipher.as_ref(),
        );
        true
    }

    /// The garbage fault: one frame no client can decode (a Push flagged CRYPTO whose body
    /// is not a whole number of AES blocks).
    pub fn handle_garbage(&mut self) {
        if self.closed {
            return;
        }
        let start = begin_frame(&mut self.tx, Cmd::Push, Flags::CRYPTO, MsgId(0));
        self.tx
            .extend_from_slice(&[0xA5, 0x5A, 0x00, 0xFF, 0x13, 0x37, 0x42]);
        finish_frame(&mut self.tx, start);
    }

    /// The idle check (`HeartbeatCheckTask.run`). Early or repeated calls are no-ops.
    pub fn handle_timeout(&mut self, now: Tick) {
        if self.closed || now < self.next_check {
            return;
        }
        let idle = now.0.saturating_sub(self.last_read.0);
        if idle > u64::from(self.heartbeat_ms) + READ_TIMEOUT_SLACK_MS {
            self.idle_checks += 1;
            if self.idle_checks > MAX_HB_TIMEOUT_TIMES {
                self.close(CloseReason::IdleTimeout);
                return;
            }
        } else {
            self.idle_checks = 0;
        }
        self.next_check = now.plus(u64::from(self.heartbeat_ms));
    }

    // ----- output -----

    /// Moves the bytes to write into `out`. Returns whether there were any.
    #[must_use]
    pub fn poll_transmit(&mut self, out: &mut BytesMut) -> bool {
        if self.tx.is_empty() {
            return false;
        }
        if out.is_empty() {
            std::mem::swap(out, &mut self.tx);
        } else {
            out.extend_from_slice(&self.tx);
            self.tx.clear();
        }
        true
    }

    /// When [`ServerSession::handle_timeout`] wants to run next; `None` once closed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Tick> {
        (!self.closed).then_some(self.next_check)
    }

    /// The next effect, in the order they arose.
    #[must_use]
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    fn event(&mut self, ev: SessionEvent) {
        self.effects.push_back(Effect::Event(ev));
    }

    fn close(&mut self, reason: CloseReason) {
        if !self.closed {
            self.closed = true;
            self.pending = None;
            self.effects.push_back(Effect::Close(reason));
        }
    }
}

mod handlers;
mod types;

#[cfg(test)]
mod tests;
