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

use bytes::{BufMut, Bytes, BytesMut};
use rand::{CryptoRng, RngCore};

use crate::crypto::{mix_keys, session_id_md5_hex, AesCipher, RsaDecryptor};
use crate::proto::frame::{begin_frame, finish_frame};
use crate::proto::message::{
    Ack, Bind, ErrorCode, ErrorReply, FastConnect, FastConnectOk, Handshake, HandshakeOk,
    HttpRequest, HttpResponse, Kick, Message, OkReply, Push, Unbind, UserBinding,
};
use crate::proto::pipeline::{finish_open, Encoder};
use crate::proto::{
    open_body, BodyLimits, Cmd, DecodeError, Flags, Frame, MsgId, HEARTBEAT_BYTE,
};
use crate::tickets::format::ReusableSession;

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
    /// Answer HTTP_PROXY with HttpResponse 502 (a server without a proxy). The real server's
    /// default (`mp.http.proxy-enabled=false`) has no handler: ERROR 101 and a close.
    pub http_proxy: bool,
    /// Heartbeat period before a handshake (the real server: 10 s).
    pub pre_handshake_heartbeat_ms: u32,
}

impl SessionConfig {
    /// `ConfigTools.getHeartbeat`: `max(min, min(client max, max))`. The client's min is not
    /// used by the real server either.
    pub fn heartbeat_for(&self, client_max: i32) -> i32 {
        self.min_heartbeat_ms.max(client_max.min(self.max_heartbeat_ms))
    }
}

/// The client type a route is kept per (Java `ClientType.find`): the first class whose names
/// occur in the lower-cased osName.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientType(pub i8);

impl ClientType {
    /// Classifies an osName: 1 mobile (android, ios), 2 pc (windows, mac, linux), 3 web (web,
    /// h5), -1 unknown.
    pub fn from_os_name(os_name: &str) -> ClientType {
        const CLASSES: [(i8, &[&str]); 3] = [
            (1, &["android", "ios"]),
            (2, &["windows", "mac", "linux"]),
            (3, &["web", "h5"]),
        ];
        let os = os_name.to_lowercase();
        for (ty, names) in CLASSES {
            if names.iter().any(|n| os.contains(n)) {
                return ClientType(ty);
            }
        }
        ClientType(-1)
    }
}

/// Why a connection ended. The session names its own reasons; the shell adds the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Handshake with an empty deviceId or wrong key/iv lengths ("Param invalid").
    ParamInvalid,
    /// Bind or unbind with an empty userId ("invalid param").
    InvalidBindParam,
    /// Bind or unbind before a handshake or fast connect ("not handshake").
    NotHandshake,
    /// A command with no handler (ERROR 101).
    UnsupportedCmd,
    /// A body that could not be decrypted, inflated or decoded (ERROR 100).
    Garbled,
    /// The session store failed during a fast connect (ERROR 100).
    StoreFailed,
    /// A header announced a body over `max-packet-size`, or a negative length.
    BadFrame,
    /// More than [`MAX_HB_TIMEOUT_TIMES`] consecutive idle checks.
    IdleTimeout,
    /// The peer closed or reset the connection (shell).
    PeerClosed,
    /// A socket error (shell).
    IoError,
    /// The close-all fault switch (shell).
    CloseAll,
    /// The reject-new fault switch closed it at accept (shell).
    Rejected,
    /// The server shut down (shell).
    Shutdown,
}

impl CloseReason {
    /// A stable snake_case name, for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::ParamInvalid => "param_invalid",
            CloseReason::InvalidBindParam => "invalid_bind_param",
            CloseReason::NotHandshake => "not_handshake",
            CloseReason::UnsupportedCmd => "unsupported_cmd",
            CloseReason::Garbled => "garbled",
            CloseReason::StoreFailed => "store_failed",
            CloseReason::BadFrame => "bad_frame",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::IoError => "io_error",
            CloseReason::CloseAll => "close_all",
            CloseReason::Rejected => "rejected",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Something worth counting happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// A handshake succeeded.
    Handshake,
    /// A fast connect succeeded.
    FastConnect,
    /// A user was bound.
    Bind,
    /// A user was unbound.
    Unbind,
    /// A heartbeat arrived.
    Heartbeat,
    /// An ERROR frame was sent with this code (0 for the reason-only errors).
    ErrorSent(ErrorCode),
    /// A push was written to the connection.
    PushSent,
    /// The client pushed something up (cmd 15).
    ClientPush,
    /// An HTTP_PROXY request was answered.
    HttpProxy,
}

