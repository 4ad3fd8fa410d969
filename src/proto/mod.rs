//! The MPUSH wire protocol: framing, commands, field encoding and message bodies.
//!
//! Sans-IO: everything here takes bytes and returns bytes or values. No sockets, no clocks,
//! no session state, no logging. Every fact cites `PROTOCOL.md` (the wire spec read from the
//! real Java server); the golden vectors in `shared/vectors/frames.json` pin it byte for byte.
//!
//! - [`frame`]: the 13-byte header, the `0xDF` heartbeat byte and the incremental decoder.
//! - [`field`]: the i16 / `0x7FFF`+i32 length-prefixed strings and byte arrays.
//! - [`message`]: one type per message body, with encode and decode.
//! - [`pipeline`]: the flag-driven body pipeline (deflate, AES) in both directions.
//!
//! ```
//! use bytes::BytesMut;
//! use mpush_fleet::proto::message::{ClientMessage, FastConnect};
//! use mpush_fleet::proto::pipeline::Encoder;
//! use mpush_fleet::proto::{Flags, FrameDecoder, MsgId, Unit};
//!
//! let msg = FastConnect {
//!     session_id: "0123456789abcdef0123456789abcdef".into(),
//!     device_id: "device-1".into(),
//!     min_heartbeat: 180_000,
//!     max_heartbeat: 180_000,
//! };
//! // FastConnect is always sent raw ("sendRaw").
//! let mut wire = BytesMut::new();
//! Encoder::default().write_raw(&mut wire, &msg, MsgId(1), Flags::NONE);
//! wire.extend_from_slice(&[0xDF]); // a heartbeat right behind it
//!
//! let decoder = FrameDecoder::default();
//! let Some(Unit::Frame(frame)) = decoder.decode(&mut wire)? else { unreachable!() };
//! assert_eq!(ClientMessage::decode(frame.cmd, frame.body)?, ClientMessage::FastConnect(msg));
//! assert_eq!(decoder.decode(&mut wire)?, Some(Unit::Heartbeat));
//! assert_eq!(decoder.decode(&mut wire)?, None);
//! # Ok::<(), mpush_fleet::proto::DecodeError>(())
//! ```
#![forbid(unsafe_code)]

pub mod field;
pub mod frame;
pub mod message;
pub mod pipeline;

use std::fmt;

pub use frame::{encode_frame, encode_heartbeat, Frame, FrameDecoder, Unit};
pub use message::Message;
pub use pipeline::{open_body, BodyLimits};

/// The heartbeat unit: a single byte on the stream, in both directions (PROTOCOL.md 1).
pub const HEARTBEAT_BYTE: u8 = 0xDF;
/// Length of a frame header in bytes.
pub const HEADER_LEN: usize = 13;
/// The real server's default `max-packet-size`: bodies above it are rejected (PROTOCOL.md 1).
pub const DEFAULT_MAX_BODY: usize = 10 * 1024;
/// The real server's default compress threshold (PROTOCOL.md 1); the Java SDK uses 1 KiB.
pub const DEFAULT_COMPRESS_THRESHOLD: usize = 10 * 1024;
/// Default cap on an inflated body: a decompression bomb is an error, not an allocation.
pub const DEFAULT_MAX_INFLATED: usize = 1024 * 1024;

/// A command byte (PROTOCOL.md 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Cmd {
    Heartbeat = 1,
    Handshake = 2,
    Login = 3,
    Logout = 4,
    Bind = 5,
    Unbind = 6,
    FastConnect = 7,
    Pause = 8,
    Resume = 9,
    Error = 10,
    Ok = 11,
    HttpProxy = 12,
    Kick = 13,
    GatewayKick = 14,
    Push = 15,
    GatewayPush = 16,
    Notification = 17,
    GatewayNotification = 18,
    Chat = 19,
    GatewayChat = 20,
    Group = 21,
    GatewayGroup = 22,
    Ack = 23,
    Nack = 24,
}

