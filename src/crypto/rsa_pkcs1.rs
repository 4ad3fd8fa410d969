//! The handshake's RSA: PKCS#1 v1.5 ("RSA/ECB/PKCS1Padding"), cut into chunks (PROTOCOL.md 5).
//!
//! Java `RSAUtils.doFinal` encrypts the plaintext in chunks of (modulus bytes - 11) and
//! concatenates the modulus-sized ciphertexts; decryption walks modulus-sized chunks. An empty
//! input gives an empty output both ways (its loop runs zero times).

use std::fmt;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rsa::pkcs1;
use rsa::pkcs8::der::Decode as _;
use rsa::pkcs8::{DecodePublicKey as _, EncodePublicKey as _, PrivateKeyInfo};
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, Pkcs1v15Encrypt, RsaPrivateKey, RsaPublicKey};

use super::montgomery::MontModulus;
use super::{CryptoError, KeyError};

/// PKCS#1 v1.5 encryption overhead: a chunk holds at most modulus bytes - 11.
const PKCS1_OVERHEAD: usize = 11;

/// MPUSH's default public key (`mp.security.public-key` in the server's `reference.conf`):
/// base64 X.509 SubjectPublicKeyInfo, 1024-bit (PROTOCOL.md 5).
pub const MPUSH_DEFAULT_PUBLIC_KEY: &str = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCghPCWCobG8nTD24juwSVataW7iViRxcTkey/B792VZEhuHjQvA3cAJgx2Lv8GnX8NIoShZtoCg3Cx6ecs+VEPD2fBcg2L4JK7xldGpOJ3ONEAyVsLOttXZtNXvyDZRijiErQALMTorcgi79M5uVX9/jMv2Ggb2XAeZhlLD28fHwIDAQAB";

/// MPUSH's default private key (`mp.security.private-key`): base64 PKCS#8 whose RSAPrivateKey
/// holds only n and d (public exponent and all CRT fields are 0). Public knowledge: anyone
/// can decrypt a handshake made with the default key pair.
pub const MPUSH_DEFAULT_PRIVATE_KEY: &str = "MIIBNgIBADANBgkqhkiG9w0BAQEFAASCASAwggEcAgEAAoGBAKCE8JYKhsbydMPbiO7BJVq1pbuJWJHFxOR7L8Hv3ZVkSG4eNC8DdwAmDHYu/wadfw0ihKFm2gKDcLHp5yz5UQ8PZ8FyDYvgkrvGV0ak4nc40QDJWws621dm01e/INlGKOIStAAsxOityCLv0zm5Vf3+My/YaBvZcB5mGUsPbx8fAgEAAoGAAy0+WanRqwRHXUzt89OsupPXuNNqBlCEqgTqGAt4Nimq6Ur9u2R1KXKXUotxjp71Ubw6JbuUWvJg+5Rmd9RjT0HOUEQF3rvzEepKtaraPhV5ejEIrB+nJWNfGye4yzLdfEXJBGUQzrG+wNe13izfRNXI4dN/6Q5npzqaqv0E1CkCAQACAQACAQACAQACAQA=";

/// The public exponent assumed when a PKCS#8 key stores 0 there, as MPUSH's default does. The
/// default public key's exponent is 65537 (and nearly every RSA key's is).
const DEFAULT_PUBLIC_EXPONENT: u32 = 65537;

/// Client side: encrypts the Handshake body with the server's public key.
///
/// The public-key operation runs on [`MontModulus`] (the modulus's Montgomery constants made
/// once per key, numbers on the stack); the `rsa` crate parses the key and is the fallback for
/// a modulus that form does not take (even, or over 4096 bits).
#[derive(Clone, PartialEq, Eq)]
pub struct RsaEncryptor {
    key: RsaPublicKey,
    mont: Option<MontModulus>,
}

