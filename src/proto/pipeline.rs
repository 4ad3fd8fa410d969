//! The flag-driven body pipeline (PROTOCOL.md 1), as the real server's `BaseMessage` runs it.
//!
//! Sending ("send"): encode the fields; if the body is longer than the compress threshold,
//! deflate it (zlib stream, `java.util.zip.Deflater` defaults) and set COMPRESS; if the
//! connection has a cipher, encrypt and set CRYPTO. An empty body is neither compressed nor
//! encrypted. "sendRaw" skips both.
//!
//! Receiving: decrypt if CRYPTO is set, then inflate if COMPRESS is set; always by the flags.
//! Inflation is bounded, so a decompression bomb is an error rather than an allocation.
//!
//! The batched-AES shell uses the two halves separately: [`Encoder::plain_body`] before its
//! batch encryption, [`finish_open`] after its batch decryption.

use std::io::{Read, Write};

use bytes::{Bytes, BytesMut};
use flate2::{read::ZlibDecoder, write::ZlibEncoder, Compression};

use super::frame::{begin_frame, finish_frame};
use super::{
    DecodeError, Flags, Frame, Message, MsgId, DEFAULT_COMPRESS_THRESHOLD, DEFAULT_MAX_BODY,
    DEFAULT_MAX_INFLATED,
};
use crate::crypto::AesCipher;

/// Size limits of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest body accepted off the wire (the real server's `max-packet-size`).
    pub max_body: usize,
    /// Bodies longer than this are deflated when sent.
    pub compress_threshold: usize,
    /// Largest body an inflated message may grow to.
    pub max_inflated: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
            compress_threshold: DEFAULT_COMPRESS_THRESHOLD,
            max_inflated: DEFAULT_MAX_INFLATED,
        }
    }
}

/// Encodes messages into frames, with a reusable scratch buffer for bodies that must be
/// transformed (deflated or encrypted) before they can be written.
#[derive(Debug)]
pub struct Encoder {
    compress_threshold: usize,
    scratch: BytesMut,
    deflated: Vec<u8>,
}

impl Encoder {
    /// An encoder that deflates bodies longer than `compress_threshold` bytes.
    pub fn new(compress_threshold: usize) -> Self {
        Self {
            compress_threshold,
            scratch: BytesMut::new(),
            deflated: Vec::new(),
        }
    }

    /// "sendRaw": the header, then the fields, straight into `out`.
    pub fn write_raw<M: Message>(&mut self, out: &mut BytesMut, msg: &M, id: MsgId, flags: Flags) {
        let start = begin_frame(out, M::CMD, flags, id);
        msg.encode_body(out);
        finish_frame(out, start);
    }

    /// "send": deflate above the threshold, then encrypt with `cipher` if there is one.
    pub fn write<M: Message>(
        &mut self,
        out: &mut BytesMut,
        msg: &M,
        id: MsgId,
        flags: Flags,
        cipher: Option<&AesCipher>,
    ) {
        let (flags, body) = self.plain_body(msg, flags);
        match cipher {
            Some(cipher) if !body.is_empty() => {
                let start = begin_frame(out, M::CMD, flags.with(Flags::CRYPTO), id);
                cipher.encrypt_to(body, out);
                finish_frame(out, start);
            }
            _ => {
                let start = begin_frame(out, M::CMD, flags, id);
                out.extend_from_slice(body);
                finish_frame(out, start);
            }
        }
    }

    /// The first half of "send": the body's fields, deflated when over the threshold, and
    /// `flags` with COMPRESS added if so. The caller encrypts (unless the body is empty) and
    /// writes the frame with [`super::encode_frame`].
    pub fn plain_body<M: Message>(&mut self, msg: &M, flags: Flags) -> (Flags, &[u8]) {
        self.scratch.clear();
        msg.encode_body(&mut self.scratch);
        if self.scratch.len() > self.compress_threshold {
            self.deflated.clear();
            deflate_into(&self.scratch, &mut self.deflated);
            if !self.deflated.is_empty() {
                return (flags.with(Flags::COMPRESS), &self.deflated);
            }
        }
        (flags, &self.scratch)
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new(DEFAULT_COMPRESS_THRESHOLD)
    }
}

