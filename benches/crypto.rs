//! Crypto costs per operation: the handshake's RSA, and AES-CBC one message at a time versus
//! `AesBatch` (64 messages, each with its own key, at 64 B, 256 B and 1 KiB). The single and
//! batched figures share a group so their ratio comes from one run.
//!
//! `cargo bench --bench crypto -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mpush_fleet::crypto::{AesBatch, AesCipher, RsaDecryptor, RsaEncryptor};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

const MESSAGES: usize = 64;
const SIZES: [usize; 3] = [64, 256, 1024];

/// A Handshake body as a device sends it (PROTOCOL.md 4): deviceId, osName, osVersion,
/// clientVersion, iv, clientKey, minHeartbeat, maxHeartbeat, timestamp. 89 bytes.
fn handshake_body(rng: &mut StdRng) -> Vec<u8> {
    fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as i16).to_be_bytes());
        out.extend_from_slice(b);
    }
    let mut out = Vec::new();
    for s in ["device-00001", "android", "1.0.1", "1.0.0"] {
        put_bytes(&mut out, s.as_bytes());
    }
    let mut key = [0u8; 16];
    for _ in 0..2 {
        rng.fill_bytes(&mut key);
        put_bytes(&mut out, &key);
    }
    out.extend_from_slice(&180_000i32.to_be_bytes());
    out.extend_from_slice(&180_000i32.to_be_bytes());
    out.extend_from_slice(&1_764_115_200_123i64.to_be_bytes());
    out
}

fn rsa(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let body = handshake_body(&mut rng);
    let enc = RsaEncryptor::mpush_default();
    let dec = RsaDecryptor::mpush_default();
    let ct = enc.encrypt(&mut rng, &body);
    assert_eq!(dec.decrypt(&ct).unwrap(), body);

    let mut g = c.benchmark_group("rsa_1024_default_key");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("encrypt_handshake_{}B", body.len()), |b| {
        b.iter(|| enc.encrypt(&mut rng, black_box(&body)))
    });
    // The same encryption through the `rsa` crate's own public-key operation (what
    // RsaEncryptor did before its Montgomery form): the before/after ratio in one run.
    let crate_key = {
        use base64::Engine as _;
        use rsa::pkcs8::DecodePublicKey as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(mpush_fleet::crypto::MPUSH_DEFAULT_PUBLIC_KEY)
            .unwrap();
        rsa::RsaPublicKey::from_public_key_der(&der).unwrap()
    };
    g.bench_function(
        format!("encrypt_handshake_{}B_rsa_crate", body.len()),
        |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(256);
                for chunk in black_box(&body).chunks(117) {
                    out.extend(
                        crate_key
                            .encrypt(&mut rng, rsa::Pkcs1v15Encrypt, chunk)
                            .unwrap(),
                    );
                }
                out
            })
        },
    );
    g.bench_function("decrypt_handshake_128B", |b| {
        b.iter(|| dec.decrypt(black_box(&ct)))
    });
    g.finish();
}

fn aes(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let ciphers: Vec<AesCipher> = (0..MESSAGES)
        .map(|_| {
            let (mut k, mut iv) = ([0u8; 16], [0u8; 16]);
            rng.fill_bytes(&mut k);
            rng.fill_bytes(&mut iv);
            AesCipher::new(k, iv)
        })
        .collect();

    let mut g = c.benchmark_group("aes_cbc_64_messages");
    for size in SIZES {
        let plains: Vec<Vec<u8>> = (0..MESSAGES)
            .map(|_| {
                let mut p = vec![0u8; size];
                rng.fill_bytes(&mut p);
                p
            })
            .collect();
        let cts: Vec<Vec<u8>> = ciphers
            .iter()
            .zip(&plains)
            .map(|(c, p)| c.encrypt(p))
            .collect();
        g.throughput(Throughput::Bytes((MESSAGES * size) as u64));

        let mut out = BytesMut::with_capacity(MESSAGES * (size + 16));
        g.bench_function(BenchmarkId::new("single_encrypt", size), |b| {
            b.iter(|| {
                out.clear();
                for (c, p) in ciphers.iter().zip(&plains) {
                    c.encrypt_to(black_box(p), &mut out);
                }
                black_box(out.len())
            })
        });
        g.bench_function(BenchmarkId::new("single_decrypt", size), |b| {
            b.iter(|| {
                out.clear();
                for (c, ct) in ciphers.iter().zip(&cts) {
                    c.decrypt_to(black_box(ct), &mut out).unwrap();
                }
                black_box(out.len())
            })
        });

        for (name, mut batch) in [
            ("batch", AesBatch::new()),
            ("batch_portable", AesBatch::portable()),
        ] {
            g.bench_function(BenchmarkId::new(format!("{name}_encrypt"), size), |b| {
                b.iter(|| {
                    batch.clear();
                    for (c, p) in ciphers.iter().zip(&plains) {
                        batch.push_encrypt(c, black_box(p));
                    }
                    batch.run();
                    black_box(batch.len())
                })
            });
            g.bench_function(BenchmarkId::new(format!("{name}_decrypt"), size), |b| {
                b.iter(|| {
                    batch.clear();
                    for (c, ct) in ciphers.iter().zip(&cts) {
                        batch.push_decrypt(c, black_box(ct));
                    }
                    batch.run();
                    black_box(batch.len())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, rsa, aes);
criterion_main!(benches);