impl RsaEncryptor {
    /// Reads a base64 X.509 SubjectPublicKeyInfo (Java `X509EncodedKeySpec`). ASCII whitespace
    /// in the text (line breaks from a config file) is ignored.
    ///
    /// # Errors
    /// [`CryptoError::BadKey`] if the text is not base64 or not an RSA public key.
    pub fn from_spki_base64(b64: &str) -> Result<Self, CryptoError> {
        let der = decode_base64(b64)?;
        let key = RsaPublicKey::from_public_key_der(&der).map_err(|_| KeyError::Der)?;
        Ok(RsaEncryptor::from_key(key))
    }

    fn from_key(key: RsaPublicKey) -> Self {
        let mont = MontModulus::new(key.n(), key.e()).filter(|m| m.len() == key.size());
        RsaEncryptor { key, mont }
    }

    /// The modulus and exponent (for tests of the Montgomery form).
    #[cfg(test)]
    pub(super) fn n_e(&self) -> (BigUint, BigUint) {
        (self.key.n().clone(), self.key.e().clone())
    }

    /// The MPUSH default public key ([`MPUSH_DEFAULT_PUBLIC_KEY`]), parsed once per process.
    pub fn mpush_default() -> Self {
        static DEFAULT: OnceLock<RsaEncryptor> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                // A constant that the unit tests parse: cannot fail at run time.
                RsaEncryptor::from_spki_base64(MPUSH_DEFAULT_PUBLIC_KEY)
                    .expect("MPUSH default public key parses")
            })
            .clone()
    }

    /// Modulus size in bytes (128 for the default 1024-bit key): the ciphertext chunk size.
    pub fn modulus_len(&self) -> usize {
        self.key.size()
    }

    /// Ciphertext length for `plain_len` bytes: one modulus-sized chunk per started
    /// (modulus bytes - 11) of plaintext, 0 for 0.
    pub fn encrypted_len(&self, plain_len: usize) -> usize {
        let k = self.modulus_len();
        plain_len.div_ceil(k - PKCS1_OVERHEAD) * k
    }

    /// Encrypts `plain` chunk by chunk with PKCS#1 v1.5; the random padding comes from `rng`.
    pub fn encrypt<R: rand::RngCore + rand::CryptoRng>(
        &self,
        rng: &mut R,
        plain: &[u8],
    ) -> Vec<u8> {
        let k = self.modulus_len();
        let mut out = Vec::with_capacity(self.encrypted_len(plain.len()));
        for chunk in plain.chunks(k - PKCS1_OVERHEAD) {
            let Some(mont) = &self.mont else {
                // PKCS#1 v1.5 encryption fails only for a message over k - 11 bytes, which
                // the chunking rules out.
                let ct = self
                    .key
                    .encrypt(rng, Pkcs1v15Encrypt, chunk)
                    .expect("chunk fits in one PKCS#1 v1.5 block");
                out.extend_from_slice(&ct);
                continue;
            };
            let mut em = zeroize::Zeroizing::new([0u8; MAX_MODULUS_BYTES]);
            pad_pkcs1_type2(rng, chunk, &mut em[..k]);
            let at = out.len();
            out.resize(at + k, 0);
            mont.pow_public(&em[..k], &mut out[at..]);
        }
        out
    }
}

/// The largest modulus [`MontModulus`] takes, in bytes.
const MAX_MODULUS_BYTES: usize = 512;

/// RFC 8017 7.2.1 (EME-PKCS1-v1_5): `00 02 PS 00 M`, PS at least 8 random non-zero bytes.
/// `em` is the modulus's length and `msg` at most that minus 11.
fn pad_pkcs1_type2<R: rand::RngCore + rand::CryptoRng>(rng: &mut R, msg: &[u8], em: &mut [u8]) {
    let ps_end = em.len() - msg.len() - 1;
    em[0] = 0;
    em[1] = 2;
    let ps = &mut em[2..ps_end];
    rng.fill_bytes(ps);
    for b in ps.iter_mut() {
        // A zero would end the padding early: draw again until it is not (1/256 each).
        while *b == 0 {
            let mut one = [0u8; 1];
            rng.fill_bytes(&mut one);
            *b = one[0];
        }
    }
    em[ps_end] = 0;
    em[ps_end + 1..].copy_from_slice(msg);
}

