//! Fuzzes the receive path: `FrameDecoder` over arbitrary chunk splits, then the body
//! pipeline (`open_body`, with and without a cipher, with a small inflate cap), then both
//! message decoders. Nothing may panic.
//!
//! Also checked, because a shell relies on them:
//! - the units (and the error, if any) do not depend on how the stream was split into reads;
//! - when `decode` wants more bytes, `bytes_needed` asks for more than the buffer holds;
//! - a body that is neither encrypted nor compressed opens to itself;
//! - a message that decodes re-encodes to a body that decodes to the same message.
//!
//! Input layout: byte 0, low 3 bits = `n`; the next `n` bytes are read sizes, used in turn
//! (0 = everything left); the rest is the byte stream as it came off the socket.

#![no_main]

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mpush_fleet::crypto::AesCipher;
use mpush_fleet::proto::message::{ClientMessage, Message, ServerMessage};
use mpush_fleet::proto::pipeline::open_body;
use mpush_fleet::proto::{DecodeError, Flags, Frame, FrameDecoder, Unit};

/// Small enough that a 10 KiB frame of deflated zeros runs into it.
const MAX_INFLATED: usize = 1024;

/// The session cipher of `shared/vectors/frames.json`, so the golden encrypted seeds open.
fn cipher() -> AesCipher {
    AesCipher::new(
        [
            0xf4, 0x07, 0x00, 0x7f, 0x80, 0x21, 0xff, 0x5a, 0x05, 0xb3, 0x40, 0x01, 0xdf, 0x12,
            0x64, 0xfb,
        ],
        [
            0x03, 0xf7, 0x2c, 0x9c, 0x00, 0x0f, 0x10, 0x80, 0x7f, 0x08, 0xff, 0x02, 0x4d, 0xbe,
            0x09, 0x1e,
        ],
    )
}

#[derive(Debug, PartialEq)]
struct Decoded {
    units: Vec<Unit>,
    error: Option<DecodeError>,
    rest: Vec<u8>,
}

/// Decodes `stream` as the shell would: append one read, take every whole unit, repeat.
fn decode(dec: &FrameDecoder, stream: &[u8], reads: &[u8]) -> Decoded {
    let mut buf = BytesMut::new();
    let mut units = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < stream.len() {
        let n = match reads.get(i % reads.len().max(1)) {
            Some(&n) if n > 0 => usize::from(n).min(stream.len() - at),
            _ => stream.len() - at,
        };
        i += 1;
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(unit)) => units.push(unit),
                Ok(None) => {
                    let needed = dec.bytes_needed(&buf).expect("bytes_needed after Ok(None)");
                    assert!(needed > buf.len(), "needs {needed} with {} held", buf.len());
                    break;
                }
                Err(e) => {
                    assert_eq!(dec.bytes_needed(&buf), Err(e.clone()));
                    return Decoded {
                        units,
                        error: Some(e),
                        rest: Vec::new(),
                    };
                }
            }
        }
    }
    Decoded {
        units,
        error: None,
        rest: buf.to_vec(),
    }
}

fn roundtrip<M: Message + PartialEq + Debug>(msg: &M) {
    let mut out = BytesMut::new();
    msg.encode_body(&mut out);
    let back = M::decode_body(out.freeze()).expect("a re-encoded message decodes");
    assert_eq!(&back, msg);
}

fn decode_messages(cmd: u8, body: Bytes) {
    if let Ok(msg) = ClientMessage::decode(cmd, body.clone()) {
        match &msg {
            ClientMessage::Handshake(m) => roundtrip(m),
            ClientMessage::FastConnect(m) => roundtrip(m),
            ClientMessage::Bind(m) => roundtrip(m),
            ClientMessage::Unbind(m) => roundtrip(m),
            ClientMessage::Push(m) => roundtrip(m),
            ClientMessage::Ack(m) => roundtrip(m),
            ClientMessage::HttpRequest(m) => roundtrip(m),
            ClientMessage::Heartbeat | ClientMessage::Unsupported(_) => {}
        }
    }
    if let Ok(msg) = ServerMessage::decode(cmd, body) {
        match &msg {
            ServerMessage::HandshakeOk(m) => roundtrip(m),
            ServerMessage::FastConnectOk(m) => roundtrip(m),
            ServerMessage::Ok(m) => roundtrip(m),
            ServerMessage::Error(m) => roundtrip(m),
            ServerMessage::Push(m) => roundtrip(m),
            ServerMessage::Kick(m) => roundtrip(m),
            ServerMessage::HttpResponse(m) => roundtrip(m),
            ServerMessage::Heartbeat | ServerMessage::Other(_) => {}
        }
    }
}

fn open_frame(frame: &Frame, cipher: &AesCipher) {
    let _ = frame.command();
    let transformed = frame.flags.contains(Flags::CRYPTO) || frame.flags.contains(Flags::COMPRESS);
    for c in [None, Some(cipher)] {
        let opened = open_body(frame, c, MAX_INFLATED);
        if !transformed || frame.body.is_empty() {
            assert_eq!(opened.as_ref(), Ok(&frame.body), "plain body changed");
        }
        if let Ok(body) = opened {
            assert!(body.len() <= MAX_INFLATED.max(frame.body.len()));
            decode_messages(frame.cmd, body);
        }
    }
    if transformed {
        // A garbled transform must not hide the message decoders from the fuzzer.
        decode_messages(frame.cmd, frame.body.clone());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(ctl & 0x07).min(rest.len());
    let (reads, stream) = rest.split_at(n);
    let cipher = cipher();
    for dec in [FrameDecoder::new(64), FrameDecoder::default()] {
        let whole = decode(&dec, stream, &[]);
        let split = decode(&dec, stream, reads);
        assert_eq!(whole, split, "read splits changed the units");
        if dec.max_body() == FrameDecoder::default().max_body() {
            for unit in &whole.units {
                if let Unit::Frame(frame) = unit {
                    open_frame(frame, &cipher);
                }
            }
        }
    }
});
