//! Bind (cmd 5) and Unbind (cmd 6): the same three fields under two commands.

use bytes::{Bytes, BytesMut};

use super::Message;
use crate::proto::field::{put_str, Reader};
use crate::proto::{Cmd, DecodeError};

/// The fields of Bind and Unbind (empty strings travel as length 0, like Java's null).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserBinding {
    /// The user; the server rejects an empty one.
    pub user_id: String,
    /// Free-form data.
    pub data: String,
    /// Tags, comma-separated by convention.
    pub tags: String,
}

impl UserBinding {
    fn encode(&self, out: &mut BytesMut) {
        put_str(out, &self.user_id);
        put_str(out, &self.data);
        put_str(out, &self.tags);
    }

    fn decode(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            user_id: r.string()?,
            data: r.string()?,
            tags: r.string()?,
        })
    }
}

/// Bind (c->s), sent with the session cipher.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bind(pub UserBinding);

/// Unbind (c->s), sent with the session cipher.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unbind(pub UserBinding);

impl Message for Bind {
    const CMD: Cmd = Cmd::Bind;

    fn encode_body(&self, out: &mut BytesMut) {
        self.0.encode(out);
    }

    fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        UserBinding::decode(body).map(Self)
    }
}

impl Message for Unbind {
    const CMD: Cmd = Cmd::Unbind;

    fn encode_body(&self, out: &mut BytesMut) {
        self.0.encode(out);
    }

    fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        UserBinding::decode(body).map(Self)
    }
}