impl fmt::Debug for RsaEncryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A public key is not secret, but its size is all a log needs.
        write!(f, "RsaEncryptor {{ bits: {} }}", self.key.n().bits())
    }
}

/// Server side: decrypts Handshake bodies with the private key.
///
/// The key is held in CRT form (primes recovered if the PKCS#8 omitted them), so decryption
/// costs two half-size exponentiations. Decryption is not blinded: blinding needs an RNG,
/// which this module does not own, and this server is a test peer, not a production one.
/// `Debug` is redacted; the `rsa` crate zeroizes the private numbers on drop.
#[derive(Clone)]
pub struct RsaDecryptor {
    key: RsaPrivateKey,
}

impl RsaDecryptor {
    /// Reads a base64 PKCS#8 RSA private key (Java `PKCS8EncodedKeySpec`).
    ///
    /// Accepts MPUSH's default key, whose RSAPrivateKey has public exponent 0 and zero CRT
    /// fields: a zero exponent is taken as 65537, and missing primes are recovered from n, e
    /// and d (NIST SP 800-56B rev. 2, Appendix C.2), so decryption still uses CRT. Ordinary
    /// PKCS#8 keys are read as they are.
    ///
    /// # Errors
    /// [`CryptoError::BadKey`] if the text is not base64, not PKCS#8 RSA, or the numbers do
    /// not form a key (for example the real exponent of a zero-exponent key is not 65537).
    pub fn from_pkcs8_base64(b64: &str) -> Result<Self, CryptoError> {
        let der = zeroize::Zeroizing::new(decode_base64(b64)?);
        let info = PrivateKeyInfo::from_der(&der).map_err(|_| KeyError::Der)?;
        if info.algorithm.oid != pkcs1::ALGORITHM_OID {
            return Err(KeyError::Der.into());
        }
        // The `rsa` crate's own PKCS#8 reader insists on the primes, so read the PKCS#1
        // structure ourselves and let `from_components` recover what is missing.
        let k = pkcs1::RsaPrivateKey::from_der(info.private_key).map_err(|_| KeyError::Der)?;
        if k.version() != pkcs1::Version::TwoPrime {
            return Err(KeyError::Der.into());
        }
        let uint = |u: pkcs1::UintRef<'_>| BigUint::from_bytes_be(u.as_bytes());
        let n = uint(k.modulus);
        let mut e = uint(k.public_exponent);
        if e == BigUint::from(0u8) {
            e = BigUint::from(DEFAULT_PUBLIC_EXPONENT);
        }
        let d = uint(k.private_exponent);
        let (p, q) = (uint(k.prime1), uint(k.prime2));
        let zero = BigUint::from(0u8);
        let primes = if p == zero || q == zero {
            Vec::new()
        } else {
            vec![p, q]
        };
        let key =
            RsaPrivateKey::from_components(n, e, d, primes).map_err(|_| KeyError::Inconsistent)?;
        Ok(RsaDecryptor { key })
    }

