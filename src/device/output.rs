//! What a device call produces, in caller-owned buffers: bytes to write, frames to seal with
//! AES, and effects. The device keeps no output queue of its own, so an idle device costs
//! nothing here; the shard reuses one `Output` for all its devices.

use bytes::{Bytes, BytesMut};

use crate::crypto::AesCipher;
use crate::proto::frame::{begin_frame, finish_frame};
use crate::proto::pipeline::Encoder;
use crate::proto::{Cmd, Flags, Message, MsgId};

use super::Effect;

/// A frame whose body waits for AES encryption. It belongs at offset `at` of the call's
/// `tx` bytes, so the order of frames on the wire is kept.
#[derive(Debug)]
pub struct Seal {
    /// Offset in `tx` where the frame goes.
    pub at: usize,
    /// Command.
    pub cmd: Cmd,
    /// Flags, CRYPTO included.
    pub flags: Flags,
    /// Header message id.
    pub msg_id: MsgId,
    /// The connection cipher.
    pub cipher: AesCipher,
    /// The body to encrypt (already deflated if over the threshold).
    pub plain: Bytes,
}

/// The outputs of device calls, reused across calls and devices.
#[derive(Debug)]
pub struct Output {
    /// Raw bytes to write, in order (sealed frames are spliced in at their offsets).
    pub tx: BytesMut,
    /// Frames to encrypt.
    pub seals: Vec<Seal>,
    /// Effects for the shell.
    pub effects: Vec<Effect>,
    encoder: Encoder,
}

impl Output {
    /// Empty outputs; bodies above `compress_threshold` are deflated before sealing.
    pub fn new(compress_threshold: usize) -> Self {
        Self {
            tx: BytesMut::new(),
            seals: Vec::new(),
            effects: Vec::new(),
            encoder: Encoder::new(compress_threshold),
        }
    }

    /// Whether the last calls produced nothing to write.
    pub fn nothing_to_send(&self) -> bool {
        self.tx.is_empty() && self.seals.is_empty()
    }

    pub(crate) fn raw<M: Message>(&mut self, msg: &M, id: MsgId, flags: Flags) {
        self.encoder.write_raw(&mut self.tx, msg, id, flags);
    }

    pub(crate) fn heartbeat(&mut self) {
        crate::proto::encode_heartbeat(&mut self.tx);
    }

    /// "send" with a cipher: the body is deflated now, encrypted later in the shard's batch.
    pub(crate) fn sealed<M: Message>(&mut self, msg: &M, id: MsgId, cipher: &AesCipher) {
        let (flags, plain) = self.encoder.plain_body(msg, Flags::NONE);
        if plain.is_empty() {
            // Java never encrypts an empty body.
            let start = begin_frame(&mut self.tx, M::CMD, flags, id);
            finish_frame(&mut self.tx, start);
            return;
        }
        let plain = Bytes::copy_from_slice(plain);
        self.seals.push(Seal {
            at: self.tx.len(),
            cmd: M::CMD,
            flags: flags.with(Flags::CRYPTO),
            msg_id: id,
            cipher: cipher.clone(),
            plain,
        });
    }

    /// Encrypts the pending seals one at a time and splices them into `tx`: the path for
    /// tests and for callers without a batch.
    pub fn seal_inline(&mut self) {
        if self.seals.is_empty() {
            return;
        }
        let seals = std::mem::take(&mut self.seals);
        let ciphertexts: Vec<Vec<u8>> = seals.iter().map(|s| s.cipher.encrypt(&s.plain)).collect();
        let raw = self.tx.split().freeze();
        assemble(&raw, &seals, |i| &ciphertexts[i], &mut self.tx);
    }
}

/// Writes `raw` with the sealed frames spliced in at their offsets; `ciphertext(i)` is the
/// encrypted body of `seals[i]`.
pub fn assemble<'c>(
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
