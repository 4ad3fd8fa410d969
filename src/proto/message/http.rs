//! HTTP_PROXY (cmd 12): a request from the client, a response from the server.

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::proto::field::{put_bytes, put_str, Reader};
use crate::proto::{Cmd, DecodeError};

/// The request method byte (0 GET, 1 POST, 2 PUT, 3 DELETE); other values survive decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpMethod(pub u8);

#[allow(missing_docs)]
impl HttpMethod {
    pub const GET: HttpMethod = HttpMethod(0);
    pub const POST: HttpMethod = HttpMethod(1);
    pub const PUT: HttpMethod = HttpMethod(2);
    pub const DELETE: HttpMethod = HttpMethod(3);
}

/// HttpRequest (c->s), sent with the session cipher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// Method.
    pub method: HttpMethod,
    /// Absolute URI.
    pub uri: String,
    /// `name:value\n` lines.
    pub headers: String,
    /// Request body.
    pub body: Bytes,
}

impl Message for HttpRequest {
    const CMD: Cmd = Cmd::HttpProxy;

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.method.0);
        put_str(out, &self.uri);
        put_str(out, &self.headers);
        put_bytes(out, &self.body);
    }

    fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            method: HttpMethod(r.u8()?),
            uri: r.string()?,
            headers: r.string()?,
            body: r.bytes()?,
        })
    }
}

/// HttpResponse (s->c): session cipher, or raw for the server's own 400/502.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status_code: i32,
    /// Reason phrase.
    pub reason_phrase: String,
    /// `name:value\n` lines.
    pub headers: String,
    /// Response body.
    pub body: Bytes,
}

impl Message for HttpResponse {
    const CMD: Cmd = Cmd::HttpProxy;

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_i32(self.status_code);
        put_str(out, &self.reason_phrase);
        put_str(out, &self.headers);
        put_bytes(out, &self.body);
    }

    fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            status_code: r.i32()?,
            reason_phrase: r.string()?,
            headers: r.string()?,
            body: r.bytes()?,
        })
    }
}