/// What the shell must do for the session.
#[derive(Debug)]
pub enum Effect {
    /// Flush what [`ServerSession::poll_transmit`] gave, then close the connection.
    Close(CloseReason),
    /// Look up a reusable session; answer with [`ServerSession::handle_session_loaded`].
    LoadSession {
        /// The resumption id from the FastConnect.
        session_id: String,
    },
    /// Store a reusable session for `ttl_secs` seconds.
    StoreSession {
        /// The resumption id handed to the client.
        session_id: String,
        /// What a fast connect restores.
        session: ReusableSession,
        /// Time to live.
        ttl_secs: u32,
    },
    /// Route `user_id` of this client type to this connection; KICK the previous one.
    RegisterRoute {
        /// The user.
        user_id: String,
        /// The route's client type.
        client_type: ClientType,
    },
    /// Remove the route if it still points to this connection.
    UnregisterRoute {
        /// The user.
        user_id: String,
        /// The route's client type.
        client_type: ClientType,
    },
    /// The client acked the push with this message id.
    Acked(MsgId),
    /// Count something.
    Event(SessionEvent),
}

/// The answer to [`Effect::LoadSession`].
#[derive(Debug)]
pub enum SessionLookup {
    /// The session exists and has not expired.
    Found(ReusableSession),
    /// No such session (never stored, expired, or undecodable).
    Missing,
    /// The store failed.
    Failed,
}

