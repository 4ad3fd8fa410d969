//! What [`Device::poll_transmit`](super::Device::poll_transmit) appends to: raw bytes in
//! order, plus frames whose body waits for AES encryption ("seals") at their offsets, so the
//! shard can encrypt many sessions' frames in one `crypto::AesBatch` run.
//!
//! Caller-owned and reused for all devices of a shard. Seal plaintexts live in one arena
//! (`BytesMut` plus ranges), so nothing allocates once the buffers are warm.

use std::ops::Range;

use bytes::BytesMut;
use rand::{CryptoRng, RngCore};

use crate::crypto::{AesCipher, RsaEncryptor};
use crate::proto::frame::{begin_frame, finish_frame};
use crate::proto::pipeline::Encoder;
use crate::proto::{encode_frame, encode_heartbeat, Cmd, Flags, Message, MsgId};

/// A frame to encrypt, spliced in at offset `at` of the raw bytes.
#[derive(Debug)]
struct Seal {
    at: usize,
    cmd: Cmd,
    /// CRYPTO included.
    flags: Flags,
    msg_id: MsgId,
    cipher: AesCipher,
    /// The plaintext in `Transmit::arena`.
    plain: Range<usize>,
}

/// Bytes to write and frames to seal, appended by devices, drained by the shard.
#[derive(Debug)]
pub struct Transmit {
    raw: BytesMut,
    seals: Vec<Seal>,
    arena: BytesMut,
    /// Ciphertexts of [`Transmit::seal_inline_into`], ranges parallel to `seals`.
    sealed: BytesMut,
    sealed_at: Vec<Range<usize>>,
    encoder: Encoder,
}

impl Transmit {
    /// Empty buffers; bodies above `compress_threshold` are deflated before sealing.
    pub fn new(compress_threshold: usize) -> Self {
        Self {
            raw: BytesMut::new(),
            seals: Vec::new(),
            arena: BytesMut::new(),
            sealed: BytesMut::new(),
            sealed_at: Vec::new(),
            encoder: Encoder::new(compress_threshold),
        }
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty() && self.seals.is_empty()
    }

    /// How many frames wait for encryption.
    pub fn seal_count(&self) -> usize {
        self.seals.len()
    }

    /// The cipher and plaintext of seal `i`.
    ///
    /// # Panics
    /// If `i >= seal_count()`.
    pub fn seal(&self, i: usize) -> (&AesCipher, &[u8]) {
        let s = &self.seals[i];
        (&s.cipher, &self.arena[s.plain.clone()])
    }

    /// Writes everything into `out` (raw bytes with each sealed frame spliced in at its
    /// offset, `ciphertext(i)` being the encrypted body of seal i), then empties self,
    /// keeping capacity.
    pub fn finish_into<'c>(&mut self, ciphertext: impl Fn(usize) -> &'c [u8], out: &mut BytesMut) {
        splice(&self.raw, &self.seals, ciphertext, out);
        self.clear();
    }

    /// [`Transmit::finish_into`], encrypting one seal at a time (tests, fuzzing, callers
    /// without a batch).
    pub fn seal_inline_into(&mut self, out: &mut BytesMut) {
        self.sealed.clear();
        self.sealed_at.clear();
        for s in &self.seals {
            let start = self.sealed.len();
            s.cipher
                .encrypt_to(&self.arena[s.plain.clone()], &mut self.sealed);
            self.sealed_at.push(start..self.sealed.len());
        }
        let (sealed, at) = (&self.sealed, &self.sealed_at);
        splice(&self.raw, &self.seals, |i| &sealed[at[i].clone()], out);
        self.clear();
    }

    fn clear(&mut self) {
        self.raw.clear();
        self.seals.clear();
        self.arena.clear();
    }

    /// "sendRaw".
    pub(super) fn raw<M: Message>(&mut self, msg: &M, id: MsgId, flags: Flags) {
        self.encoder.write_raw(&mut self.raw, msg, id, flags);
    }

    pub(super) fn heartbeat(&mut self) {
        encode_heartbeat(&mut self.raw);
    }

    /// "send" with an AES cipher: deflated now, encrypted later (in the shard's batch).
    pub(super) fn sealed<M: Message>(&mut self, msg: &M, id: MsgId, cipher: &AesCipher) {
        self.sealed_with(msg, id, Flags::NONE, cipher);
    }

    /// [`Transmit::sealed`] with header flags (a device PUSH's ack flags).
    pub(super) fn sealed_with<M: Message>(
        &mut self,
        msg: &M,
        id: MsgId,
        flags: Flags,
        cipher: &AesCipher,
    ) {
        let (flags, plain) = self.encoder.plain_body(msg, flags);
        if plain.is_empty() {
            // Java never encrypts an empty body.
            let start = begin_frame(&mut self.raw, M::CMD, flags, id);
            finish_frame(&mut self.raw, start);
            return;
        }
        let start = self.arena.len();
        self.arena.extend_from_slice(plain);
        self.seals.push(Seal {
            at: self.raw.len(),
            cmd: M::CMD,
            flags: flags.with(Flags::CRYPTO),
            msg_id: id,
            cipher: cipher.clone(),
            plain: start..self.arena.len(),
        });
    }

    /// "send" with the RSA cipher (the handshake): deflate above the threshold, then RSA in
    /// modulus-sized chunks, CRYPTO set.
    pub(super) fn rsa_sealed<M: Message, R: RngCore + CryptoRng>(
        &mut self,
        msg: &M,
        id: MsgId,
        rsa: &RsaEncryptor,
        rng: &mut R,
    ) {
        let (flags, plain) = self.encoder.plain_body(msg, Flags::NONE);
        let sealed = rsa.encrypt(rng, plain);
        encode_frame(
            &mut self.raw,
            M::CMD,
            flags.with(Flags::CRYPTO),
            id,
            &sealed,
        );
    }
}

/// Writes `raw` with the sealed frames spliced in at their offsets.
fn splice<'c>(
    raw: &[u8],
    seals: &[Seal],
    ciphertext: impl Fn(usize) -> &'c [u8],
    out: &mut BytesMut,
) {
    let mut from = 0;
    for (i, seal) in seals.iter().enumerate() {
        out.extend_from_slice(&raw[from..seal.at]);
        from = seal.at;
        let start = begin_frame(out, seal.cmd, seal.flags, seal.msg_id);
        out.extend_from_slice(ciphertext(i));
        finish_frame(out, start);
    }
    out.extend_from_slice(&raw[from..]);
}
