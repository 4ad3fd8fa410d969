//! AES-NI kernels for [`AesBatch`](super::AesBatch): AES-128 key expansion and multi-lane CBC.
//!
//! The only `unsafe` in the crypto module. It has two sources, both contained here:
//! - calling `#[target_feature(enable = "aes")]` functions, sound only on a CPU with AES-NI:
//!   every such call goes through [`AesNi`], a token that [`AesNi::detect`] alone creates,
//!   after `is_x86_feature_detected!` said yes;
//! - unaligned 16-byte loads and stores, always through [`load`] and [`store`], which take
//!   `&[u8; 16]` / `&mut [u8; 16]` so the pointer is valid for exactly 16 bytes.
//!
//! Buffer offsets come from the caller and are checked by ordinary slice indexing: a wrong
//! offset panics, it cannot read or write out of bounds.
#![allow(unsafe_code)]
// The lane loops index several parallel per-lane arrays by round and by lane; index form
// keeps the round-major, lane-minor interleaving explicit.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::{
    __m128i, _mm_aesdec_si128, _mm_aesdeclast_si128, _mm_aesenc_si128, _mm_aesenclast_si128,
    _mm_aesimc_si128, _mm_aeskeygenassist_si128, _mm_loadu_si128, _mm_setzero_si128,
    _mm_shuffle_epi32, _mm_slli_si128, _mm_storeu_si128, _mm_xor_si128,
};

use super::batch::{RoundKeys, Segment};
use super::{BLOCK_LEN, KEY_LEN};

/// Blocks in flight. aesenc has a latency of about 4 cycles and a throughput of 1 or 2 per
/// cycle on current x86 cores, so 8 independent blocks keep the unit busy; the 8 states plus
/// a round key operand still fit in the 16 xmm registers.
const LANES: usize = 8;

/// Proof that the CPU has AES-NI (and SSE2, baseline on x86-64). Only [`AesNi::detect`]
/// makes one, so holding one makes the `target_feature` calls below sound.
#[derive(Clone, Copy, Debug)]
pub(super) struct AesNi(());

impl AesNi {
    /// `Some` if this CPU has AES-NI.
    pub(super) fn detect() -> Option<Self> {
        (std::is_x86_feature_detected!("aes") && std::is_x86_feature_detected!("sse2"))
            .then_some(AesNi(()))
    }

    /// The AES-128 encryption key schedule.
    pub(super) fn expand_encrypt_key(self, key: &[u8; KEY_LEN], out: &mut RoundKeys) {
        // SAFETY: `self` exists only if detect() found AES-NI and SSE2 on this CPU.
        unsafe { expand_encrypt(key, out) }
    }

    /// The decryption schedule for the Equivalent Inverse Cipher (FIPS-197 5.3.5), the form
    /// aesdec expects: encryption round keys reversed, the middle nine through InvMixColumns.
    pub(super) fn expand_decrypt_key(self, key: &[u8; KEY_LEN], out: &mut RoundKeys) {
        // SAFETY: `self` exists only if detect() found AES-NI and SSE2 on this CPU.
        unsafe { expand_decrypt(key, out) }
    }

    /// CBC-encrypts every segment in place (already padded, whole blocks, encryption keys).
    pub(super) fn cbc_encrypt(self, buf: &mut [u8], segs: &[Segment]) {
        // SAFETY: `self` exists only if detect() found AES-NI and SSE2 on this CPU.
        unsafe { cbc_encrypt_lanes(buf, segs) }
    }

    /// CBC-decrypts every segment in place (whole blocks, decryption keys); padding is left
    /// for the caller to check.
    pub(super) fn cbc_decrypt(self, buf: &mut [u8], segs: &[Segment]) {
        // SAFETY: `self` exists only if detect() found AES-NI and SSE2 on this CPU.
        unsafe { cbc_decrypt_lanes(buf, segs) }
    }
}

