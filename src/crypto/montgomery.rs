//! The RSA public-key operation (`m^e mod n`) in fixed-width Montgomery form, for the client's
//! handshake encryption.
//!
//! Why not the `rsa` crate's own: it converts the message to a heap `BigUint`, builds the
//! Montgomery context for the modulus again on every call, and multiplies with generic
//! arbitrary-width code; a profile of a 5,000-device ramp spent over a quarter of its samples
//! there (issue 11). Here the modulus's constants (`-n^-1 mod 2^64`, `R^2 mod n`) are computed
//! once per key, the numbers live in stack arrays of 64-bit limbs, and an exponentiation by
//! 65537 is 17 squarings and one multiplication of word-by-word (CIOS) Montgomery products.
//!
//! The final subtraction of each product is branch-free, so the time does not depend on the
//! message (the exponent is public; the message holds the client's key).

use rsa::BigUint;

/// Largest modulus handled: 4096 bits.
const MAX_LIMBS: usize = 64;

/// An odd modulus with its Montgomery constants.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct MontModulus {
    /// Little-endian 64-bit limbs; the top limb is not zero.
    n: Vec<u64>,
    /// `-n^-1 mod 2^64`.
    n0: u64,
    /// `R^2 mod n` with `R = 2^(64 * limbs)`, in limbs.
    r2: Vec<u64>,
    /// The public exponent, big-endian, without leading zeros.
    e: Vec<u8>,
    /// Modulus length in bytes.
    len: usize,
}

impl MontModulus {
    /// `None` for an even, zero or over-4096-bit modulus, or a zero exponent.
    pub(super) fn new(n: &BigUint, e: &BigUint) -> Option<Self> {
        let n_be = n.to_bytes_be();
        let e_be = e.to_bytes_be();
        let odd = n_be.last().is_some_and(|b| b & 1 == 1);
        if !odd || n_be.len() > MAX_LIMBS * 8 || e_be.iter().all(|&b| b == 0) {
            return None;
        }
        let limbs = to_limbs(&n_be, n_be.len().div_ceil(8));
        // Newton's iteration for n^-1 mod 2^64: each step doubles the correct low bits.
        let mut inv: u64 = 1;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(limbs[0].wrapping_mul(inv)));
        }
        let r2 = (BigUint::from(1u8) << (128 * limbs.len())) % n;
        let r2 = to_limbs(&r2.to_bytes_be(), limbs.len());
        Some(MontModulus {
            n: limbs,
            n0: inv.wrapping_neg(),
            r2,
            e: e_be,
            len: n_be.len(),
        })
    }

    /// Modulus length in bytes.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// `out = base^e mod n`, both big-endian; `out` is exactly [`Self::len`] bytes and `base`
    /// at most that long and below the modulus (PKCS#1 padding guarantees it).
    pub(super) fn pow_public(&self, base: &[u8], out: &mut [u8]) {
        let l = self.n.len();
        assert!(base.len() <= self.len && out.len() == self.len);
        let mut x = [0u64; MAX_LIMBS];
        from_be(base, &mut x[..l]);
        let mut xm = [0u64; MAX_LIMBS];
        self.mul(&x[..l], &self.r2, &mut xm[..l]);
        let mut acc = xm;
        let mut tmp = [0u64; MAX_LIMBS];
        let mut started = false;
        for &byte in &self.e {
            for bit in (0..8).rev() {
                if started {
                    self.mul(&acc[..l], &acc[..l], &mut tmp[..l]);
                    acc[..l].copy_from_slice(&tmp[..l]);
                }
                if byte >> bit & 1 == 1 {
                    if started {
                        self.mul(&acc[..l], &xm[..l], &mut tmp[..l]);
                        acc[..l].copy_from_slice(&tmp[..l]);
                    }
                    started = true;
                }
            }
        }
        // Out of Montgomery form: multiply by 1.
        let mut one = [0u64; MAX_LIMBS];
        one[0] = 1;
        self.mul(&acc[..l], &one[..l], &mut tmp[..l]);
        to_be(&tmp[..l], out);
    }

    /// `out = a * b * R^-1 mod n` for `a, b < n` (CIOS: multiply and reduce word by word).
    fn mul(&self, a: &[u64], b: &[u64], out: &mut [u64]) {
        let (n, l) = (&self.n[..], self.n.len());
        let mut t = [0u64; MAX_LIMBS + 2];
        for &bi in b {
            let mut carry = 0u64;
            for j in 0..l {
                let s = u128::from(t[j]) + u128::from(a[j]) * u128::from(bi) + u128::from(carry);
                t[j] = s as u64;
                carry = (s >> 64) as u64;
            }
            let s = u128::from(t[l]) + u128::from(carry);
            t[l] = s as u64;
            t[l + 1] = (s >> 64) as u64;
            // Add m * n so that the low limb becomes zero, and shift one limb down.
            let m = t[0].wrapping_mul(self.n0);
            let s = u128::from(t[0]) + u128::from(m) * u128::from(n[0]);
            let mut carry = (s >> 64) as u64;
            for j in 1..l {
                let s = u128::from(t[j]) + u128::from(m) * u128::from(n[j]) + u128::from(carry);
                t[j - 1] = s as u64;
                carry = (s >> 64) as u64;
            }
            let s = u128::from(t[l]) + u128::from(carry);
            t[l - 1] = s as u64;
            t[l] = t[l + 1] + (s >> 64) as u64;
            t[l + 1] = 0;
        }
        // t < 2n: subtract n once if t >= n, choosing by mask rather than by branch.
        let mut d = [0u64; MAX_LIMBS];
        let mut borrow = 0u64;
        for j in 0..l {
            let (x, b1) = t[j].overflowing_sub(n[j]);
            let (y, b2) = x.overflowing_sub(borrow);
            d[j] = y;
            borrow = u64::from(b1 | b2);
        }
        // t < n exactly when the subtraction borrowed past t's top (carry) limb.
        let keep_t = u64::from(t[l] < borrow).wrapping_neg();
        for j in 0..l {
            out[j] = (t[j] & keep_t) | (d[j] & !keep_t);
        }
    }
}