/// Deflates `data` as a zlib stream at `java.util.zip.Deflater`'s default level (6).
pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    deflate_into(data, &mut out);
    out
}

fn deflate_into(data: &[u8], out: &mut Vec<u8>) {
    let mut enc = ZlibEncoder::new(out, Compression::new(6));
    // Writing into a Vec cannot fail.
    enc.write_all(data).expect("deflate into Vec");
    enc.finish().expect("deflate into Vec");
}

/// Inflates a zlib stream, refusing to produce more than `max` bytes.
///
/// # Errors
///
/// [`DecodeError::InflateTooLarge`] past `max`, [`DecodeError::Inflate`] for a corrupt stream.
pub fn inflate_bounded(data: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(max));
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    ZlibDecoder::new(data)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|_| DecodeError::Inflate)?;
    if out.len() > max {
        return Err(DecodeError::InflateTooLarge { max });
    }
    Ok(out)
}

/// Undoes the pipeline on a received frame's body: decrypt if CRYPTO, inflate if COMPRESS.
/// A plain body comes back as the same [`Bytes`] (no copy).
///
/// # Errors
///
/// [`DecodeError::NoCipher`] when CRYPTO is set and `cipher` is `None`, decryption and
/// inflation errors, and [`DecodeError::EmptyBody`] when a transformed body ends up empty.
pub fn open_body(
    frame: &Frame,
    cipher: Option<&AesCipher>,
    max_inflated: usize,
) -> Result<Bytes, DecodeError> {
    if frame.body.is_empty() || !frame.flags.contains(Flags::CRYPTO) {
        return finish_open(frame.flags, frame.body.clone(), max_inflated);
    }
    let cipher = cipher.ok_or(DecodeError::NoCipher)?;
    let mut plain = BytesMut::with_capacity(frame.body.len());
    cipher.decrypt_to(&frame.body, &mut plain)?;
    finish_decrypted(frame.flags, plain.freeze(), max_inflated)
}

/// Bytes reserved in an [`open_body_into`] arena at a time: many small bodies share one
/// allocation, which is reclaimed in place once every slice of it has been dropped.
pub const RX_ARENA_CHUNK: usize = 16 * 1024;

/// [`open_body`] for a body the caller owns: a uniquely owned CRYPTO body is decrypted in
/// place (`Bytes::try_into_mut`, then the padding truncated); a shared one (a slice of a
/// read buffer still in use) is decrypted into `arena` and split off it. Either way the
/// plaintext is a [`Bytes`] with no allocation once the arena is warm and the slices it
/// handed out earlier have been dropped.
///
/// # Errors
///
/// As [`open_body`].
pub fn open_body_into(
    flags: Flags,
    body: Bytes,
    cipher: Option<&AesCipher>,
    max_inflated: usize,
    arena: &mut BytesMut,
) -> Result<Bytes, DecodeError> {
    if body.is_empty() || !flags.contains(Flags::CRYPTO) {
        return finish_open(flags, body, max_inflated);
    }
    let cipher = cipher.ok_or(DecodeError::NoCipher)?;
    let plain = match body.try_into_mut() {
        Ok(mut own) => {
            let n = cipher.decrypt_in_place(&mut own)?;
            own.truncate(n);
            own.freeze()
        }
        Err(shared) => {
            arena.clear();
            if arena.capacity() < shared.len() {
                arena.reserve(shared.len().max(RX_ARENA_CHUNK));
            }
            cipher.decrypt_to(&shared, arena)?;
            arena.split().freeze()
        }
    };
    finish_decrypted(flags, plain, max_inflated)
}