/// Unaligned load of 16 bytes. SSE2, baseline on x86-64.
#[inline(always)]
fn load(b: &[u8; BLOCK_LEN]) -> __m128i {
    // SAFETY: `b` is a valid, readable 16-byte region; loadu has no alignment requirement;
    // SSE2 is part of the x86-64 baseline.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// Unaligned store of 16 bytes. SSE2, baseline on x86-64.
#[inline(always)]
fn store(b: &mut [u8; BLOCK_LEN], v: __m128i) {
    // SAFETY: `b` is a valid, writable, exclusively borrowed 16-byte region; storeu has no
    // alignment requirement; SSE2 is part of the x86-64 baseline.
    unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), v) }
}

/// Load of a round key or iv kept as a `u128` (16 valid, aligned bytes).
#[inline(always)]
fn load_u(k: &u128) -> __m128i {
    // SAFETY: `k` is a valid, readable 16-byte region; SSE2 is part of the x86-64 baseline.
    unsafe { _mm_loadu_si128((k as *const u128).cast()) }
}

/// Store of a round key into a `u128` slot.
#[inline(always)]
fn store_u(k: &mut u128, v: __m128i) {
    // SAFETY: `k` is a valid, writable, exclusively borrowed 16-byte region; SSE2 is part of
    // the x86-64 baseline.
    unsafe { _mm_storeu_si128((k as *mut u128).cast(), v) }
}

/// The 16-byte block at `off` (bounds-checked).
#[inline(always)]
fn block(buf: &[u8], off: usize) -> &[u8; BLOCK_LEN] {
    buf[off..off + BLOCK_LEN].try_into().expect("16-byte slice")
}

#[inline(always)]
fn block_mut(buf: &mut [u8], off: usize) -> &mut [u8; BLOCK_LEN] {
    (&mut buf[off..off + BLOCK_LEN])
        .try_into()
        .expect("16-byte slice")
}

/// One step of the AES-128 key schedule: `gen` is aeskeygenassist of the previous key.
///
/// # Safety
/// The CPU must support AES-NI.
#[inline]
#[target_feature(enable = "aes,sse2")]
unsafe fn schedule_step(key: __m128i, gen: __m128i) -> __m128i {
    let gen = _mm_shuffle_epi32::<0xff>(gen);
    let mut k = key;
    k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
    k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
    k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
    _mm_xor_si128(k, gen)
}

/// # Safety
/// The CPU must support AES-NI.
#[target_feature(enable = "aes,sse2")]
unsafe fn expand_encrypt(key: &[u8; KEY_LEN], out: &mut RoundKeys) {
    let mut k = load(key);
    store_u(&mut out[0], k);
    // aeskeygenassist takes the round constant as an immediate, hence the unrolled steps.
    macro_rules! step {
        ($i:expr, $rcon:literal) => {
            k = schedule_step(k, _mm_aeskeygenassist_si128::<$rcon>(k));
            store_u(&mut out[$i], k);
        };
    }
    step!(1, 0x01);
    step!(2, 0x02);
    step!(3, 0x04);
    step!(4, 0x08);
    step!(5, 0x10);
    step!(6, 0x20);
    step!(7, 0x40);
    step!(8, 0x80);
    step!(9, 0x1b);
    step!(10, 0x36);
}

/// # Safety
/// The CPU must support AES-NI.
#[target_feature(enable = "aes,sse2")]
unsafe fn expand_decrypt(key: &[u8; KEY_LEN], dk: &mut RoundKeys) {
    // Expand in place, then reverse and run the middle nine through InvMixColumns.
    expand_encrypt(key, dk);
    dk.reverse();
    for k in &mut dk[1..10] {
        store_u(k, _mm_aesimc_si128(load_u(k)));
    }
}

