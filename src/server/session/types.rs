//! The values a [`ServerSession`](super::ServerSession) exchanges with its shell: effects,
//! lookups, close reasons, counted events, and the client type routes are kept per.

use crate::proto::message::ErrorCode;
use crate::proto::MsgId;
use crate::tickets::format::ReusableSession;

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
    /// More than [`MAX_HB_TIMEOUT_TIMES`](super::MAX_HB_TIMEOUT_TIMES) consecutive idle checks.
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
    /// Flush what [`poll_transmit`](super::ServerSession::poll_transmit) gave, then close the
    /// connection.
    Close(CloseReason),
    /// Look up a reusable session; answer with
    /// [`handle_session_loaded`](super::ServerSession::handle_session_loaded).
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
        /// The bind's tags (a broadcast's filter).
        tags: String,
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
    /// Forward an HTTP_PROXY request; answer with
    /// [`handle_http_response`](super::ServerSession::handle_http_response) whenever it is
    /// done (the session goes on meanwhile).
    HttpProxy {
        /// The request's sessionId, which the answer carries.
        msg_id: MsgId,
        /// What the device asked for.
        request: crate::proto::message::HttpRequest,
    },
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
