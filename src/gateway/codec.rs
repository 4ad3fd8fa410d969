//! The gateway's frames (PROTOCOL.md 8.3), sans-IO: GatewayPush (cmd 16) and GatewayKickUser
//! (cmd 14) bodies, and the OK / ERROR replies decoded into a [`GatewayReply`].
//!
//! The gateway connection has no cipher: every frame is written raw ("sendRaw"). A reader
//! still goes by the flags (PROTOCOL.md 1): a GATEWAY_PUSH flagged COMPRESS is inflated.

use bytes::{BufMut, Bytes, BytesMut};

use crate::proto::field::{put_bytes, put_str, Reader};
use crate::proto::message::{ErrorCode, ErrorReply, OkReply};
use crate::proto::pipeline::{finish_open, Encoder};
use crate::proto::{Cmd, DecodeError, Flags, Frame, Message, MsgId};

/// GatewayPush (app -> gateway). An empty `user_id` (written as length 0, the wire's null)
/// makes it a broadcast (8.7).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayPush {
    /// The user, or empty for a broadcast.
    pub user_id: String,
    /// The route's client type (0 for a broadcast).
    pub client_type: i32,
    /// The server's own deadline for this push, ms (upstream: its timeout - 500).
    pub timeout: i32,
    /// The bytes the device gets, unchanged.
    pub content: Bytes,
    /// Broadcast task id (flow control in Redis), or empty.
    pub task_id: String,
    /// Broadcast tags as a JSON array string (`["vip","test"]`), or empty.
    pub tags: String,
    /// Broadcast condition (a JavaScript expression), or empty.
    pub condition: String,
}

impl GatewayPush {
    /// Whether this is a broadcast (no user).
    pub fn is_broadcast(&self) -> bool {
        self.user_id.is_empty()
    }
}

impl Message for GatewayPush {
    const CMD: Cmd = Cmd::GatewayPush;

    fn encode_body(&self, out: &mut BytesMut) {
        put_str(out, &self.user_id);
        out.put_i32(self.client_type);
        out.put_i32(self.timeout);
        put_bytes(out, &self.content);
        put_str(out, &self.task_id);
        put_str(out, &self.tags);
        put_str(out, &self.condition);
    }

    fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            user_id: r.string()?,
            client_type: r.i32()?,
            timeout: r.i32()?,
            content: r.bytes()?,
            task_id: r.string()?,
            tags: r.string()?,
            condition: r.string()?,
        })
    }
}

/// GatewayKickUser (server -> server, UDP gateway only; the TCP gateway refuses it, 8.9).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct GatewayKickUser {
    pub user_id: String,
    pub device_id: String,
    pub conn_id: String,
    pub client_type: i32,
    pub target_server: String,
    pub target_port: i32,
}

impl Message for GatewayKickUser {
    const CMD: Cmd = Cmd::GatewayKick;

    fn encode_body(&self, out: &mut BytesMut) {
        put_str(out, &self.user_id);
        put_str(out, &self.device_id);
        put_str(out, &self.conn_id);
        out.put_i32(self.client_type);
        put_str(out, &self.target_server);
        out.put_i32(self.target_port);
    }

    fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            user_id: r.string()?,
            device_id: r.string()?,
            conn_id: r.string()?,
            client_type: r.i32()?,
            target_server: r.string()?,
            target_port: r.i32()?,
        })
    }
}

/// Appends a GATEWAY_PUSH frame, raw, as the upstream client writes it. `flags` is the ack
/// mode (0, [`Flags::AUTO_ACK`] or [`Flags::BIZ_ACK`]).
pub fn encode_push(out: &mut BytesMut, push: &GatewayPush, id: MsgId, flags: Flags) {
    Encoder::default().write_raw(out, push, id, flags);
}

/// Decodes a GATEWAY_PUSH frame's body, inflating it if the frame says COMPRESS (the real
/// server does, live). `max_inflated` caps the inflated size.
///
/// # Errors
///
/// A CRYPTO flag ([`DecodeError::NoCipher`]: the gateway has no cipher), a corrupt deflate
/// stream, or a field past the end.
pub fn decode_push(frame: &Frame, max_inflated: usize) -> Result<GatewayPush, DecodeError> {
    if frame.flags.contains(Flags::CRYPTO) && !frame.body.is_empty() {
        return Err(DecodeError::NoCipher);
    }
    let body = finish_open(frame.flags, frame.body.clone(), max_inflated)?;
    GatewayPush::decode_body(body)
}

/// A gateway reply, matched to its request by the header message id (8.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayReply {
    /// OK {cmd, code, data}: data is GatewayPushResult JSON, or empty for a broadcast.
    Ok(OkReply),
    /// ERROR {cmd, code, reason, data}.
    Error(ErrorReply),
}

impl GatewayReply {
    /// Decodes a frame from the gateway. `Ok(None)` for a frame that is neither OK nor ERROR
    /// (the caller counts it: a gateway never sends one).
    ///
    /// # Errors
    ///
    /// A body that does not decode.
    pub fn decode(frame: &Frame) -> Result<Option<Self>, DecodeError> {
        if frame.flags.contains(Flags::CRYPTO) && !frame.body.is_empty() {
            return Err(DecodeError::NoCipher);
        }
        let body = finish_open(
            frame.flags,
            frame.body.clone(),
            crate::proto::DEFAULT_MAX_INFLATED,
        )?;
        Ok(match frame.command() {
            Some(Cmd::Ok) => Some(Self::Ok(OkReply::decode_body(body)?)),
            Some(Cmd::Error) => Some(Self::Error(ErrorReply::decode_body(body)?)),
            _ => None,
        })
    }

    /// The command the reply answers.
    pub fn cmd(&self) -> u8 {
        match self {
            Self::Ok(ok) => ok.cmd,
            Self::Error(e) => e.cmd,
        }
    }

    /// The reply's code: 0 for OK, the error code otherwise.
    pub fn code(&self) -> u8 {
        match self {
            Self::Ok(ok) => ok.code,
            Self::Error(e) => e.code.0,
        }
    }

    /// The data string (GatewayPushResult JSON, or empty).
    pub fn data(&self) -> &str {
        match self {
            Self::Ok(ok) => &ok.data,
            Self::Error(e) => &e.data,
        }
    }

    /// Appends this reply as a raw frame answering `id`.
    pub fn encode(&self, out: &mut BytesMut, id: MsgId) {
        let mut enc = Encoder::default();
        match self {
            Self::Ok(ok) => enc.write_raw(out, ok, id, Flags::NONE),
            Self::Error(e) => enc.write_raw(out, e, id, Flags::NONE),
        }
    }

    /// An OK for a GATEWAY_PUSH with `data`.
    pub fn ok(data: String) -> Self {
        Self::Ok(OkReply {
            cmd: Cmd::GatewayPush as u8,
            code: 0,
            data,
        })
    }

    /// An ERROR for command `cmd` with `code`, `reason` and `data`.
    pub fn error(cmd: u8, code: ErrorCode, reason: &str, data: String) -> Self {
        Self::Error(ErrorReply {
            cmd,
            code,
            reason: reason.to_owned(),
            data,
        })
    }
}
