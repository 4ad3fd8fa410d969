//! AES-128-CBC with PKCS#7 padding, one message at a time (Java "AES/CBC/PKCS5Padding").

use std::fmt;

use aes::Aes128;
use bytes::BytesMut;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{CryptoError, BLOCK_LEN, KEY_LEN};

type CbcEnc = cbc::Encryptor<Aes128>;
type CbcDec = cbc::Decryptor<Aes128>;

/// One session's AES-128-CBC key and iv (PROTOCOL.md 5: the same iv for every message).
///
/// Holds only the 32 raw bytes, not an expanded key schedule: a fleet keeps hundreds of
/// thousands of these, so each message pays for key expansion (cheap with AES-NI) instead.
/// `Debug` is redacted; the bytes are zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct AesCipher {
    key: [u8; KEY_LEN],
    iv: [u8; KEY_LEN],
}

impl AesCipher {
    /// A cipher for `key` and `iv`.
    pub fn new(key: [u8; KEY_LEN], iv: [u8; KEY_LEN]) -> Self {
        AesCipher { key, iv }
    }

    /// The AES key.
    pub fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// The CBC iv.
    pub fn iv(&self) -> &[u8; KEY_LEN] {
        &self.iv
    }

    /// Ciphertext length for `plain_len` bytes of plaintext: PKCS#7 always adds 1..=16 bytes.
    pub const fn encrypted_len(plain_len: usize) -> usize {
        (plain_len / BLOCK_LEN + 1) * BLOCK_LEN
    }

    /// Encrypts `plain` and appends the ciphertext ([`Self::encrypted_len`] bytes) to `out`.
    pub fn encrypt_to(&self, plain: &[u8], out: &mut BytesMut) {
        let start = out.len();
        out.resize(start + Self::encrypted_len(plain.len()), 0);
        encrypt_b2b(&self.key, &self.iv, plain, &mut out[start..]);
    }

    /// Decrypts `ct` and appends the plaintext to `out`. On error `out` is left as it was.
    ///
    /// # Errors
    /// [`CryptoError::BadLength`] if `ct` is empty or not a multiple of 16 bytes,
    /// [`CryptoError::BadPadding`] if the padding is invalid.
    pub fn decrypt_to(&self, ct: &[u8], out: &mut BytesMut) -> Result<(), CryptoError> {
        check_ct_len(ct.len())?;
        let start = out.len();
        out.resize(start + ct.len(), 0);
        match CbcDec::new((&self.key).into(), (&self.iv).into())
            .decrypt_padded_b2b_mut::<Pkcs7>(ct, &mut out[start..])
        {
            Ok(plain) => {
                let n = plain.len();
                out.truncate(start + n);
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(CryptoError::BadPadding)
            }
        }
    }

    /// Decrypts `buf` in place and returns the plaintext length (the padding is left at
    /// the tail for the caller to truncate).
    ///
    /// # Errors
    /// As [`Self::decrypt_to`]; on error `buf` holds garbage.
    pub fn decrypt_in_place(&self, buf: &mut [u8]) -> Result<usize, CryptoError> {
        check_ct_len(buf.len())?;
        decrypt_in_place(&self.key, &self.iv, buf)
    }

    /// Encrypts `plain` into a new vector.
    pub fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0; Self::encrypted_len(plain.len())];
        encrypt_b2b(&self.key, &self.iv, plain, &mut out);
        out
    }

    /// Decrypts `ct` into a new vector.
    ///
    /// # Errors
    /// As [`Self::decrypt_to`].
    pub fn decrypt(&self, ct: &[u8]) -> Result<Vec<u8>, CryptoError> {
        check_ct_len(ct.len())?;
        let mut buf = ct.to_vec();
        let n = decrypt_in_place(&self.key, &self.iv, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

impl fmt::Debug for AesCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesCipher { .. }")
    }
}