    /// MPUSH's default private key ([`MPUSH_DEFAULT_PRIVATE_KEY`]). Recovering its primes takes
    /// milliseconds, so it is done once per process and cloned after that.
    pub fn mpush_default() -> Self {
        static DEFAULT: OnceLock<RsaDecryptor> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                // A constant that the unit tests parse: cannot fail at run time.
                RsaDecryptor::from_pkcs8_base64(MPUSH_DEFAULT_PRIVATE_KEY)
                    .expect("MPUSH default private key parses")
            })
            .clone()
    }

    /// Generates a fresh key pair with public exponent 65537.
    ///
    /// # Errors
    /// [`CryptoError::BadKey`] with [`KeyError::Generate`] for an unsupported size.
    pub fn generate<R: rand::RngCore + rand::CryptoRng>(
        rng: &mut R,
        bits: usize,
    ) -> Result<Self, CryptoError> {
        let key = RsaPrivateKey::new(rng, bits).map_err(|_| KeyError::Generate)?;
        Ok(RsaDecryptor { key })
    }

    /// The matching public key as base64 X.509 SubjectPublicKeyInfo, the text a client is
    /// configured with ([`RsaEncryptor::from_spki_base64`]).
    pub fn public_key_spki_base64(&self) -> String {
        // Encoding a valid public key to DER cannot fail.
        let der = self
            .key
            .to_public_key()
            .to_public_key_der()
            .expect("public key encodes");
        STANDARD.encode(der.as_bytes())
    }

    /// The matching encryptor.
    pub fn encryptor(&self) -> RsaEncryptor {
        RsaEncryptor::from_key(self.key.to_public_key())
    }

    /// Modulus size in bytes: the ciphertext chunk size.
    pub fn modulus_len(&self) -> usize {
        self.key.size()
    }

    /// Decrypts modulus-sized chunks and concatenates their plaintexts.
    ///
    /// # Errors
    /// [`CryptoError::BadLength`] if `ct` is not a whole number of chunks,
    /// [`CryptoError::Rsa`] if any chunk fails (bad padding, value not below the modulus).
    pub fn decrypt(&self, ct: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let k = self.modulus_len();
        if ct.len() % k != 0 {
            return Err(CryptoError::BadLength);
        }
        let mut out = Vec::with_capacity(ct.len() / k * (k - PKCS1_OVERHEAD));
        for chunk in ct.chunks(k) {
            let plain = self
                .key
                .decrypt(Pkcs1v15Encrypt, chunk)
                .map_err(|_| CryptoError::Rsa)?;
            out.extend_from_slice(&plain);
        }
        Ok(out)
    }
}

impl fmt::Debug for RsaDecryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaDecryptor {{ bits: {}, .. }}", self.key.n().bits())
    }
}