/// Big-endian bytes to `limbs` little-endian limbs (zero-extended).
fn to_limbs(be: &[u8], limbs: usize) -> Vec<u64> {
    let mut v = vec![0u64; limbs];
    from_be(be, &mut v);
    v
}

fn from_be(be: &[u8], limbs: &mut [u64]) {
    limbs.fill(0);
    for (i, &byte) in be.iter().rev().enumerate() {
        limbs[i / 8] |= u64::from(byte) << (8 * (i % 8));
    }
}

fn to_be(limbs: &[u64], out: &mut [u8]) {
    let len = out.len();
    for (i, o) in out.iter_mut().enumerate() {
        let k = len - 1 - i;
        *o = (limbs[k / 8] >> (8 * (k % 8))) as u8;
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng as _, RngCore as _, SeedableRng};

    use super::*;

    fn check(n: &BigUint, e: &BigUint, rng: &mut StdRng, rounds: usize) {
        let m = MontModulus::new(n, e).unwrap();
        let k = m.len();
        for round in 0..rounds {
            let mut base = vec![0u8; k];
            rng.fill_bytes(&mut base);
            let mut b = BigUint::from_bytes_be(&base) % n;
            // The edges: 0, 1, n - 1.
            match round {
                0 => b = BigUint::from(0u8),
                1 => b = BigUint::from(1u8),
                2 => b = n - 1u8,
                _ => {}
            }
            let mut out = vec![0u8; k];
            m.pow_public(&b.to_bytes_be(), &mut out);
            let want = b.modpow(e, n);
            assert_eq!(
                BigUint::from_bytes_be(&out),
                want,
                "round {round}, {k} bytes"
            );
        }
    }

    #[test]
    fn matches_bigint_modpow_for_the_default_key() {
        let key = super::super::RsaEncryptor::mpush_default();
        let (n, e) = key.n_e();
        check(&n, &e, &mut StdRng::seed_from_u64(1), 200);
    }

    #[test]
    fn matches_bigint_modpow_for_odd_moduli_of_every_width() {
        let mut rng = StdRng::seed_from_u64(2);
        for bytes in [1usize, 7, 8, 9, 24, 64, 100, 128, 129, 256, 512] {
            let mut nb = vec![0u8; bytes];
            rng.fill_bytes(&mut nb);
            nb[0] |= 0x80;
            nb[bytes - 1] |= 1;
            let n = BigUint::from_bytes_be(&nb);
            for e in [3u32, 17, 65537, rng.gen::<u32>() | 1] {
                check(&n, &BigUint::from(e), &mut rng, 8);
            }
        }
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let e = BigUint::from(65537u32);
        assert!(MontModulus::new(&BigUint::from(10u8), &e).is_none());
        assert!(MontModulus::new(&BigUint::from(0u8), &e).is_none());
        assert!(MontModulus::new(&BigUint::from(11u8), &BigUint::from(0u8)).is_none());
        let big = (BigUint::from(1u8) << 4096) + 1u8;
        assert!(MontModulus::new(&big, &e).is_none());
    }
}
