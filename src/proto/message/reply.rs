//! Ok (cmd 11) and Error (cmd 10) replies, with the server's error codes.

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::proto::field::{put_str, Reader};
use crate::proto::{Cmd, DecodeError};

/// The server's error codes (PROTOCOL.md 4). Kept as a byte so an unknown code survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u8);

#[allow(missing_docs)]
impl ErrorCode {
    pub const OFFLINE: ErrorCode = ErrorCode(1);
    pub const PUSH_CLIENT_FAILURE: ErrorCode = ErrorCode(2);
    pub const ROUTER_CHANGE: ErrorCode = ErrorCode(3);
    pub const ACK_TIMEOUT: ErrorCode = ErrorCode(4);
    pub const DISPATCH_ERROR: ErrorCode = ErrorCode(100);
    pub const UNSUPPORTED_CMD: ErrorCode = ErrorCode(101);
    pub const REPEAT_HANDSHAKE: ErrorCode = ErrorCode(102);
    pub const SESSION_EXPIRED: ErrorCode = ErrorCode(103);
    pub const INVALID_DEVICE: ErrorCode = ErrorCode(104);

    /// The Java enum's name, for reports.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "OFFLINE",
            2 => "PUSH_CLIENT_FAILURE",
            3 => "ROUTER_CHANGE",
            4 => "ACK_TIMEOUT",
            100 => "DISPATCH_ERROR",
            101 => "UNSUPPORTED_CMD",
            102 => "REPEAT_HANDSHAKE",
            103 => "SESSION_EXPIRED",
            104 => "INVALID_DEVICE",
            _ => "UNKNOWN",
        }
    }
}

/// Ok (s->c): the command answered, a code and free-form data. The server sends it raw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OkReply {
    /// The command this answers.
    pub cmd: u8,
    /// The code (0 for success in practice).
    pub code: u8,
    /// Free-form data.
    pub data: String,
}

impl Message for OkReply {
    const CMD: Cmd = Cmd::Ok;

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.cmd);
        out.put_u8(self.code);
        put_str(out, &self.data);
    }

    fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            cmd: r.u8()?,
            code: r.u8()?,
            data: r.string()?,
        })
    }
}

/// Error (s->c): the command that failed, a code, a reason and data. Always sent raw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// The command that failed.
    pub cmd: u8,
    /// What failed.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub reason: String,
    /// Free-form data.
    pub data: String,
}

impl Message for ErrorReply {
    const CMD: Cmd = Cmd::Error;

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.cmd);
        out.put_u8(self.code.0);
        put_str(out, &self.reason);
        put_str(out, &self.data);
    }

    fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            cmd: r.u8()?,
            code: ErrorCode(r.u8()?),
            reason: r.string()?,
            data: r.string()?,
        })
    }
}