/// CBC encryption, one lane per message: each step encrypts block `i` of up to 8 messages,
/// their 10 rounds interleaved. A lane whose message ends takes the next message at once.
/// Idle lanes (only at the tail of the batch) encrypt a zero block with a zero key and their
/// result is dropped: cheaper than branching inside the round loop.
///
/// # Safety
/// The CPU must support AES-NI.
#[target_feature(enable = "aes,sse2")]
unsafe fn cbc_encrypt_lanes(buf: &mut [u8], segs: &[Segment]) {
    let idle_rk: RoundKeys = [0; 11];
    let mut rk: [&RoundKeys; LANES] = [&idle_rk; LANES];
    let mut pos = [0usize; LANES];
    let mut end = [0usize; LANES];
    let mut active = [false; LANES];
    let mut chain = [_mm_setzero_si128(); LANES];
    let mut next = segs.iter().filter(|s| s.len > 0);
    loop {
        let mut any = false;
        for l in 0..LANES {
            if !active[l] {
                if let Some(s) = next.next() {
                    rk[l] = &s.rk;
                    pos[l] = s.off;
                    end[l] = s.off + s.len;
                    chain[l] = load_u(&s.iv);
                    active[l] = true;
                }
            }
            any |= active[l];
        }
        if !any {
            return;
        }
        let mut x = [_mm_setzero_si128(); LANES];
        for l in 0..LANES {
            if active[l] {
                x[l] = _mm_xor_si128(load(block(buf, pos[l])), chain[l]);
            }
            x[l] = _mm_xor_si128(x[l], load_u(&rk[l][0]));
        }
        for r in 1..10 {
            for l in 0..LANES {
                x[l] = _mm_aesenc_si128(x[l], load_u(&rk[l][r]));
            }
        }
        for l in 0..LANES {
            x[l] = _mm_aesenclast_si128(x[l], load_u(&rk[l][10]));
            if active[l] {
                store(block_mut(buf, pos[l]), x[l]);
                chain[l] = x[l];
                pos[l] += BLOCK_LEN;
                if pos[l] == end[l] {
                    active[l] = false;
                    rk[l] = &idle_rk;
                }
            }
        }
    }
}

/// CBC decryption: every block is independent once its ciphertext and the previous one are
/// known. Whole groups of 8 blocks inside one message go through [`decrypt8_same_key`], with
/// the round keys held in registers; the leftover blocks of every message (fewer than 8 each,
/// all of them for short messages) are gathered 8 at a time across message boundaries. In
/// place is safe: a block is loaded before its group is stored, and the previous ciphertext
/// block is carried in a register, never re-read after it may have been overwritten.
///
/// # Safety
/// The CPU must support AES-NI.
#[target_feature(enable = "aes,sse2")]
unsafe fn cbc_decrypt_lanes(buf: &mut [u8], segs: &[Segment]) {
    let idle_rk: RoundKeys = [0; 11];
    let mut rk: [&RoundKeys; LANES] = [&idle_rk; LANES];
    let mut at = [0usize; LANES];
    let mut ct = [_mm_setzero_si128(); LANES];
    let mut prev = [_mm_setzero_si128(); LANES];
    let mut n = 0;
    for s in segs {
        let whole = s.len / (LANES * BLOCK_LEN) * (LANES * BLOCK_LEN);
        let mut chain = load_u(&s.iv);
        if whole > 0 {
            chain = decrypt8_same_key(&mut buf[s.off..s.off + whole], &s.rk, chain);
        }
        for off in (s.off + whole..s.off + s.len).step_by(BLOCK_LEN) {
            let c = load(block(buf, off));
            rk[n] = &s.rk;
            at[n] = off;
            ct[n] = c;
            prev[n] = chain;
            chain = c;
            n += 1;
            if n == LANES {
                decrypt_group(buf, &rk, &at, &ct, &prev, LANES);
                n = 0;
            }
        }
    }
    if n > 0 {
        // Lanes n.. hold stale inputs; decrypt_group computes but does not store them.
        decrypt_group(buf, &rk, &at, &ct, &prev, n);
    }
}

