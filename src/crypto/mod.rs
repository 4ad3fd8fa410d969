//! MPUSH cryptography: chunked RSA PKCS#1 v1.5, AES-128-CBC, the session key mix, batched
//! AES across many sessions, and the `cipherStr` text form of a key and iv (PROTOCOL.md 5, 7).
//!
//! Owns: every cipher operation the protocol needs, byte-compatible with the Java server
//! (`shared/vectors/crypto.json` pins it). Must not touch: framing, I/O, clocks, logging, or an
//! RNG of its own (callers pass one in, so scenarios replay exactly).
//!
//! - [`AesCipher`]: one session's key and iv (32 bytes, nothing expanded), one message at a time.
//! - [`AesBatch`]: many messages of many sessions in one call, blocks interleaved so the AES
//!   units stay busy; byte-identical to [`AesCipher`].
//! - [`RsaEncryptor`] / [`RsaDecryptor`]: the handshake's chunked RSA, client and server side.
//!
//! Key-holding types have a redacted `Debug` and zeroize their key bytes on drop.
//!
//! `unsafe` is denied here and allowed only in the private `aes_ni` module (x86-64 AES-NI
//! intrinsics behind runtime feature detection, with a portable fallback).
#![deny(unsafe_code)]

mod aes_cbc;
#[cfg(target_arch = "x86_64")]
mod aes_ni;
mod batch;
mod montgomery;
mod rsa_pkcs1;

use std::fmt::Write as _;

use md5::{Digest, Md5};

pub use aes_cbc::AesCipher;
pub use batch::{AesBatch, JobId};
pub use rsa_pkcs1::{
    RsaDecryptor, RsaEncryptor, MPUSH_DEFAULT_PRIVATE_KEY, MPUSH_DEFAULT_PUBLIC_KEY,
};

/// Length in bytes of an AES key, an iv, a client key and a server key (`aes-key-length`).
pub const KEY_LEN: usize = 16;

/// AES block size in bytes.
pub const BLOCK_LEN: usize = 16;

/// Everything that can fail in this module. Plain data, no strings: it sits on the hot path
/// (a peer's bad padding is an ordinary event, not an exceptional one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// AES: the last block's PKCS#7 padding is invalid (wrong key, or a corrupt body).
    #[error("bad PKCS#7 padding")]
    BadPadding,
    /// AES: ciphertext empty or not a multiple of 16 bytes. RSA: ciphertext not a multiple of
    /// the modulus size.
    #[error("ciphertext length is empty or not a whole number of blocks")]
    BadLength,
    /// An RSA key could not be read or made.
    #[error("bad RSA key: {0}")]
    BadKey(KeyError),
    /// RSA decryption failed (bad PKCS#1 v1.5 padding, or a chunk not below the modulus).
    #[error("RSA decryption failed")]
    Rsa,
    /// A `cipherStr` was not exactly 16 signed bytes, a comma, and 16 signed bytes.
    #[error("malformed cipherStr")]
    BadCipherStr,
    /// [`AesBatch::output`] was given an id that is unknown, cleared, or not run yet.
    #[error("batch job unknown, cleared, or not run yet")]
    NoSuchJob,
}

/// Why an RSA key was rejected (see [`CryptoError::BadKey`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not standard base64.
    #[error("not valid base64")]
    Base64,
    /// The bytes are not an X.509 SubjectPublicKeyInfo / PKCS#8 RSA key.
    #[error("not a DER RSA key of the expected kind")]
    Der,
    /// The DER parsed, but its numbers do not make a consistent RSA key.
    #[error("inconsistent RSA key components")]
    Inconsistent,
    /// Key generation failed (unsupported size).
    #[error("RSA key generation failed")]
    Generate,
}

impl From<KeyError> for CryptoError {
    fn from(e: KeyError) -> Self {
        CryptoError::BadKey(e)
    }
}

/// The session key: `client[i] XOR server[i]` (Java `CipherBox.mixKey`, PROTOCOL.md 5).
pub fn mix_keys(client: &[u8; KEY_LEN], server: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    std::array::from_fn(|i| client[i] ^ server[i])
}

/// Java `AesCipher.toString()`: key and iv as signed decimal bytes joined by `|`, the two
/// joined by `,` (for example `-12|7|0|...,3|-9|...`). This is the `cipherStr` of the Redis
/// values (PROTOCOL.md 7).
pub fn format_cipher_str(key: &[u8; KEY_LEN], iv: &[u8; KEY_LEN]) -> String {
    // Worst case "-128|" per byte: 5 * 32 chars.
    let mut s = String::with_capacity(5 * 2 * KEY_LEN);
    push_signed_bytes(&mut s, key);
    s.push(',');
    push_signed_bytes(&mut s, iv);
    s
}

