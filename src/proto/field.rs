//! Field encoding inside bodies (PROTOCOL.md 3), big-endian.
//!
//! A string or byte array is an i16 length, then the bytes; length 0 stands for both null and
//! empty. A length of 32767 or more is written as `0x7FFF`, then an i32 holding
//! `length - 32767`. Readers are lenient where Java is (trailing bytes after the last field
//! are ignored, as the Java decoders ignore them) and strict where Java would throw (a field
//! past the end, a negative length).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::DecodeError;

/// The i16 value that announces the long form.
pub const LONG_FIELD_MARK: i16 = 0x7FFF;

/// Appends a length-prefixed byte array (an empty slice is written as length 0, like null).
///
/// # Panics
///
/// If `bytes` is longer than `i32::MAX + 32767`, far beyond any body limit.
pub fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    let len = bytes.len();
    out.reserve(len + 6);
    if len < LONG_FIELD_MARK as usize {
        // `len < 0x7FFF` was just checked, so it fits an i16.
        out.put_i16(len as i16);
    } else {
        out.put_i16(LONG_FIELD_MARK);
        let rest = i32::try_from(len - LONG_FIELD_MARK as usize).expect("field over 2 GiB");
        out.put_i32(rest);
    }
    out.extend_from_slice(bytes);
}

/// Appends a length-prefixed UTF-8 string.
pub fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// A cursor over a body. Byte-array fields come out as [`Bytes`] slices of the body: no copy.
#[derive(Debug)]
pub struct Reader {
    body: Bytes,
}

impl Reader {
    /// A reader over `body`.
    pub fn new(body: Bytes) -> Self {
        Self { body }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.body.len()
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.body.len() < n {
            Err(DecodeError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Reads one byte.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] past the end.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.body.get_u8())
    }

    /// Reads an i32.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] past the end.
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        self.need(4)?;
        Ok(self.body.get_i32())
    }

    /// Reads an i64.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] past the end.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        self.need(8)?;
        Ok(self.body.get_i64())
    }

    /// Reads a length-prefixed byte array (empty for null).
    ///
    /// # Errors
    ///
    /// [`DecodeError::BadFieldLength`] for a negative length, [`DecodeError::Truncated`] when
    /// the length runs past the end of the body.
    pub fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        self.need(2)?;
        let short = self.body.get_i16();
        let len = if short == LONG_FIELD_MARK {
            self.need(4)?;
            let rest = self.body.get_i32();
            let rest = usize::try_from(rest).map_err(|_| DecodeError::BadFieldLength)?;
            LONG_FIELD_MARK as usize + rest
        } else {
            usize::try_from(short).map_err(|_| DecodeError::BadFieldLength)?
        };
        self.need(len)?;
        Ok(self.body.split_to(len))
    }

    /// Reads a length-prefixed UTF-8 string (empty for null).
    ///
    /// # Errors
    ///
    /// As [`Reader::bytes`], and [`DecodeError::InvalidUtf8`].
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.bytes()?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// Reads a byte array that must be exactly `N` bytes (keys, IVs).
    ///
    /// # Errors
    ///
    /// As [`Reader::bytes`], and [`DecodeError::WrongFieldSize`].
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let raw = self.bytes()?;
        <[u8; N]>::try_from(&raw[..]).map_err(|_| DecodeError::WrongFieldSize {
            got: raw.len(),
            expected: N,
        })
    }

    /// Everything not read yet.
    pub fn rest(self) -> Bytes {
        self.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(len: usize) {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut out = BytesMut::new();
        put_bytes(&mut out, &data);
        let prefix = if len < 0x7FFF { 2 } else { 6 };
        assert_eq!(out.len(), prefix + len);
        let mut r = Reader::new(out.freeze());
        assert_eq!(&r.bytes().unwrap()[..], &data[..]);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn long_form_boundaries() {
        for len in [0, 1, 0x7FFE, 0x7FFF, 0x8000, 40_000] {
            round_trip(len);
        }
    }

    #[test]
    fn long_form_layout() {
        let mut out = BytesMut::new();
        put_bytes(&mut out, &[9; 0x7FFF + 2]);
        assert_eq!(&out[..6], &[0x7F, 0xFF, 0, 0, 0, 2]);
    }

    #[test]
    fn malformed_fields_are_errors() {
        let mut r = Reader::new(Bytes::from_static(&[0x00]));
        assert_eq!(r.bytes(), Err(DecodeError::Truncated));
        let mut r = Reader::new(Bytes::from_static(&[0x80, 0x00]));
        assert_eq!(r.bytes(), Err(DecodeError::BadFieldLength));
        let mut r = Reader::new(Bytes::from_static(&[0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]));
        assert_eq!(r.bytes(), Err(DecodeError::BadFieldLength));
        let mut r = Reader::new(Bytes::from_static(&[0x7F, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF]));
        assert_eq!(r.bytes(), Err(DecodeError::Truncated));
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x05, 1, 2]));
        assert_eq!(r.bytes(), Err(DecodeError::Truncated));
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x01, 0xFF]));
        assert_eq!(r.string(), Err(DecodeError::InvalidUtf8));
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x01, 0xFF]));
        assert_eq!(
            r.array::<16>(),
            Err(DecodeError::WrongFieldSize {
                got: 1,
                expected: 16
            })
        );
        let mut r = Reader::new(Bytes::from_static(&[1, 2, 3]));
        assert_eq!(r.i32(), Err(DecodeError::Truncated));
        assert_eq!(r.i64(), Err(DecodeError::Truncated));
    }
}