impl Zeroize for AesCipher {
    fn zeroize(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl Drop for AesCipher {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for AesCipher {}

/// A ciphertext must be a non-empty whole number of blocks (PKCS#7 never yields zero bytes).
pub(super) fn check_ct_len(len: usize) -> Result<(), CryptoError> {
    if len == 0 || len % BLOCK_LEN != 0 {
        Err(CryptoError::BadLength)
    } else {
        Ok(())
    }
}

fn encrypt_b2b(key: &[u8; KEY_LEN], iv: &[u8; KEY_LEN], plain: &[u8], out: &mut [u8]) {
    // `out` is exactly encrypted_len(plain.len()) bytes, so padding always fits.
    let res = CbcEnc::new(key.into(), iv.into()).encrypt_padded_b2b_mut::<Pkcs7>(plain, out);
    debug_assert!(res.is_ok());
}

/// Pads and encrypts in place: `buf` holds `plain_len` plaintext bytes followed by room for
/// the padding (`buf.len() == encrypted_len(plain_len)`).
pub(super) fn encrypt_in_place(
    key: &[u8; KEY_LEN],
    iv: &[u8; KEY_LEN],
    buf: &mut [u8],
    plain_len: usize,
) {
    debug_assert_eq!(buf.len(), AesCipher::encrypted_len(plain_len));
    let res = CbcEnc::new(key.into(), iv.into()).encrypt_padded_mut::<Pkcs7>(buf, plain_len);
    debug_assert!(res.is_ok());
}

/// Decrypts `buf` in place and returns the plaintext length. `buf` must already have passed
/// [`check_ct_len`].
pub(super) fn decrypt_in_place(
    key: &[u8; KEY_LEN],
    iv: &[u8; KEY_LEN],
    buf: &mut [u8],
) -> Result<usize, CryptoError> {
    CbcDec::new(key.into(), iv.into())
        .decrypt_padded_mut::<Pkcs7>(buf)
        .map(|p| p.len())
        .map_err(|_| CryptoError::BadPadding)
}

/// Writes PKCS#7 padding after `plain_len` bytes of `buf` (which is `encrypted_len` long).
pub(super) fn pad_in_place(buf: &mut [u8], plain_len: usize) {
    let pad = buf.len() - plain_len;
    debug_assert!((1..=BLOCK_LEN).contains(&pad));
    buf[plain_len..].fill(pad as u8);
}

/// The plaintext length of a decrypted, still padded buffer, if the PKCS#7 padding is valid
/// (last byte p in 1..=16, and the last p bytes all equal p, as Java's unpad checks).
pub(super) fn unpadded_len(buf: &[u8]) -> Option<usize> {
    let p = *buf.last()? as usize;
    if p == 0 || p > BLOCK_LEN || p > buf.len() {
        return None;
    }
    let n = buf.len() - p;
    buf[n..].iter().all(|&b| b as usize == p).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> AesCipher {
        AesCipher::new([7; 16], [9; 16])
    }

    #[test]
    fn lengths() {
        assert_eq!(AesCipher::encrypted_len(0), 16);
        assert_eq!(AesCipher::encrypted_len(15), 16);
        assert_eq!(AesCipher::encrypted_len(16), 32);
        assert_eq!(AesCipher::encrypted_len(17), 32);
    }

    #[test]
    fn round_trip_and_append() {
        let c = cipher();
        for n in [0, 1, 15, 16, 17, 100, 1024] {
            let plain: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let ct = c.encrypt(&plain);
            assert_eq!(ct.len(), AesCipher::encrypted_len(n));
            let mut out = BytesMut::from(&b"head"[..]);
            c.encrypt_to(&plain, &mut out);
            assert_eq!(&out[4..], &ct[..]);
            assert_eq!(c.decrypt(&ct).unwrap(), plain);
            let mut out = BytesMut::from(&b"xy"[..]);
            c.decrypt_to(&ct, &mut out).unwrap();
            assert_eq!(&out[..2], b"xy");
            assert_eq!(&out[2..], &plain[..]);
            let mut buf = ct.clone();
            let n = c.decrypt_in_place(&mut buf).unwrap();
            assert_eq!(&buf[..n], &plain[..]);
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let c = cipher();
        let mut out = BytesMut::from(&b"keep"[..]);
        assert_eq!(c.decrypt_to(&[], &mut out), Err(CryptoError::BadLength));
        assert_eq!(
            c.decrypt_to(&[0; 15], &mut out),
            Err(CryptoError::BadLength)
        );
        assert_eq!(c.decrypt(&[0; 33]), Err(CryptoError::BadLength));
        // A wrong key almost always leaves bad padding; find a block that does.
        let ct = c.encrypt(b"hello");
        let other = AesCipher::new([8; 16], [9; 16]);
        assert_eq!(
            other.decrypt_to(&ct, &mut out),
            Err(CryptoError::BadPadding)
        );
        assert_eq!(&out[..], b"keep");
    }

    #[test]
    fn unpad_rules() {
        assert_eq!(unpadded_len(&[]), None);
        let mut b = [3u8; 16];
        assert_eq!(unpadded_len(&b), Some(13));
        b[13] = 2;
        assert_eq!(unpadded_len(&b), None);
        b[15] = 0;
        assert_eq!(unpadded_len(&b), None);
        b[15] = 17;
        assert_eq!(unpadded_len(&b), None);
        assert_eq!(unpadded_len(&[16; 16]), Some(0));
    }

    #[test]
    fn debug_is_redacted() {
        let s = format!("{:?}", AesCipher::new([0xab; 16], [0xcd; 16]));
        assert_eq!(s, "AesCipher { .. }");
    }
}
