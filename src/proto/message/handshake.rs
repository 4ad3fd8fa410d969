//! Session set-up: Handshake / HandshakeOk (cmd 2) and FastConnect / FastConnectOk (cmd 7).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::crypto::KEY_LEN;
use crate::proto::field::{put_bytes, put_str, Reader};
use crate::proto::{Cmd, DecodeError};

/// Handshake (c->s), sent RSA-encrypted. Field order is the wire order.
#[derive(Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The device's id; the server rejects an empty one.
    pub device_id: String,
    /// The client type; bind routes are per client type.
    pub os_name: String,
    /// OS version.
    pub os_version: String,
    /// Client version.
    pub client_version: String,
    /// AES IV for the whole session.
    pub iv: [u8; KEY_LEN],
    /// The client's half of the session key.
    pub client_key: [u8; KEY_LEN],
    /// Smallest heartbeat the client accepts, ms.
    pub min_heartbeat: i32,
    /// Largest heartbeat the client accepts, ms.
    pub max_heartbeat: i32,
    /// Wall-clock ms.
    pub timestamp: i64,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("device_id", &self.device_id)
            .field("os_name", &self.os_name)
            .field("os_version", &self.os_version)
            .field("client_version", &self.client_version)
            .field("iv", &"<redacted>")
            .field("client_key", &"<redacted>")
            .field("min_heartbeat", &self.min_heartbeat)
            .field("max_heartbeat", &self.max_heartbeat)
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

impl Message for Handshake {
    const CMD: Cmd = Cmd::Handshake;

    fn encode_body(&self, out: &mut BytesMut) {
        put_str(out, &self.device_id);
        put_str(out, &self.os_name);
        put_str(out, &self.os_version);
        put_str(out, &self.client_version);
        put_bytes(out, &self.iv);
        put_bytes(out, &self.client_key);
        out.put_i32(self.min_heartbeat);
        out.put_i32(self.max_heartbeat);
        out.put_i64(self.timestamp);
    }

    /// Key and IV must be exactly 16 bytes; the real server answers other lengths with
    /// ERROR "Param invalid", so a peer needs to tell that case apart: it is
    /// [`DecodeError::WrongFieldSize`].
    fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            device_id: r.string()?,
            os_name: r.string()?,
            os_version: r.string()?,
            client_version: r.string()?,
            iv: r.array()?,
            client_key: r.array()?,
            min_heartbeat: r.i32()?,
            max_heartbeat: r.i32()?,
            timestamp: r.i64()?,
        })
    }
}

/// HandshakeOk (s->c), encrypted with AES(clientKey, iv).
#[derive(Clone, PartialEq, Eq)]
pub struct HandshakeOk {
    /// The server's half of the session key.
    pub server_key: [u8; KEY_LEN],
    /// The heartbeat the server chose, ms.
    pub heartbeat: i32,
    /// The resumption id for fast connect (opaque).
    pub session_id: String,
    /// When the resumable session expires, ms since the epoch.
    pub expire_time: i64,
}

impl fmt::Debug for HandshakeOk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeOk")
            .field("server_key", &"<redacted>")
            .field("heartbeat", &self.heartbeat)
            .field("session_id", &self.session_id)
            .field("expire_time", &self.expire_time)
            .finish()
    }
}

impl Message for HandshakeOk {
    const CMD: Cmd = Cmd::Handshake;

    fn encode_body(&self, out: &mut BytesMut) {
        put_bytes(out, &self.server_key);
        out.put_i32(self.heartbeat);
        put_str(out, &self.session_id);
        out.put_i64(self.expire_time);
    }

    fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            server_key: r.array()?,
            heartbeat: r.i32()?,
            session_id: r.string()?,
            expire_time: r.i64()?,
        })
    }
}

/// FastConnect (c->s), always sent raw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastConnect {
    /// The resumption id from an earlier HandshakeOk.
    pub session_id: String,
    /// The device's id; must match the stored session's.
    pub device_id: String,
    /// Smallest heartbeat the client accepts, ms.
    pub min_heartbeat: i32,
    /// Largest heartbeat the client accepts, ms.
    pub max_heartbeat: i32,
}

impl Message for FastConnect {
    const CMD: Cmd = Cmd::FastConnect;

    fn encode_body(&self, out: &mut BytesMut) {
        put_str(out, &self.session_id);
        put_str(out, &self.device_id);
        out.put_i32(self.min_heartbeat);
        out.put_i32(self.max_heartbeat);
    }

    fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            session_id: r.string()?,
            device_id: r.string()?,
            min_heartbeat: r.i32()?,
            max_heartbeat: r.i32()?,
        })
    }
}

/// FastConnectOk (s->c), always sent raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastConnectOk {
    /// The heartbeat the server chose, ms.
    pub heartbeat: i32,
}

impl Message for FastConnectOk {
    const CMD: Cmd = Cmd::FastConnect;

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_i32(self.heartbeat);
    }

    fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        Ok(Self {
            heartbeat: Reader::new(body).i32()?,
        })
    }
}