/// [`finish_open`] for a body the caller decrypted (the batched path): a body that decrypts
/// to nothing is an error, as in Java.
///
/// # Errors
///
/// As [`open_body`].
pub fn finish_decrypted(
    flags: Flags,
    plain: Bytes,
    max_inflated: usize,
) -> Result<Bytes, DecodeError> {
    if plain.is_empty() {
        return Err(DecodeError::EmptyBody);
    }
    finish_open(flags, plain, max_inflated)
}

/// The second half of [`open_body`] for a body that was not encrypted: inflate if COMPRESS
/// is set.
///
/// # Errors
///
/// As [`open_body`].
pub fn finish_open(flags: Flags, body: Bytes, max_inflated: usize) -> Result<Bytes, DecodeError> {
    if body.is_empty() {
        // Java leaves an empty body alone; a transformed body that *became* empty is caught
        // below.
        return Ok(body);
    }
    let body = if flags.contains(Flags::COMPRESS) {
        Bytes::from(inflate_bounded(&body, max_inflated)?)
    } else {
        body
    };
    if body.is_empty() {
        return Err(DecodeError::EmptyBody);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message::{Bind, Push, UserBinding};
    use crate::proto::{FrameDecoder, Unit};

    fn cipher() -> AesCipher {
        AesCipher::new([7; 16], [9; 16])
    }

    fn decode_one(buf: &mut BytesMut) -> Frame {
        match FrameDecoder::new(1 << 20).decode(buf).unwrap() {
            Some(Unit::Frame(f)) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn small_body_is_encrypted_not_compressed() {
        let mut enc = Encoder::new(64);
        let mut out = BytesMut::new();
        let bind = Bind(UserBinding {
            user_id: "u".into(),
            ..Default::default()
        });
        enc.write(&mut out, &bind, MsgId(1), Flags::NONE, Some(&cipher()));
        let f = decode_one(&mut out);
        assert_eq!(f.flags, Flags::CRYPTO);
        let body = open_body(&f, Some(&cipher()), 1024).unwrap();
        assert_eq!(Bind::decode_body(body).unwrap(), bind);
    }

    #[test]
    fn large_body_is_compressed_then_encrypted() {
        let mut enc = Encoder::new(64);
        let mut out = BytesMut::new();
        let push = Push {
            content: Bytes::from(vec![b'x'; 5000]),
        };
        enc.write(&mut out, &push, MsgId(2), Flags::AUTO_ACK, Some(&cipher()));
        let f = decode_one(&mut out);
        assert_eq!(
            f.flags,
            Flags::CRYPTO.with(Flags::COMPRESS).with(Flags::AUTO_ACK)
        );
        assert!(f.body.len() < 200);
        assert_eq!(open_body(&f, Some(&cipher()), 5000).unwrap(), push.content);
        assert_eq!(
            open_body(&f, Some(&cipher()), 4999),
            Err(DecodeError::InflateTooLarge { max: 4999 })
        );
    }

    #[test]
    fn compress_threshold_is_strictly_greater() {
        let mut enc = Encoder::new(10);
        let (flags, _) = enc.plain_body(
            &Push {
                content: Bytes::from(vec![1; 10]),
            },
            Flags::NONE,
        );
        assert_eq!(flags, Flags::NONE);
        let (flags, _) = enc.plain_body(
            &Push {
                content: Bytes::from(vec![1; 11]),
            },
            Flags::NONE,
        );
        assert_eq!(flags, Flags::COMPRESS);
    }

    #[test]
    fn empty_body_is_sent_plain_even_with_a_cipher() {
        let mut enc = Encoder::default();
        let mut out = BytesMut::new();
        enc.write(
            &mut out,
            &Push {
                content: Bytes::new(),
            },
            MsgId(3),
            Flags::NONE,
            Some(&cipher()),
        );
        assert_eq!(&out[..], &[0, 0, 0, 0, 15, 0, 0, 0, 0, 0, 0, 3, 0]);
    }

    #[test]
    fn decompression_bomb_is_an_error() {
        let bomb = deflate(&vec![0u8; 50 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024);
        let f = Frame {
            cmd: 15,
            flags: Flags::COMPRESS,
            msg_id: MsgId(1),
            body: Bytes::from(bomb),
        };
        assert_eq!(
            open_body(&f, None, 1 << 20),
            Err(DecodeError::InflateTooLarge { max: 1 << 20 })
        );
    }

    #[test]
    fn garbled_bodies_are_errors() {
        let f = Frame {
            cmd: 15,
            flags: Flags::COMPRESS,
            msg_id: MsgId(1),
            body: Bytes::from_static(b"nope"),
        };
        assert_eq!(open_body(&f, None, 1024), Err(DecodeError::Inflate));
        let f = Frame {
            cmd: 15,
            flags: Flags::CRYPTO,
            msg_id: MsgId(1),
            body: Bytes::from_static(b"nope"),
        };
        assert_eq!(open_body(&f, None, 1024), Err(DecodeError::NoCipher));
        assert!(matches!(
            open_body(&f, Some(&cipher()), 1024),
            Err(DecodeError::Crypto(_))
        ));
        let f = Frame {
            cmd: 15,
            flags: Flags::CRYPTO,
            msg_id: MsgId(1),
            body: Bytes::from(vec![0u8; 32]),
        };
        assert!(matches!(
            open_body(&f, Some(&cipher()), 1024),
            Err(DecodeError::Crypto(_))
        ));
        // A body that decrypts to nothing, as Java rejects it.
        let mut empty = BytesMut::new();
        cipher().encrypt_to(b"", &mut empty);
        let f = Frame {
            cmd: 15,
            flags: Flags::CRYPTO,
            msg_id: MsgId(1),
            body: empty.freeze(),
        };
        assert_eq!(
            open_body(&f, Some(&cipher()), 1024),
            Err(DecodeError::EmptyBody)
        );
    }

    #[test]
    fn open_body_into_matches_open_body_shared_or_owned() {
        let mut arena = BytesMut::new();
        for n in [1usize, 16, 100, 5000] {
            let push = Push {
                content: Bytes::from(vec![b'y'; n]),
            };
            let mut out = BytesMut::new();
            Encoder::new(64).write(&mut out, &push, MsgId(2), Flags::NONE, Some(&cipher()));
            let f = decode_one(&mut out);
            let want = open_body(&f, Some(&cipher()), 1 << 20);
            // Shared with `f` (and `out`): decrypted into the arena.
            let got = open_body_into(
                f.flags,
                f.body.clone(),
                Some(&cipher()),
                1 << 20,
                &mut arena,
            );
            assert_eq!(got, want);
            assert!(arena.is_empty());
            // Uniquely owned: decrypted in place, same result.
            let body = Bytes::copy_from_slice(&f.body);
            let got = open_body_into(f.flags, body, Some(&cipher()), 1 << 20, &mut arena);
            assert_eq!(got, want);
        }
        let f = Frame {
            cmd: 15,
            flags: Flags::CRYPTO,
            msg_id: MsgId(1),
            body: Bytes::from_static(&[1; 17]),
        };
        assert!(matches!(
            open_body_into(f.flags, f.body.clone(), Some(&cipher()), 1024, &mut arena),
            Err(DecodeError::Crypto(_))
        ));
        assert_eq!(
            open_body_into(f.flags, f.body.clone(), None, 1024, &mut arena),
            Err(DecodeError::NoCipher)
        );
    }

    #[test]
    fn plain_body_is_not_copied() {
        let body = Bytes::from_static(b"payload");
        let f = Frame {
            cmd: 15,
            flags: Flags::AUTO_ACK,
            msg_id: MsgId(1),
            body: body.clone(),
        };
        let opened = open_body(&f, None, 1024).unwrap();
        assert_eq!(opened.as_ptr(), body.as_ptr());
    }
}