/// CBC-decrypts `buf` (a multiple of 8 blocks) in place with one key, 8 blocks per step, and
/// returns the last ciphertext block (the next block's chaining value).
///
/// # Safety
/// The CPU must support AES-NI.
#[inline]
#[target_feature(enable = "aes,sse2")]
unsafe fn decrypt8_same_key(buf: &mut [u8], rk: &RoundKeys, mut chain: __m128i) -> __m128i {
    let k: [__m128i; 11] = core::array::from_fn(|r| load_u(&rk[r]));
    for group in buf.chunks_exact_mut(LANES * BLOCK_LEN) {
        let c: [__m128i; LANES] = core::array::from_fn(|l| load(block(group, l * BLOCK_LEN)));
        let mut x = [_mm_setzero_si128(); LANES];
        for l in 0..LANES {
            x[l] = _mm_xor_si128(c[l], k[0]);
        }
        for kr in &k[1..10] {
            for l in 0..LANES {
                x[l] = _mm_aesdec_si128(x[l], *kr);
            }
        }
        for l in 0..LANES {
            let p = if l == 0 { chain } else { c[l - 1] };
            x[l] = _mm_xor_si128(_mm_aesdeclast_si128(x[l], k[10]), p);
            store(block_mut(group, l * BLOCK_LEN), x[l]);
        }
        chain = c[LANES - 1];
    }
    chain
}

/// Decrypts 8 gathered blocks and stores the first `n`.
///
/// # Safety
/// The CPU must support AES-NI.
#[inline]
#[target_feature(enable = "aes,sse2")]
unsafe fn decrypt_group(
    buf: &mut [u8],
    rk: &[&RoundKeys; LANES],
    at: &[usize; LANES],
    ct: &[__m128i; LANES],
    prev: &[__m128i; LANES],
    n: usize,
) {
    let mut x = [_mm_setzero_si128(); LANES];
    for l in 0..LANES {
        x[l] = _mm_xor_si128(ct[l], load_u(&rk[l][0]));
    }
    for r in 1..10 {
        for l in 0..LANES {
            x[l] = _mm_aesdec_si128(x[l], load_u(&rk[l][r]));
        }
    }
    for l in 0..LANES {
        x[l] = _mm_xor_si128(_mm_aesdeclast_si128(x[l], load_u(&rk[l][10])), prev[l]);
    }
    for l in 0..n {
        store(block_mut(buf, at[l]), x[l]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> [u8; 16] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    #[test]
    fn fips197_key_expansion() {
        let Some(ni) = AesNi::detect() else {
            eprintln!("no AES-NI on this CPU: kernel tests skipped");
            return;
        };
        // FIPS-197 Appendix A.1.
        let (mut ek, mut dk) = ([0; 11], [0; 11]);
        ni.expand_encrypt_key(&unhex("2b7e151628aed2a6abf7158809cf4f3c"), &mut ek);
        assert_eq!(
            ek[1].to_ne_bytes(),
            unhex("a0fafe1788542cb123a339392a6c7605")
        );
        assert_eq!(
            ek[10].to_ne_bytes(),
            unhex("d014f9a8c9ee2589e13f0cc8b6630ca6")
        );
        ni.expand_decrypt_key(&unhex("2b7e151628aed2a6abf7158809cf4f3c"), &mut dk);
        assert_eq!(dk[0], ek[10]);
        assert_eq!(dk[10], ek[0]);
    }

    #[test]
    fn fips197_single_block() {
        let Some(ni) = AesNi::detect() else { return };
        // FIPS-197 Appendix C.1, as CBC with a zero iv over one block.
        let key = unhex("000102030405060708090a0b0c0d0e0f");
        let plain = unhex("00112233445566778899aabbccddeeff");
        let want = unhex("69c4e0d86a7b0430d8cdb78070b4c55a");
        let mut buf = plain.to_vec();
        let mut seg = Segment {
            off: 0,
            len: 16,
            iv: 0,
            rk: [0; 11],
        };
        ni.expand_encrypt_key(&key, &mut seg.rk);
        ni.cbc_encrypt(&mut buf, std::slice::from_ref(&seg));
        assert_eq!(buf, want);
        ni.expand_decrypt_key(&key, &mut seg.rk);
        ni.cbc_decrypt(&mut buf, std::slice::from_ref(&seg));
        assert_eq!(buf, plain);
    }
}
