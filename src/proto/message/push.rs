//! Push (cmd 15), Ack (cmd 23) and Kick (cmd 13).

use bytes::{Bytes, BytesMut};

use super::Message;
use crate::proto::field::{put_str, Reader};
use crate::proto::{Cmd, DecodeError};

/// Push: the whole body is the content, no field encoding. Decoding keeps the content as a
/// slice of the body: no copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// The pushed bytes.
    pub content: Bytes,
}

impl Message for Push {
    const CMD: Cmd = Cmd::Push;

    fn encode_body(&self, out: &mut BytesMut) {
        out.extend_from_slice(&self.content);
    }

    fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        Ok(Self { content: body })
    }
}

/// Ack (c->s): an empty body; the header's message id is the push's. Always raw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ack;

impl Message for Ack {
    const CMD: Cmd = Cmd::Ack;

    fn encode_body(&self, _out: &mut BytesMut) {}

    fn decode_body(_body: Bytes) -> Result<Self, DecodeError> {
        Ok(Self)
    }
}

/// Kick (s->c): another connection bound this user; the device gives this one up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kick {
    /// The device kicked.
    pub device_id: String,
    /// The user whose newer binding caused the kick.
    pub user_id: String,
}

impl Message for Kick {
    const CMD: Cmd = Cmd::Kick;

    fn encode_body(&self, out: &mut BytesMut) {
        put_str(out, &self.device_id);
        put_str(out, &self.user_id);
    }

    fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            device_id: r.string()?,
            user_id: r.string()?,
        })
    }
}
