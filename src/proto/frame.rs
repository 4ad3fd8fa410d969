//! Framing: the 13-byte header, the `0xDF` heartbeat byte and the incremental decoder.
//!
//! Header layout (PROTOCOL.md 1), big-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | body length (i32) |
//! | 4 | 1 | cmd |
//! | 5 | 2 | cc (checksum; the real server writes 0 and never checks it) |
//! | 7 | 1 | flags |
//! | 8 | 4 | message id (i32) |
//! | 12 | 1 | lrc (the real server writes 0 and never checks it) |
//!
//! The decoder follows mini-redis: check the buffer, then split the frame off it. A short
//! buffer is `Ok(None)`, never an error. The body of a decoded frame is a [`Bytes`] slice of
//! the read buffer: no copy, and no allocation per frame once the buffer is shared.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{Cmd, DecodeError, Flags, MsgId, DEFAULT_MAX_BODY, HEADER_LEN, HEARTBEAT_BYTE};

/// One decoded frame. `cmd` stays a raw byte so that a peer can answer an unknown command
/// (the real server replies ERROR 101) instead of failing to decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The command byte; see [`Frame::command`].
    pub cmd: u8,
    /// The header flags.
    pub flags: Flags,
    /// The header message id.
    pub msg_id: MsgId,
    /// The body as it came off the wire (still encrypted / deflated if the flags say so).
    pub body: Bytes,
}

impl Frame {
    /// The command, if the byte names one.
    pub fn command(&self) -> Option<Cmd> {
        Cmd::from_u8(self.cmd)
    }
}

/// One unit of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A single `0xDF` heartbeat byte.
    Heartbeat,
    /// A whole frame.
    Frame(Frame),
}

/// Incremental decoder of the MPUSH stream. Holds only its limit: the bytes live in the
/// caller's buffer, so the shell decides how it grows and shrinks.
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    max_body: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BODY)
    }
}

impl FrameDecoder {
    /// A decoder that rejects bodies longer than `max_body` bytes.
    pub const fn new(max_body: usize) -> Self {
        Self { max_body }
    }

    /// The configured body limit.
    pub const fn max_body(&self) -> usize {
        self.max_body
    }

    /// Takes the next unit off the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole unit; the bytes stay buffered.
    ///
    /// # Errors
    ///
    /// [`DecodeError::NegativeLength`] or [`DecodeError::BodyTooLong`] as soon as the four
    /// length bytes have arrived: an over-limit body is rejected before it is buffered. The
    /// stream cannot be resynchronised after that; the connection must be closed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Unit>, DecodeError> {
        match self.check(buf)? {
            Needed::Heartbeat => {
                buf.advance(1);
                Ok(Some(Unit::Heartbeat))
            }
            Needed::More(_) => Ok(None),
            Needed::Frame(total) => {
                let mut raw = buf.split_to(total).freeze();
                let mut header = &raw[..HEADER_LEN];
                header.advance(4);
                let cmd = header.get_u8();
                header.advance(2); // cc: never checked by the real server
                let flags = Flags(header.get_u8());
                let msg_id = MsgId(header.get_i32());
                raw.advance(HEADER_LEN);
                Ok(Some(Unit::Frame(Frame {
                    cmd,
                    flags,
                    msg_id,
                    body: raw,
                })))
            }
        }
    }

    /// How many bytes the next unit needs in all (0 when `buf` already holds it), so the shell
    /// can grow its read buffer only while a big frame is arriving.
    ///
    /// # Errors
    ///
    /// As [`FrameDecoder::decode`].
    pub fn bytes_needed(&self, buf: &[u8]) -> Result<usize, DecodeError> {
        Ok(match self.check(buf)? {
            Needed::Heartbeat | Needed::Frame(_) => 0,
            Needed::More(total) => total,
        })
    }

    fn check(&self, buf: &[u8]) -> Result<Needed, DecodeError> {
        match buf.first() {
            None => return Ok(Needed::More(1)),
            Some(&HEARTBEAT_BYTE) => return Ok(Needed::Heartbeat),
            Some(_) => {}
        }
        if buf.len() < 4 {
            return Ok(Needed::More(HEADER_LEN));
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let len = usize::try_from(len).map_err(|_| DecodeError::NegativeLength(len))?;
        if len > self.max_body {
            return Err(DecodeError::BodyTooLong {
                len,
                max: self.max_body,
            });
        }
        let total = HEADER_LEN + len;
        if buf.len() < total {
            Ok(Needed::More(total))
        } else {
            Ok(Needed::Frame(total))
        }
    }
}

enum Needed {
    Heartbeat,
    /// The unit is this many bytes long in all and has not fully arrived.
    More(usize),
    Frame(usize),
}

/// Appends a heartbeat byte.
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.put_u8(HEARTBEAT_BYTE);
}

/// Appends a whole frame: header then body, into one buffer. `cc` and `lrc` are written as 0,
/// as the real server's encoder does (the golden vectors pin it).
///
/// # Panics
///
/// If `body` is longer than `i32::MAX` bytes, which no caller can build under the limits.
pub fn encode_frame(out: &mut BytesMut, cmd: Cmd, flags: Flags, msg_id: MsgId, body: &[u8]) {
    let start = begin_frame(out, cmd, flags, msg_id);
    out.extend_from_slice(body);
    finish_frame(out, start);
}

/// Where a frame started in the output buffer; pass it to [`finish_frame`].
#[derive(Clone, Copy, Debug)]
#[must_use = "a begun frame must be finished"]
pub struct FrameStart(usize);

