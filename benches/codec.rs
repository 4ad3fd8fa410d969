//! Codec costs per operation: the frame decoder over a read buffer of 64 small pushes and the
//! frame encoder; each message's body encode and decode (plain, no pipeline); and opening a
//! push through the body pipeline with AES (64 B, 1 KiB) and with deflate + AES (30 KB).
//!
//! `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use mpush_fleet::crypto::AesCipher;
use mpush_fleet::proto::message::{
    Ack, Bind, ErrorCode, ErrorReply, FastConnect, FastConnectOk, Handshake, HandshakeOk,
    HttpMethod, HttpRequest, HttpResponse, Kick, Message, OkReply, Push, UserBinding,
};
use mpush_fleet::proto::pipeline::{open_body, Encoder};
use mpush_fleet::proto::{
    encode_frame, Cmd, Flags, Frame, FrameDecoder, MsgId, Unit, DEFAULT_MAX_INFLATED,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FRAMES: usize = 64;
const PUSH_LEN: usize = 64;

fn cipher() -> AesCipher {
    AesCipher::new([0x42; 16], [0x24; 16])
}

/// A push content of `len` bytes of JSON-like text (compresses as real notifications do,
/// neither all zeros nor random).
fn push_content(rng: &mut StdRng, len: usize) -> Bytes {
    const WORDS: [&str; 12] = [
        "{\"title\":",
        "\"news\"",
        ",\"body\":",
        "\"hello\"",
        " world",
        ",\"id\":",
        "12345",
        "}",
        " update",
        "\"ok\"",
        " fleet",
        " device",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())].as_bytes());
        out.extend_from_slice(rng.gen_range(0u32..1000).to_string().as_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

fn frames(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let contents: Vec<Bytes> = (0..FRAMES)
        .map(|_| push_content(&mut rng, PUSH_LEN))
        .collect();
    let mut wire = BytesMut::new();
    for (i, content) in contents.iter().enumerate() {
        encode_frame(
            &mut wire,
            Cmd::Push,
            Flags::AUTO_ACK,
            MsgId(i as i32),
            content,
        );
    }
    let wire = wire.freeze();
    let dec = FrameDecoder::default();

    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(FRAMES as u64));
    g.bench_function(format!("decode_64x{PUSH_LEN}B_push"), |b| {
        b.iter_batched_ref(
            || BytesMut::from(&wire[..]),
            |buf| {
                while let Ok(Some(unit)) = dec.decode(buf) {
                    black_box(unit);
                }
            },
            BatchSize::SmallInput,
        )
    });
    let mut out = BytesMut::with_capacity(wire.len());
    g.bench_function(format!("encode_64x{PUSH_LEN}B_push"), |b| {
        b.iter(|| {
            out.clear();
            for (i, content) in contents.iter().enumerate() {
                encode_frame(
                    &mut out,
                    Cmd::Push,
                    Flags::AUTO_ACK,
                    MsgId(i as i32),
                    content,
                );
            }
            black_box(&out);
        })
    });
    g.finish();
}

fn bench_message<M: Message>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, msg: &M) {
    let mut out = BytesMut::with_capacity(1024);
    msg.encode_body(&mut out);
    let body = out.split().freeze();
    g.bench_function(format!("encode/{name}_{}B", body.len()), |b| {
        b.iter(|| {
            out.clear();
            black_box(msg).encode_body(&mut out);
            black_box(&out);
        })
    });
    g.bench_function(format!("decode/{name}_{}B", body.len()), |b| {
        b.iter(|| M::decode_body(black_box(body.clone())))
    });
}

fn messages(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let mut g = c.benchmark_group("message");
    g.throughput(Throughput::Elements(1));
    let handshake = Handshake {
        device_id: "device-000042".into(),
        os_name: "android".into(),
        os_version: "1.0.1".into(),
        client_version: "1.0.0".into(),
        iv: rng.gen(),
        client_key: rng.gen(),
        min_heartbeat: 180_000,
        max_heartbeat: 180_000,
        timestamp: 1_764_115_200_123,
    };
    bench_message(&mut g, "Handshake", &handshake);
    let handshake_ok = HandshakeOk {
        server_key: rng.gen(),
        heartbeat: 180_000,
        session_id: "0123456789abcdef0123456789abcdef".into(),
        expire_time: 1_764_115_200_123,
    };
    bench_message(&mut g, "HandshakeOk", &handshake_ok);
    let fast_connect = FastConnect {
        session_id: "0123456789abcdef0123456789abcdef".into(),
        device_id: "device-000042".into(),
        min_heartbeat: 180_000,
        max_heartbeat: 180_000,
    };
    bench_message(&mut g, "FastConnect", &fast_connect);
    bench_message(
        &mut g,
        "FastConnectOk",
        &FastConnectOk { heartbeat: 180_000 },
    );
    let bind = Bind(UserBinding {
        user_id: "user-000042".into(),
        data: "token=abc".into(),
        tags: "test,vip".into(),
    });
    bench_message(&mut g, "Bind", &bind);
    let ok = OkReply {
        cmd: Cmd::Bind as u8,
        code: 0,
        data: "bind success".into(),
    };
    bench_message(&mut g, "Ok", &ok);
    let error = ErrorReply {
        cmd: Cmd::FastConnect as u8,
        code: ErrorCode::SESSION_EXPIRED,
        reason: "session expired".into(),
        data: String::new(),
    };
    bench_message(&mut g, "Error", &error);
    let push = Push {
        content: push_content(&mut rng, PUSH_LEN),
    };
    bench_message(&mut g, "Push", &push);
    let kick = Kick {
        device_id: "device-000042".into(),
        user_id: "user-000042".into(),
    };
    bench_message(&mut g, "Kick", &kick);
    bench_message(&mut g, "Ack", &Ack);
    let request = HttpRequest {
        method: HttpMethod::POST,
        uri: "http://example.com/api/v1/echo".into(),
        headers: "Content-Type:application/json\nAccept:*/*".into(),
        body: push_content(&mut rng, 64),
    };
    bench_message(&mut g, "HttpRequest", &request);
    let response = HttpResponse {
        status_code: 200,
        reason_phrase: "OK".into(),
        headers: "Content-Type:application/json".into(),
        body: push_content(&mut rng, 64),
    };
    bench_message(&mut g, "HttpResponse", &response);
    g.finish();
}

/// A push frame as the server sends it ("send" with the session cipher).
fn sealed_push(content: Bytes) -> Frame {
    let mut wire = BytesMut::new();
    let push = Push { content };
    Encoder::default().write(&mut wire, &push, MsgId(7), Flags::AUTO_ACK, Some(&cipher()));
    match FrameDecoder::new(1 << 20).decode(&mut wire) {
        Ok(Some(Unit::Frame(frame))) => frame,
        other => panic!("bench set-up: expected a frame, got {other:?}"),
    }
}

fn push_open(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let cipher = cipher();
    let mut g = c.benchmark_group("push_open");
    for len in [64, 1024, 30 * 1024] {
        let frame = sealed_push(push_content(&mut rng, len));
        let kind = if frame.flags.contains(Flags::COMPRESS) {
            "deflate_aes"
        } else {
            "aes"
        };
        eprintln!(
            "push_open: {len} B content -> {} B on the wire, flags {:?}",
            frame.body.len(),
            frame.flags
        );
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("{kind}_{len}B"), |b| {
            b.iter(|| {
                let body = open_body(black_box(&frame), Some(&cipher), DEFAULT_MAX_INFLATED);
                body.and_then(Push::decode_body)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, frames, messages, push_open);
criterion_main!(benches);
