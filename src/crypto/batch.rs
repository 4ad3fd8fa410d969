//! Batched AES-128-CBC: many independent messages, each with its own key and iv, in one call.
//!
//! CBC encryption is serial inside a message (each block needs the previous ciphertext) but
//! independent across messages. One AES round has a latency of several cycles and the core
//! can start one or two per cycle, so a single CBC chain leaves the AES unit mostly idle.
//! With AES-NI, [`AesBatch`] keeps 8 blocks from 8 different messages in flight, refilling a
//! lane as soon as its message ends; decryption, parallel even within a message, runs 8
//! blocks at a time across message boundaries. Without AES-NI it falls back to the portable
//! `aes`/`cbc` path, one message at a time. Both give the same bytes as [`AesCipher`].

use std::fmt;

use zeroize::Zeroize;

use super::aes_cbc::{self, AesCipher};
use super::{CryptoError, KEY_LEN};

/// Names one job of an [`AesBatch`] until the batch is cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JobId {
    index: u32,
    generation: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Encrypt,
    Decrypt,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Done,
    Failed(CryptoError),
}

struct Job {
    dir: Dir,
    key: [u8; KEY_LEN],
    iv: [u8; KEY_LEN],
    /// Region of `AesBatch::buf`: the padded plaintext or the ciphertext, processed in place.
    off: usize,
    len: usize,
    /// Bytes of the region that are output once done (the plaintext length after unpadding).
    out_len: usize,
    state: State,
}