fn decode_base64(b64: &str) -> Result<Vec<u8>, KeyError> {
    let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(compact).map_err(|_| KeyError::Base64)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rsa::traits::PrivateKeyParts as _;

    use super::*;

    #[test]
    fn default_keys_parse_and_match() {
        let enc = RsaEncryptor::mpush_default();
        let dec = RsaDecryptor::mpush_default();
        assert_eq!(enc.modulus_len(), 128);
        assert_eq!(dec.encryptor(), enc);
        assert_eq!(dec.public_key_spki_base64(), MPUSH_DEFAULT_PUBLIC_KEY);
        // Primes were recovered, so the CRT values exist.
        assert!(dec.key.crt_coefficient().is_some());
        assert_eq!(dec.key.primes().len(), 2);
    }

    #[test]
    fn chunk_lengths() {
        let enc = RsaEncryptor::mpush_default();
        assert_eq!(enc.encrypted_len(0), 0);
        assert_eq!(enc.encrypted_len(1), 128);
        assert_eq!(enc.encrypted_len(117), 128);
        assert_eq!(enc.encrypted_len(118), 256);
        let mut rng = StdRng::seed_from_u64(1);
        assert!(enc.encrypt(&mut rng, &[]).is_empty());
        assert_eq!(RsaDecryptor::mpush_default().decrypt(&[]), Ok(Vec::new()));
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(
            RsaEncryptor::from_spki_base64("not base64!").unwrap_err(),
            CryptoError::BadKey(KeyError::Base64)
        );
        assert_eq!(
            RsaEncryptor::from_spki_base64("AAAA").unwrap_err(),
            CryptoError::BadKey(KeyError::Der)
        );
        // A private key is not a public key, and the other way round.
        assert!(RsaEncryptor::from_spki_base64(MPUSH_DEFAULT_PRIVATE_KEY).is_err());
        assert!(RsaDecryptor::from_pkcs8_base64(MPUSH_DEFAULT_PUBLIC_KEY).is_err());
    }

    #[test]
    fn default_pair_round_trip_two_chunks() {
        let mut rng = StdRng::seed_from_u64(2);
        let plain: Vec<u8> = (0..200u32).map(|i| (i * 31) as u8).collect();
        let enc = RsaEncryptor::mpush_default();
        let ct = enc.encrypt(&mut rng, &plain);
        assert_eq!(ct.len(), 256);
        assert_eq!(ct.len(), enc.encrypted_len(plain.len()));
        assert_eq!(RsaDecryptor::mpush_default().decrypt(&ct), Ok(plain));
    }

    #[test]
    fn generated_pair_round_trip() {
        let mut rng = StdRng::seed_from_u64(3);
        let dec = RsaDecryptor::generate(&mut rng, 1024).unwrap();
        let enc = RsaEncryptor::from_spki_base64(&dec.public_key_spki_base64()).unwrap();
        assert_eq!(enc, dec.encryptor());
        let plain = vec![0x5a; 300];
        let ct = enc.encrypt(&mut rng, &plain);
        assert_eq!(ct.len(), 3 * 128);
        assert_eq!(dec.decrypt(&ct), Ok(plain));
        // The default key cannot read it.
        assert!(RsaDecryptor::mpush_default().decrypt(&ct).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dec = RsaDecryptor::mpush_default();
        assert_eq!(dec.decrypt(&[1; 127]), Err(CryptoError::BadLength));
        assert_eq!(dec.decrypt(&[1; 129]), Err(CryptoError::BadLength));
        // Zero decrypts to zero: no 00 02 header.
        assert_eq!(dec.decrypt(&[0; 128]), Err(CryptoError::Rsa));
        // Not below the modulus.
        assert_eq!(dec.decrypt(&[0xff; 128]), Err(CryptoError::Rsa));
        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..20 {
            let mut ct = [0u8; 256];
            rand::RngCore::fill_bytes(&mut rng, &mut ct);
            assert!(dec.decrypt(&ct).is_err());
        }
        // One good chunk followed by a bad one fails as a whole.
        let mut ct = RsaEncryptor::mpush_default().encrypt(&mut rng, b"hello");
        ct.extend_from_slice(&[0; 128]);
        assert_eq!(dec.decrypt(&ct), Err(CryptoError::Rsa));
    }

    #[test]
    fn montgomery_path_is_taken_and_pads_as_pkcs1_says() {
        let enc = RsaEncryptor::mpush_default();
        assert!(
            enc.mont.is_some(),
            "the default key runs on the Montgomery form"
        );
        let dec = RsaDecryptor::mpush_default();
        let mut rng = StdRng::seed_from_u64(5);
        // Every length from empty to a full chunk, decrypted by the rsa crate's own code.
        for len in 0..=117usize {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let ct = enc.encrypt(&mut rng, &plain);
            assert_eq!(dec.decrypt(&ct), Ok(plain), "length {len}");
        }
        // The padding itself: 00 02, non-zero PS, 00, message.
        let mut em = [0u8; 128];
        pad_pkcs1_type2(&mut rng, b"abc", &mut em);
        assert_eq!(&em[..2], &[0, 2]);
        assert!(em[2..124].iter().all(|&b| b != 0));
        assert_eq!(&em[124..], &[0, b'a', b'b', b'c']);
        // A fallback encryptor (the crate's path) gives what the same key decrypts, too.
        let fallback = RsaEncryptor {
            mont: None,
            ..enc.clone()
        };
        let ct = fallback.encrypt(&mut rng, b"fallback");
        assert_eq!(dec.decrypt(&ct), Ok(b"fallback".to_vec()));
    }

    #[test]
    fn debug_is_redacted() {
        let s = format!("{:?}", RsaDecryptor::mpush_default());
        assert_eq!(s, "RsaDecryptor { bits: 1024, .. }");
    }
}