/// Appends a header whose length is patched by [`finish_frame`]: lets a body be encoded
/// straight into the output buffer, without an intermediate body buffer.
pub fn begin_frame(out: &mut BytesMut, cmd: Cmd, flags: Flags, msg_id: MsgId) -> FrameStart {
    let start = out.len();
    out.reserve(HEADER_LEN);
    out.put_i32(0);
    out.put_u8(cmd as u8);
    out.put_i16(0);
    out.put_u8(flags.0);
    out.put_i32(msg_id.0);
    out.put_u8(0);
    FrameStart(start)
}

/// Patches the length of a frame begun with [`begin_frame`] to cover everything appended
/// since.
///
/// # Panics
///
/// If the body is longer than `i32::MAX` bytes.
pub fn finish_frame(out: &mut BytesMut, start: FrameStart) {
    let body_len = out.len() - start.0 - HEADER_LEN;
    // Bodies are bounded by configuration far below 2 GiB; a larger one is a caller bug.
    let len = i32::try_from(body_len).expect("frame body over i32::MAX");
    out[start.0..start.0 + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(cmd: Cmd, flags: Flags, id: i32, body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        encode_frame(&mut out, cmd, flags, MsgId(id), body);
        out
    }

    #[test]
    fn header_layout_matches_spec() {
        let out = frame_bytes(Cmd::Bind, Flags::CRYPTO, 3, b"abc");
        assert_eq!(
            &out[..],
            &[0, 0, 0, 3, 5, 0, 0, 1, 0, 0, 0, 3, 0, b'a', b'b', b'c']
        );
    }

    #[test]
    fn any_split_of_the_stream_decodes_the_same() {
        let mut stream = BytesMut::new();
        stream.put_u8(HEARTBEAT_BYTE);
        stream.put_u8(HEARTBEAT_BYTE);
        stream.extend_from_slice(&frame_bytes(Cmd::Push, Flags::AUTO_ACK, 7, b"hello"));
        encode_heartbeat(&mut stream);
        stream.extend_from_slice(&frame_bytes(Cmd::Ack, Flags::NONE, 7, b""));
        let dec = FrameDecoder::default();
        let whole = decode_all(&dec, &[&stream[..]]);
        assert_eq!(whole.len(), 5);
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(decode_all(&dec, &[a, b]), whole, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode_all(&dec, &bytes), whole);
    }

    fn decode_all(dec: &FrameDecoder, chunks: &[&[u8]]) -> Vec<Unit> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(unit) = dec.decode(&mut buf).unwrap() {
                out.push(unit);
            }
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn over_limit_length_is_rejected_before_the_body_arrives() {
        let dec = FrameDecoder::new(100);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 101][..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(DecodeError::BodyTooLong { len: 101, max: 100 })
        );
        let mut buf = BytesMut::from(&[0x7F, 0xFF, 0xFF, 0xFF, 1][..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(DecodeError::BodyTooLong { .. })
        ));
        let mut buf = BytesMut::from(&[0x80, 0, 0, 0][..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(DecodeError::NegativeLength(i32::MIN))
        );
    }

    #[test]
    fn body_at_the_limit_is_accepted() {
        let dec = FrameDecoder::new(100);
        let mut buf = frame_bytes(Cmd::Push, Flags::NONE, 1, &[7; 100]);
        let Some(Unit::Frame(f)) = dec.decode(&mut buf).unwrap() else {
            panic!("no frame")
        };
        assert_eq!(f.body.len(), 100);
    }

    #[test]
    fn bytes_needed_reports_whole_frame_size() {
        let dec = FrameDecoder::default();
        let full = frame_bytes(Cmd::Push, Flags::NONE, 1, &[1; 50]);
        assert_eq!(dec.bytes_needed(&[]).unwrap(), 1);
        assert_eq!(dec.bytes_needed(&full[..2]).unwrap(), HEADER_LEN);
        assert_eq!(dec.bytes_needed(&full[..20]).unwrap(), HEADER_LEN + 50);
        assert_eq!(dec.bytes_needed(&full).unwrap(), 0);
        assert_eq!(dec.bytes_needed(&[HEARTBEAT_BYTE]).unwrap(), 0);
    }

    #[test]
    fn decoded_body_shares_the_read_buffer() {
        let dec = FrameDecoder::default();
        let mut buf = frame_bytes(Cmd::Push, Flags::NONE, 1, b"zero-copy");
        buf.extend_from_slice(&frame_bytes(Cmd::Push, Flags::NONE, 2, b"second"));
        let base = buf.as_ptr() as usize;
        let Some(Unit::Frame(f)) = dec.decode(&mut buf).unwrap() else {
            panic!("no frame")
        };
        assert_eq!(f.body.as_ptr() as usize, base + HEADER_LEN);
        let Some(Unit::Frame(g)) = dec.decode(&mut buf).unwrap() else {
            panic!("no frame")
        };
        assert_eq!(g.body.as_ptr() as usize, base + 2 * HEADER_LEN + 9);
    }

    #[test]
    fn unknown_command_byte_still_decodes() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 99, 0, 0, 0, 0, 0, 0, 1, 0][..]);
        let Some(Unit::Frame(f)) = FrameDecoder::default().decode(&mut buf).unwrap() else {
            panic!("no frame")
        };
        assert_eq!(f.cmd, 99);
        assert_eq!(f.command(), None);
    }
}