impl Zeroize for Job {
    fn zeroize(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

/// The expanded round keys of AES-128: 11 round keys of 16 bytes, each as a `u128` holding
/// the key's bytes in memory order. `u128` makes each key 16-byte aligned (no loads split
/// across cache lines) and makes zeroizing 11 writes instead of 176.
pub(super) type RoundKeys = [u128; 11];

/// One message for the AES-NI kernels: a whole number of blocks at `buf[off..off + len]`,
/// processed in place with round keys `rk` (encryption or decryption schedule) and `iv`.
pub(super) struct Segment {
    pub(super) off: usize,
    pub(super) len: usize,
    /// The iv's bytes in memory order (see [`RoundKeys`]).
    pub(super) iv: u128,
    pub(super) rk: RoundKeys,
}

impl Zeroize for Segment {
    fn zeroize(&mut self) {
        self.iv.zeroize();
        self.rk.zeroize();
    }
}

#[derive(Clone, Copy)]
enum Backend {
    Portable,
    #[cfg(target_arch = "x86_64")]
    AesNi(super::aes_ni::AesNi),
}

/// Encrypts and decrypts many independent messages in one call, interleaving their blocks.
///
/// Push jobs, [`run`](Self::run), read each [`output`](Self::output), then
/// [`clear`](Self::clear) and reuse: once its buffers have grown to the working size, a batch
/// allocates nothing more. Outputs are byte-identical to [`AesCipher::encrypt`] and
/// [`AesCipher::decrypt`]; a decrypt job with bad padding or length fails alone.
///
/// Inputs are copied in at push time (the batch borrows nothing). Keys, ivs and expanded
/// round keys are zeroized on [`clear`](Self::clear) and on drop; `Debug` shows no key bytes.
pub struct AesBatch {
    jobs: Vec<Job>,
    buf: Vec<u8>,
    enc: Vec<Segment>,
    dec: Vec<Segment>,
    backend: Backend,
    generation: u32,
}

impl AesBatch {
    /// An empty batch using AES-NI when the CPU has it (detected at run time), otherwise the
    /// portable path.
    pub fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(ni) = super::aes_ni::AesNi::detect() {
            return Self::with_backend(Backend::AesNi(ni));
        }
        Self::portable()
    }

    /// An empty batch that always takes the portable path, one message at a time through the
    /// `aes` and `cbc` crates (what [`AesCipher`] does). For tests and benchmarks.
    pub fn portable() -> Self {
        Self::with_backend(Backend::Portable)
    }

    fn with_backend(backend: Backend) -> Self {
        AesBatch {
            jobs: Vec::new(),
            buf: Vec::new(),
            enc: Vec::new(),
            dec: Vec::new(),
            backend,
            generation: 0,
        }
    }

    /// Whether this batch uses the AES-NI kernels.
    pub fn is_accelerated(&self) -> bool {
        !matches!(self.backend, Backend::Portable)
    }

    /// Number of jobs pushed since the last clear.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether no job was pushed since the last clear.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Queues the encryption of `plain` with `cipher`.
    pub fn push_encrypt(&mut self, cipher: &AesCipher, plain: &[u8]) -> JobId {
        let off = self.buf.len();
        let len = AesCipher::encrypted_len(plain.len());
        self.buf.extend_from_slice(plain);
        self.buf.resize(off + len, 0);
        aes_cbc::pad_in_place(&mut self.buf[off..], plain.len());
        self.push_job(Dir::Encrypt, cipher, off, len, State::Pending)
    }

    /// Queues the decryption of `ct` with `cipher`. A `ct` that is empty or not a whole
    /// number of blocks fails at once with [`CryptoError::BadLength`] (seen in `output`).
    pub fn push_decrypt(&mut self, cipher: &AesCipher, ct: &[u8]) -> JobId {
        let off = self.buf.len();
        let state = match aes_cbc::check_ct_len(ct.len()) {
            Ok(()) => {
                self.buf.extend_from_slice(ct);
                State::Pending
            }
            Err(e) => State::Failed(e),
        };
        let len = self.buf.len() - off;
        self.push_job(Dir::Decrypt, cipher, off, len, state)
    }

    fn push_job(&mut self, dir: Dir, c: &AesCipher, off: usize, len: usize, state: State) -> JobId {
        let index = u32::try_from(self.jobs.len()).expect("fewer than 2^32 jobs per batch");
        self.jobs.push(Job {
            dir,
            key: *c.key(),
            iv: *c.iv(),
            off,
            len,
            out_len: len,
            state,
        });
        JobId {
            index,
            generation: self.generation,
        }
    }

    /// Processes every pending job. Jobs pushed after a run wait for the next run.
    pub fn run(&mut self) {
        match self.backend {
            Backend::Portable => self.run_portable(),
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi(ni) => self.run_aes_ni(ni),
        }
    }

    fn run_portable(&mut self) {
        for job in self.jobs.iter_mut().filter(|j| j.state == State::Pending) {
            let region = &mut self.buf[job.off..job.off + job.len];
            match job.dir {
                Dir::Encrypt => {
                    // The region already holds the padding; encrypting whole blocks with
                    // NoPadding would do, but the padded API keeps one code path with AesCipher.
                    let plain_len = job.len - region[job.len - 1] as usize;
                    aes_cbc::encrypt_in_place(&job.key, &job.iv, region, plain_len);
                    job.state = State::Done;
                }
                Dir::Decrypt => match aes_cbc::decrypt_in_place(&job.key, &job.iv, region) {
                    Ok(n) => {
                        job.out_len = n;
                        job.state = State::Done;
                    }
                    Err(e) => job.state = State::Failed(e),
                },
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn run_aes_ni(&mut self, ni: super::aes_ni::AesNi) {
        // Keep allocations from earlier runs; the old contents were zeroized by the last run.
        self.enc.clear();
        self.dec.clear();
        for job in self.jobs.iter().filter(|j| j.state == State::Pending) {
            let list = match job.dir {
                Dir::Encrypt => &mut self.enc,
                Dir::Decrypt => &mut self.dec,
            };
            // Expand straight into the vector's slot: no copy of the schedule to wipe later.
            let iv = u128::from_ne_bytes(job.iv);
            list.push(Segment {
                off: job.off,
                len: job.len,
                iv,
                rk: [0; 11],
            });
            let rk = &mut list.last_mut().expect("just pushed").rk;
            match job.dir {
                Dir::Encrypt => ni.expand_encrypt_key(&job.key, rk),
                Dir::Decrypt => ni.expand_decrypt_key(&job.key, rk),
            }
        }
        ni.cbc_encrypt(&mut self.buf, &self.enc);
        ni.cbc_decrypt(&mut self.buf, &self.dec);
        zeroize_keep_capacity(&mut self.enc);
        zeroize_keep_capacity(&mut self.dec);
        for job in self.jobs.iter_mut().filter(|j| j.state == State::Pending) {
            job.state = match job.dir {
                Dir::Encrypt => State::Done,
                Dir::Decrypt => {
                    match aes_cbc::unpadded_len(&self.buf[job.off..job.off + job.len]) {
                        Some(n) => {
                            job.out_len = n;
                            State::Done
                        }
                        None => State::Failed(CryptoError::BadPadding),
                    }
                }
            };
        }
    }

    /// The ciphertext (encrypt job) or plaintext (decrypt job) of a job after [`run`](Self::run).
    ///
    /// # Errors
    /// The job's own failure ([`CryptoError::BadLength`], [`CryptoError::BadPadding`]), or
    /// [`CryptoError::NoSuchJob`] if `id` is from another batch generation (cleared since),
    /// unknown, or not run yet.
    pub fn output(&self, id: JobId) -> Result<&[u8], CryptoError> {
        if id.generation != self.generation {
            return Err(CryptoError::NoSuchJob);
        }
        let job = self
            .jobs
            .get(id.index as usize)
            .ok_or(CryptoError::NoSuchJob)?;
        match job.state {
            State::Done => Ok(&self.buf[job.off..job.off + job.out_len]),
            State::Failed(e) => Err(e),
            State::Pending => Err(CryptoError::NoSuchJob),
        }
    }

    /// Forgets every job (their ids stop working), zeroizes the keys, keeps the allocations.
    pub fn clear(&mut self) {
        zeroize_keep_capacity(&mut self.jobs);
        self.buf.clear();
        self.generation = self.generation.wrapping_add(1);
    }
}

/// Zeroizes every element, then empties the vector without freeing it (`Vec::zeroize` would
/// also wipe the spare capacity, which holds nothing we wrote that was not already wiped).
fn zeroize_keep_capacity<T: Zeroize>(v: &mut Vec<T>) {
    v.iter_mut().for_each(Zeroize::zeroize);
    v.clear();
}

impl Default for AesBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for AesBatch {
    fn drop(&mut self) {
        zeroize_keep_capacity(&mut self.jobs);
        zeroize_keep_capacity(&mut self.enc);
        zeroize_keep_capacity(&mut self.dec);
    }
}

impl fmt::Debug for AesBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AesBatch")
            .field("jobs", &self.jobs.len())
            .field("bytes", &self.buf.len())
            .field("accelerated", &self.is_accelerated())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Case {
        Enc {
            key: [u8; 16],
            iv: [u8; 16],
            plain: Vec<u8>,
        },
        Dec {
            key: [u8; 16],
            iv: [u8; 16],
            plain: Vec<u8>,
        },
        /// A ciphertext of `plain` with its last byte flipped: bad padding (or, rarely, a
        /// different valid padding, which must still match the single-message result).
        Corrupt {
            key: [u8; 16],
            iv: [u8; 16],
            plain: Vec<u8>,
            flip: u8,
        },
        BadLen {
            key: [u8; 16],
            iv: [u8; 16],
            len: usize,
        },
    }

    fn case() -> impl Strategy<Value = Case> {
        let kv = (any::<[u8; 16]>(), any::<[u8; 16]>());
        let plain = proptest::collection::vec(any::<u8>(), 0..2000);
        prop_oneof![
            4 => (kv, plain.clone()).prop_map(|((key, iv), plain)| Case::Enc { key, iv, plain }),
            4 => (kv, plain.clone()).prop_map(|((key, iv), plain)| Case::Dec { key, iv, plain }),
            1 => (kv, plain, 1..=255u8)
                .prop_map(|((key, iv), plain, flip)| Case::Corrupt { key, iv, plain, flip }),
            1 => (kv, 0..100usize).prop_filter("not whole blocks", |(_, l)| *l == 0 || l % 16 != 0)
                .prop_map(|((key, iv), len)| Case::BadLen { key, iv, len }),
        ]
    }

    /// Pushes every case, runs, and checks each output against `AesCipher` one at a time.
    fn check(batch: &mut AesBatch, cases: &[Case]) {
        let mut expect = Vec::new();
        let mut ids = Vec::new();
        for c in cases {
            let (id, want) = match c {
                Case::Enc { key, iv, plain } => {
                    let a = AesCipher::new(*key, *iv);
                    (batch.push_encrypt(&a, plain), Ok(a.encrypt(plain)))
                }
                Case::Dec { key, iv, plain } => {
                    let a = AesCipher::new(*key, *iv);
                    (batch.push_decrypt(&a, &a.encrypt(plain)), Ok(plain.clone()))
                }
                Case::Corrupt {
                    key,
                    iv,
                    plain,
                    flip,
                } => {
                    let a = AesCipher::new(*key, *iv);
                    let mut ct = a.encrypt(plain);
                    *ct.last_mut().unwrap() ^= flip;
                    (batch.push_decrypt(&a, &ct), a.decrypt(&ct))
                }
                Case::BadLen { key, iv, len } => {
                    let a = AesCipher::new(*key, *iv);
                    (
                        batch.push_decrypt(&a, &vec![1; *len]),
                        Err(CryptoError::BadLength),
                    )
                }
            };
            ids.push(id);
            expect.push(want);
        }
        batch.run();
        for (i, (id, want)) in ids.iter().zip(&expect).enumerate() {
            let got = batch.output(*id).map(<[u8]>::to_vec);
            assert_eq!(&got, want, "job {i} of {}", cases.len());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn batch_equals_one_at_a_time(cases in proptest::collection::vec(case(), 0..40)) {
            let mut fast = AesBatch::new();
            let mut slow = AesBatch::portable();
            check(&mut fast, &cases);
            check(&mut slow, &cases);
            // Reuse after clear must work the same.
            fast.clear();
            check(&mut fast, &cases);
        }
    }

    #[test]
    fn ids_expire_on_clear() {
        let mut b = AesBatch::new();
        let a = AesCipher::new([1; 16], [2; 16]);
        let id = b.push_encrypt(&a, b"x");
        assert_eq!(b.output(id), Err(CryptoError::NoSuchJob), "not run yet");
        b.run();
        assert_eq!(b.output(id).unwrap(), &a.encrypt(b"x")[..]);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.output(id), Err(CryptoError::NoSuchJob));
        let id2 = b.push_encrypt(&a, b"y");
        assert_ne!(id, id2);
        b.run();
        assert_eq!(b.output(id2).unwrap(), &a.encrypt(b"y")[..]);
    }

    #[test]
    fn second_run_processes_only_new_jobs() {
        let mut b = AesBatch::new();
        let a = AesCipher::new([3; 16], [4; 16]);
        let first = b.push_encrypt(&a, b"first");
        b.run();
        let second = b.push_decrypt(&a, &a.encrypt(b"second"));
        b.run();
        assert_eq!(b.output(first).unwrap(), &a.encrypt(b"first")[..]);
        assert_eq!(b.output(second).unwrap(), b"second");
    }

    #[test]
    fn many_lanes_of_uneven_lengths() {
        // More jobs than lanes, lengths that finish at different steps, both directions.
        let cases: Vec<Case> = (0..50)
            .map(|i| {
                let key = [i as u8; 16];
                let iv = [(i * 7) as u8; 16];
                let plain: Vec<u8> = (0..(i * 37) % 300).map(|j| (i + j) as u8).collect();
                if i % 3 == 0 {
                    Case::Dec { key, iv, plain }
                } else {
                    Case::Enc { key, iv, plain }
                }
            })
            .collect();
        check(&mut AesBatch::new(), &cases);
        check(&mut AesBatch::portable(), &cases);
    }

    #[test]
    fn debug_shows_no_keys() {
        let mut b = AesBatch::portable();
        b.push_encrypt(&AesCipher::new([0xab; 16], [0xcd; 16]), b"x");
        let s = format!("{b:?}");
        assert!(!s.contains("171") && !s.contains("ab"), "{s}");
    }
}