/// What a connection knows after a handshake or fast connect (Java `SessionContext`).
#[derive(Debug)]
struct Context {
    device_id: String,
    os_name: String,
    os_version: String,
    client_version: String,
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
            Some(Cmd::HttpProxy) if self.cfg.http_proxy => self.on_http_proxy(&frame),
            _ => self.error(&frame, ErrorCode::UNSUPPORTED_CMD, None, Some(CloseReason::UnsupportedCmd)),
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
                self.error_to(req, ErrorCode::DISPATCH_ERROR, None, Some(CloseReason::StoreFailed));
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
                self.encoder.write_raw(&mut self.tx, &ok, p.msg_id, Flags::NONE);
                // The stored context replaces the connection's, cipher included.
                self.cipher = Some(s.cipher.clone());
                self.ctx = Some(Box::new(Context {
                    device_id: s.device_id.clone(),
                    os_name: s.os_name.clone(),
                    os_version: s.os_version.clone(),
                    client_version: s.client_version.clone(),
                    user_id: None,
                }));
                self.set_heartbeat(heartbeat);
                self.effects.push_back(Effect::Event(SessionEvent::FastConnect));
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
        self.encoder.write(&mut self.tx, &push, msg_id, flags, self.cipher.as_ref());
        self.effects.push_back(Effect::Event(SessionEvent::PushSent));
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
        let kick = Kick { device_id, user_id: user_id.to_owned() };
        self.encoder.write(&mut self.tx, &kick, msg_id, Flags::NONE, self.cipher.as_ref());
        true
    }

    /// The garbage fault: one frame no client can decode (a Push flagged CRYPTO whose body
    /// is not a whole number of AES blocks).
    pub fn handle_garbage(&mut self) {
        if self.closed {
            return;
        }
        let start = begin_frame(&mut self.tx, Cmd::Push, Flags::CRYPTO, MsgId(0));
        self.tx.extend_from_slice(&[0xA5, 0x5A, 0x00, 0xFF, 0x13, 0x37, 0x42]);
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

    // ----- handlers -----

    fn on_heartbeat(&mut self) {
        self.effects.push_back(Effect::Event(SessionEvent::Heartbeat));
        if self.echo_heartbeats {
            self.tx.put_u8(HEARTBEAT_BYTE);
        }
    }

    /// Decrypts with the connection's cipher (RSA before the handshake) and inflates, as
    /// `BaseMessage.decodeBody` does.
    fn open(&self, frame: &Frame) -> Result<Bytes, DecodeError> {
        let max = self.cfg.limits.max_inflated;
        match &self.cipher {
            Some(aes) => open_body(frame, Some(aes), max),
            None if frame.flags.contains(Flags::CRYPTO) && !frame.body.is_empty() => {
                let plain = self.cfg.rsa.decrypt(&frame.body)?;
                finish_open(frame.flags, Bytes::from(plain), max)
            }
            None => open_body(frame, None, max),
        }
    }

    fn on_handshake<R: RngCore + CryptoRng>(&mut self, wall_ms: i64, rng: &mut R, frame: &Frame) {
        let body = match self.open(frame) {
            Ok(body) => body,
            Err(_) => return self.garbled(frame),
        };
        // An empty body leaves every Java field null: "Param invalid", like a bad key size.
        let hs = if body.is_empty() {
            None
        } else {
            match Handshake::decode_body(body) {
                Ok(hs) => Some(hs),
                Err(DecodeError::WrongFieldSize { .. }) => None,
                Err(_) => return self.garbled(frame),
            }
        };
        let Some(hs) = hs.filter(|hs| !hs.device_id.is_empty()) else {
            return self.error(frame, ErrorCode(0), Some("Param invalid"), Some(CloseReason::ParamInvalid));
        };
        if self.device_id() == Some(hs.device_id.as_str()) {
            return self.error(frame, ErrorCode::REPEAT_HANDSHAKE, None, None);
        }
        let mut server_key = [0u8; 16];
        rng.fill_bytes(&mut server_key);
        let id_prefix = if self.cfg.sessionid_quirk {
            // genSession runs before the context learns the new deviceId.
            self.device_id().unwrap_or("null").to_owned()
        } else {
            hs.device_id.clone()
        };
        let session_id = session_id_md5_hex(&format!("{id_prefix}{wall_ms}"));
        let ttl_secs = self.cfg.session_expire_secs;
        let expire_time = wall_ms.saturating_add(i64::from(ttl_secs) * 1000);
        let heartbeat = self.cfg.heartbeat_for(hs.max_heartbeat);
        let ok = HandshakeOk { server_key, heartbeat, session_id: session_id.clone(), expire_time };
        let client_cipher = AesCipher::new(hs.client_key, hs.iv);
        self.encoder.write(&mut self.tx, &ok, frame.msg_id, Flags::NONE, Some(&client_cipher));
        let session_cipher = AesCipher::new(mix_keys(&hs.client_key, &server_key), hs.iv);
        self.cipher = Some(session_cipher.clone());
        let user_id = self.ctx.take().and_then(|c| c.user_id);
        let Handshake { device_id, os_name, os_version, client_version, .. } = hs;
        let session = ReusableSession {
            os_name: os_name.clone(),
            os_version: os_version.clone(),
            client_version: client_version.clone(),
            device_id: device_id.clone(),
            cipher: session_cipher,
        };
        self.ctx =
            Some(Box::new(Context { device_id, os_name, os_version, client_version, user_id }));
        self.set_heartbeat(heartbeat);
        self.effects.push_back(Effect::StoreSession { session_id, session, ttl_secs });
        self.effects.push_back(Effect::Event(SessionEvent::Handshake));
    }

    fn on_fast_connect(&mut self, frame: &Frame) {
        let fc = match self.open(frame) {
            Ok(body) if body.is_empty() => None,
            Ok(body) => match FastConnect::decode_body(body) {
                Ok(fc) => Some(fc),
                Err(_) => return self.garbled(frame),
            },
            Err(_) => return self.garbled(frame),
        };
        // Java with an empty body looks up "mp:rs:null" and finds nothing: ERROR 103.
        let (session_id, device_id, max_heartbeat) = match fc {
            Some(fc) => (fc.session_id, fc.device_id, fc.max_heartbeat),
            None => ("null".to_owned(), String::new(), 0),
        };
        self.pending =
            Some(Box::new(PendingFastConnect { msg_id: frame.msg_id, device_id, max_heartbeat }));
        self.effects.push_back(Effect::LoadSession { session_id });
    }

    fn on_bind(&mut self, frame: &Frame, unbind: bool) {
        let binding = match self.open(frame) {
            Ok(body) if body.is_empty() => UserBinding::default(),
            Ok(body) => {
                let decoded = if unbind {
                    Unbind::decode_body(body).map(|u| u.0)
                } else {
                    Bind::decode_body(body).map(|b| b.0)
                };
                match decoded {
                    Ok(b) => b,
                    Err(_) => return self.garbled(frame),
                }
            }
            Err(_) => return self.garbled(frame),
        };
        if binding.user_id.is_empty() {
            let reason = Some("invalid param");
            return self.error(frame, ErrorCode(0), reason, Some(CloseReason::InvalidBindParam));
        }
        let Some(ctx) = self.ctx.as_deref() else {
            let reason = Some("not handshake");
            return self.error(frame, ErrorCode(0), reason, Some(CloseReason::NotHandshake));
        };
        if unbind {
            return self.unbind(frame);
        }
        match ctx.user_id.as_deref() {
            Some(current) if current == binding.user_id => return self.ok(frame, "bind success"),
            // BindUserHandler unbinds the old user first, OK and all.
            Some(_) => self.unbind(frame),
            None => {}
        }
        let client_type = self.client_type();
        if let Some(ctx) = self.ctx.as_deref_mut() {
            ctx.user_id = Some(binding.user_id.clone());
        }
        self.effects.push_back(Effect::RegisterRoute { user_id: binding.user_id, client_type });
        self.effects.push_back(Effect::Event(SessionEvent::Bind));
        self.ok(frame, "bind success");
    }

    fn unbind(&mut self, frame: &Frame) {
        let client_type = self.client_type();
        if let Some(user_id) = self.ctx.as_deref_mut().and_then(|c| c.user_id.take()) {
            self.effects.push_back(Effect::UnregisterRoute { user_id, client_type });
        }
        self.effects.push_back(Effect::Event(SessionEvent::Unbind));
        self.ok(frame, "unbind success");
    }

    fn on_client_push(&mut self, frame: &Frame) {
        if self.open(frame).is_err() {
            return self.garbled(frame);
        }
        self.effects.push_back(Effect::Event(SessionEvent::ClientPush));
        if frame.flags.contains(Flags::AUTO_ACK) {
            self.encoder.write_raw(&mut self.tx, &Ack, frame.msg_id, Flags::NONE);
        }
    }

    fn on_http_proxy(&mut self, frame: &Frame) {
        let req = match self.open(frame) {
            Ok(body) if body.is_empty() => None,
            Ok(body) => match HttpRequest::decode_body(body) {
                Ok(req) => Some(req),
                Err(_) => return self.garbled(frame),
            },
            Err(_) => return self.garbled(frame),
        };
        let (status_code, reason) = match req {
            Some(req) if !req.uri.is_empty() => (502, "Bad Gateway"),
            _ => (400, "Bad Request"),
        };
        let resp = HttpResponse {
            status_code,
            reason_phrase: reason.to_owned(),
            headers: String::new(),
            body: Bytes::new(),
        };
        self.encoder.write_raw(&mut self.tx, &resp, frame.msg_id, Flags::NONE);
        self.effects.push_back(Effect::Event(SessionEvent::HttpProxy));
    }

    // ----- helpers -----

    fn client_type(&self) -> ClientType {
        ClientType::from_os_name(self.ctx.as_deref().map_or("", |c| c.os_name.as_str()))
    }

    fn set_heartbeat(&mut self, heartbeat: i32) {
        // A non-positive heartbeat (a misconfigured server) would spin the idle check.
        self.heartbeat_ms = u32::try_from(heartbeat).unwrap_or(1).max(1);
    }

    fn ok(&mut self, frame: &Frame, data: &str) {
        let ok = OkReply { cmd: frame.cmd, code: 0, data: data.to_owned() };
        self.encoder.write_raw(&mut self.tx, &ok, frame.msg_id, Flags::NONE);
    }

    /// A body that cannot be opened or decoded: the handler throws, `MessageDispatcher`
    /// answers ERROR 100 (DISPATCH_ERROR) and closes.
    fn garbled(&mut self, frame: &Frame) {
        self.error(frame, ErrorCode::DISPATCH_ERROR, None, Some(CloseReason::Garbled));
    }

    fn error(&mut self, frame: &Frame, code: ErrorCode, reason: Option<&str>, close: Option<CloseReason>) {
        self.error_to((frame.cmd, frame.msg_id), code, reason, close);
    }

    /// ERROR, always raw (`ErrorMessage.send` is `sendRaw`); the reason defaults to the Java
    /// `ErrorCode.errorMsg`.
    fn error_to(
        &mut self,
        (cmd, msg_id): (u8, MsgId),
        code: ErrorCode,
        reason: Option<&str>,
        close: Option<CloseReason>,
    ) {
        let reason = reason.unwrap_or_else(|| error_message(code)).to_owned();
        let err = ErrorReply { cmd, code, reason, data: String::new() };
        self.encoder.write_raw(&mut self.tx, &err, msg_id, Flags::NONE);
        self.effects.push_back(Effect::Event(SessionEvent::ErrorSent(code)));
        if let Some(reason) = close {
            self.close(reason);
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if !self.closed {
            self.closed = true;
            self.pending = None;
            self.effects.push_back(Effect::Close(reason));
        }
    }
}

/// Java `ErrorCode.errorMsg`.
pub fn error_message(code: ErrorCode) -> &'static str {
    match code.0 {
        1 => "user offline",
        2 => "push to client failure",
        3 => "router change",
        4 => "ack timeout",
        100 => "handle message error",
        101 => "unsupported command",
        102 => "repeat handshake",
        103 => "session expired",
        104 => "invalid device",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests;