impl Cmd {
    /// The command for a wire byte, or `None` for a byte no command uses.
    pub fn from_u8(b: u8) -> Option<Self> {
        use Cmd::*;
        const ALL: [Cmd; 24] = [
            Heartbeat,
            Handshake,
            Login,
            Logout,
            Bind,
            Unbind,
            FastConnect,
            Pause,
            Resume,
            Error,
            Ok,
            HttpProxy,
            Kick,
            GatewayKick,
            Push,
            GatewayPush,
            Notification,
            GatewayNotification,
            Chat,
            GatewayChat,
            Group,
            GatewayGroup,
            Ack,
            Nack,
        ];
        ALL.get(usize::from(b).wrapping_sub(1)).copied()
    }
}

/// The header's flag bits (PROTOCOL.md 1).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags(0);
    /// The body is AES-encrypted.
    pub const CRYPTO: Flags = Flags(0x01);
    /// The body is deflated (zlib stream).
    pub const COMPRESS: Flags = Flags(0x02);
    /// The device acks once the application has taken the push.
    pub const BIZ_ACK: Flags = Flags(0x04);
    /// The device acks on receipt.
    pub const AUTO_ACK: Flags = Flags(0x08);
    /// JSON body (WebSocket transport only; a TCP client never sends it).
    pub const JSON_BODY: Flags = Flags(0x10);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the bits of `other` added.
    #[must_use]
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// `self` with the bits of `other` cleared.
    #[must_use]
    pub const fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(Flags, &str); 5] = [
            (Flags::CRYPTO, "CRYPTO"),
            (Flags::COMPRESS, "COMPRESS"),
            (Flags::BIZ_ACK, "BIZ_ACK"),
            (Flags::AUTO_ACK, "AUTO_ACK"),
            (Flags::JSON_BODY, "JSON_BODY"),
        ];
        write!(f, "Flags(")?;
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    write!(f, "|")?;
                }
                write!(f, "{name}")?;
                first = false;
            }
        }
        let rest = self.0 & !0x1F;
        if rest != 0 {
            write!(f, "{}{rest:#04x}", if first { "" } else { "|" })?;
        }
        write!(f, ")")
    }
}

/// The header's message id (the wire calls it `sessionId`): the sender numbers its requests
/// 1, 2, 3...; a reply carries the request's id. Not the resumption session id, a string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId(pub i32);

/// Why bytes from the peer could not be decoded. The peer's fault, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header announced a negative body length.
    #[error("negative body length {0}")]
    NegativeLength(i32),
    /// The header announced a body longer than the configured limit.
    #[error("body of {len} bytes exceeds the limit of {max}")]
    BodyTooLong {
        /// Announced length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// A field ran past the end of the body.
    #[error("body truncated")]
    Truncated,
    /// A length prefix was negative.
    #[error("invalid field length")]
    BadFieldLength,
    /// A string field was not UTF-8.
    #[error("string field is not UTF-8")]
    InvalidUtf8,
    /// A fixed-size field (key, iv) had the wrong length.
    #[error("field has {got} bytes, expected {expected}")]
    WrongFieldSize {
        /// Bytes found.
        got: usize,
        /// Bytes required.
        expected: usize,
    },
    /// The CRYPTO flag was set but the connection has no cipher yet.
    #[error("encrypted body but no cipher")]
    NoCipher,
    /// AES decryption failed (bad length or padding).
    #[error("decryption failed: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    /// The deflated body was corrupt.
    #[error("corrupt compressed body")]
    Inflate,
    /// The inflated body would exceed the configured cap (a decompression bomb).
    #[error("inflated body exceeds {max} bytes")]
    InflateTooLarge {
        /// Configured cap.
        max: usize,
    },
    /// After decryption and inflation nothing was left (the Java decoder rejects it too).
    #[error("empty body after decoding")]
    EmptyBody,
}