/// Appends `bytes` as Java's `byte` (signed) decimals joined by `|`.
pub(crate) fn push_signed_bytes(s: &mut String, bytes: &[u8; KEY_LEN]) {
    for (i, b) in bytes.iter().enumerate() {
        if i != 0 {
            s.push('|');
        }
        // Writing to a String cannot fail.
        let _ = write!(s, "{}", *b as i8);
    }
}

/// Parses a `cipherStr` written by [`format_cipher_str`] or by Java.
///
/// Strict: exactly one comma, exactly 16 values on each side, each a decimal in `-128..=127`
/// (an optional leading `+` is accepted, as Java's `Byte.parseByte` does). Java's
/// `String.split` would silently drop trailing empty pieces (`"1|...|16|"`); we reject them,
/// since no Java writer produces them.
///
/// # Errors
/// [`CryptoError::BadCipherStr`] for anything else.
pub fn parse_cipher_str(s: &str) -> Result<([u8; KEY_LEN], [u8; KEY_LEN]), CryptoError> {
    let (key, iv) = s.split_once(',').ok_or(CryptoError::BadCipherStr)?;
    Ok((parse_signed_bytes(key)?, parse_signed_bytes(iv)?))
}

/// Parses 16 `|`-separated signed decimal bytes (Java `AesCipher.toArray`).
pub(crate) fn parse_signed_bytes(s: &str) -> Result<[u8; KEY_LEN], CryptoError> {
    let mut out = [0u8; KEY_LEN];
    let mut parts = s.split('|');
    for b in out.iter_mut() {
        let part = parts.next().ok_or(CryptoError::BadCipherStr)?;
        *b = part.parse::<i8>().map_err(|_| CryptoError::BadCipherStr)? as u8;
    }
    if parts.next().is_some() {
        return Err(CryptoError::BadCipherStr);
    }
    Ok(out)
}

/// Lowercase hex MD5 of the UTF-8 bytes of `input` (Java `MD5Utils.encrypt`, which the server
/// uses for the reusable-session id, PROTOCOL.md 7).
pub fn session_id_md5_hex(input: &str) -> String {
    let digest = Md5::digest(input.as_bytes());
    let mut s = String::with_capacity(32);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 16] = [
        0xf4, 0x07, 0x00, 0x7f, 0x80, 0x21, 0xff, 0x5a, 0x05, 0xb3, 0x40, 0x01, 0xdf, 0x12, 0x64,
        0xfb,
    ];
    const IV: [u8; 16] = [
        0x03, 0xf7, 0x2c, 0x9c, 0x00, 0x0f, 0x10, 0x80, 0x7f, 0x08, 0xff, 0x02, 0x4d, 0xbe, 0x09,
        0x1e,
    ];
    const TEXT: &str = "-12|7|0|127|-128|33|-1|90|5|-77|64|1|-33|18|100|-5,\
                        3|-9|44|-100|0|15|16|-128|127|8|-1|2|77|-66|9|30";

    #[test]
    fn cipher_str_both_ways() {
        assert_eq!(format_cipher_str(&KEY, &IV), TEXT);
        assert_eq!(parse_cipher_str(TEXT), Ok((KEY, IV)));
    }

    #[test]
    fn cipher_str_rejects_malformed() {
        let bad = [
            "",
            ",",
            "1|2",
            &TEXT.replace(',', "|"),
            &format!("{TEXT},1"),
            &format!("{TEXT}|"),
            &TEXT.replacen("127", "128", 1),
            &TEXT.replacen("-128", "-129", 1),
            &TEXT.replacen("-12", " -12", 1),
            &TEXT.replacen("|7|", "||", 1),
            &TEXT.replacen("-12", "x", 1),
        ];
        for s in bad {
            assert_eq!(parse_cipher_str(s), Err(CryptoError::BadCipherStr), "{s:?}");
        }
        // Java's Byte.parseByte takes a leading '+'.
        assert_eq!(
            parse_cipher_str(&TEXT.replacen("|7|", "|+7|", 1)),
            Ok((KEY, IV))
        );
    }

    #[test]
    fn mix_is_xor() {
        let c = [0xffu8; 16];
        assert_eq!(mix_keys(&c, &KEY), KEY.map(|b| !b));
        assert_eq!(mix_keys(&KEY, &KEY), [0; 16]);
    }

    #[test]
    fn md5_hex() {
        assert_eq!(session_id_md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            session_id_md5_hex("device-11764115200123"),
            "de88f11a3e01704940395c1d003c8bcb"
        );
    }
}
