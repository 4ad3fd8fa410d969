//! Message bodies (PROTOCOL.md 4), one file per family, and decoding by direction.
//!
//! Each type encodes by appending its fields to a buffer and decodes from a body [`Bytes`]
//! (byte-array fields and push content stay slices of it). Decoding ignores bytes after the
//! last field, as the Java decoders do; a field past the end is an error.

mod bind;
mod handshake;
mod http;
mod push;
mod reply;

use bytes::{Bytes, BytesMut};

pub use bind::{Bind, Unbind, UserBinding};
pub use handshake::{FastConnect, FastConnectOk, Handshake, HandshakeOk};
pub use http::{HttpMethod, HttpRequest, HttpResponse};
pub use push::{Ack, Kick, Push};
pub use reply::{ErrorCode, ErrorReply, OkReply};

use super::{Cmd, DecodeError};

/// A message body with its command.
pub trait Message: Sized {
    /// The command byte this body travels under.
    const CMD: Cmd;

    /// Appends the body's fields.
    fn encode_body(&self, out: &mut BytesMut);

    /// Decodes the body's fields (after decryption and inflation).
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] when a field is missing, too long or malformed.
    fn decode_body(body: Bytes) -> Result<Self, DecodeError>;
}

/// What a server sends a client, decoded by command.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ServerMessage {
    /// A heartbeat sent as a frame (cmd 1) rather than the `0xDF` byte.
    Heartbeat,
    HandshakeOk(HandshakeOk),
    FastConnectOk(FastConnectOk),
    Ok(OkReply),
    Error(ErrorReply),
    Push(Push),
    Kick(Kick),
    HttpResponse(HttpResponse),
    /// A command a client has no use for; the caller decides (ignore, count).
    Other(u8),
}

impl ServerMessage {
    /// Decodes a server-to-client body by its command byte.
    ///
    /// # Errors
    ///
    /// As the message's [`Message::decode_body`].
    pub fn decode(cmd: u8, body: Bytes) -> Result<Self, DecodeError> {
        Ok(match Cmd::from_u8(cmd) {
            Some(Cmd::Heartbeat) => Self::Heartbeat,
            Some(Cmd::Handshake) => Self::HandshakeOk(HandshakeOk::decode_body(body)?),
            Some(Cmd::FastConnect) => Self::FastConnectOk(FastConnectOk::decode_body(body)?),
            Some(Cmd::Ok) => Self::Ok(OkReply::decode_body(body)?),
            Some(Cmd::Error) => Self::Error(ErrorReply::decode_body(body)?),
            Some(Cmd::Push) => Self::Push(Push::decode_body(body)?),
            Some(Cmd::Kick) => Self::Kick(Kick::decode_body(body)?),
            Some(Cmd::HttpProxy) => Self::HttpResponse(HttpResponse::decode_body(body)?),
            _ => Self::Other(cmd),
        })
    }
}

/// What a client sends a server, decoded by command.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ClientMessage {
    /// A heartbeat sent as a frame (cmd 1) rather than the `0xDF` byte.
    Heartbeat,
    Handshake(Handshake),
    FastConnect(FastConnect),
    Bind(Bind),
    Unbind(Unbind),
    Push(Push),
    Ack(Ack),
    HttpRequest(HttpRequest),
    /// A command the server has no handler for (the real server answers ERROR 101).
    Unsupported(u8),
}

impl ClientMessage {
    /// Decodes a client-to-server body by its command byte.
    ///
    /// # Errors
    ///
    /// As the message's [`Message::decode_body`].
    pub fn decode(cmd: u8, body: Bytes) -> Result<Self, DecodeError> {
        Ok(match Cmd::from_u8(cmd) {
            Some(Cmd::Heartbeat) => Self::Heartbeat,
            Some(Cmd::Handshake) => Self::Handshake(Handshake::decode_body(body)?),
            Some(Cmd::FastConnect) => Self::FastConnect(FastConnect::decode_body(body)?),
            Some(Cmd::Bind) => Self::Bind(Bind::decode_body(body)?),
            Some(Cmd::Unbind) => Self::Unbind(Unbind::decode_body(body)?),
            Some(Cmd::Push) => Self::Push(Push::decode_body(body)?),
            Some(Cmd::Ack) => Self::Ack(Ack::decode_body(body)?),
            Some(Cmd::HttpProxy) => Self::HttpRequest(HttpRequest::decode_body(body)?),
            _ => Self::Unsupported(cmd),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
