//! Golden frames from the real MPUSH Java encoder (`shared/vectors/frames.json`): encoding
//! the same fields with the same flags and cipher must give `wire_hex` exactly, and decoding
//! `wire_hex` must give the fields.

mod common;

use bytes::BytesMut;
use md5::{Digest, Md5};
use mpush_fleet::crypto::AesCipher;
use mpush_fleet::proto::message::*;
use mpush_fleet::proto::pipeline::{open_body, Encoder};
use mpush_fleet::proto::{Flags, FrameDecoder, MsgId, Unit, DEFAULT_COMPRESS_THRESHOLD};
use serde_json::Value;

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn text(fields: &Value, name: &str) -> String {
    fields[name].as_str().unwrap_or("").to_owned()
}

fn int(fields: &Value, name: &str) -> i64 {
    fields[name]
        .as_i64()
        .unwrap_or_else(|| panic!("field {name} is not an integer"))
}

fn key(fields: &Value, name: &str) -> [u8; 16] {
    unhex(&fields[name]).try_into().expect("16-byte field")
}

fn binding(f: &Value) -> UserBinding {
    UserBinding {
        user_id: text(f, "userId"),
        data: text(f, "data"),
        tags: text(f, "tags"),
    }
}

/// The message a vector describes, encoded with `enc` the way the Java side sent it.
fn encode_vector(name: &str, f: &Value, flags: Flags, id: MsgId, cipher: &AesCipher) -> BytesMut {
    let base = name.split(' ').next().unwrap_or(name);
    let mut enc = Encoder::new(DEFAULT_COMPRESS_THRESHOLD);
    let mut out = BytesMut::new();
    // Vectors marked CRYPTO were made with "send" and the session cipher; the others raw.
    let crypto = flags.contains(Flags::CRYPTO).then_some(cipher);
    let rest = flags.without(Flags::CRYPTO);
    macro_rules! put {
        ($msg:expr) => {{
            let msg = $msg;
            if crypto.is_some() {
                enc.write(&mut out, &msg, id, rest, crypto)
            } else {
                enc.write_raw(&mut out, &msg, id, rest)
            }
        }};
    }
    match base {
        "bind" => put!(Bind(binding(f))),
        "unbind" => put!(Unbind(binding(f))),
        "handshake_ok" => put!(HandshakeOk {
            server_key: key(f, "serverKey_hex"),
            heartbeat: int(f, "heartbeat") as i32,
            session_id: text(f, "sessionId"),
            expire_time: int(f, "expireTime"),
        }),
        "push_auto_ack" | "push_biz_ack" => put!(Push {
            content: unhex(&f["content_hex"]).into()
        }),
        "kick" => put!(Kick {
            device_id: text(f, "deviceId"),
            user_id: text(f, "userId")
        }),
        "http_request" => put!(HttpRequest {
            method: HttpMethod(int(f, "method") as u8),
            uri: text(f, "uri"),
            headers: text(f, "headers"),
            body: unhex(&f["body_hex"]).into(),
        }),
        "http_response" => put!(HttpResponse {
            status_code: int(f, "statusCode") as i32,
            reason_phrase: text(f, "reasonPhrase"),
            headers: text(f, "headers"),
            body: unhex(&f["body_hex"]).into(),
        }),
        "fast_connect" => put!(FastConnect {
            session_id: text(f, "sessionId"),
            device_id: text(f, "deviceId"),
            min_heartbeat: int(f, "minHeartbeat") as i32,
            max_heartbeat: int(f, "maxHeartbeat") as i32,
        }),
        "fast_connect_ok" => put!(FastConnectOk {
            heartbeat: int(f, "heartbeat") as i32
        }),
        "ok_bind" => put!(OkReply {
            cmd: int(f, "cmd") as u8,
            code: int(f, "code") as u8,
            data: text(f, "data"),
        }),
        "error_session_expired" => put!(ErrorReply {
            cmd: int(f, "cmd") as u8,
            code: ErrorCode(int(f, "code") as u8),
            reason: text(f, "reason"),
            data: text(f, "data"),
        }),
        "ack" => put!(Ack),
        "handshake_plain" => put!(Handshake {
            device_id: text(f, "deviceId"),
            os_name: text(f, "osName"),
            os_version: text(f, "osVersion"),
            client_version: text(f, "clientVersion"),
            iv: key(f, "iv_hex"),
            client_key: key(f, "clientKey_hex"),
            min_heartbeat: int(f, "minHeartbeat") as i32,
            max_heartbeat: int(f, "maxHeartbeat") as i32,
            timestamp: int(f, "timestamp"),
        }),
        "bind_long_tags" => {
            let tags: String = (0..int(f, "tags_len"))
                .map(|i| (b'a' + (i % 26) as u8) as char)
                .collect();
            put!(Bind(UserBinding {
                user_id: text(f, "userId"),
                data: String::new(),
                tags
            }))
        }
        other => panic!("vector {other}: no encoder for it in this test; add one"),
    }
    out
}

fn is_client_to_server(name: &str) -> bool {
    [
        "bind",
        "unbind",
        "http_request",
        "fast_connect ",
        "handshake_plain",
        "ack",
    ]
    .iter()
    .any(|p| name.starts_with(p))
        || name == "fast_connect"
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fn push_payload(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("push-payload-{};", i % 10).into_bytes())
        .collect()
}

#[test]
fn frames_match_the_java_encoder_byte_for_byte() {
    let Some(dir) = common::vectors_dir() else {
        return;
    };
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("frames.json")).unwrap()).unwrap();
    let cipher = AesCipher::new(key(&doc["aes"], "key_hex"), key(&doc["aes"], "iv_hex"));
    let frames = doc["frames"].as_array().expect("frames[]");
    assert!(frames.len() >= 20, "vector file looks truncated");
    let mut checked = 0;
    for v in frames {
        let name = v["name"].as_str().unwrap();
        let wire = unhex(&v["wire_hex"]);
        let flags = Flags(int(v, "flags") as u8);
        let id = MsgId(int(v, "session_id") as i32);
        let fields = &v["fields"];

        // Decode the Java bytes.
        let mut buf = BytesMut::from(&wire[..]);
        let unit = FrameDecoder::new(1 << 20)
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let Some(Unit::Frame(frame)) = unit else {
            panic!("{name}: no whole frame")
        };
        assert!(
            buf.is_empty(),
            "{name}: {} bytes left after the frame",
            buf.len()
        );
        assert_eq!(frame.cmd, int(v, "cmd") as u8, "{name}: cmd");
        assert_eq!(frame.flags, flags, "{name}: flags");
        assert_eq!(frame.msg_id, id, "{name}: message id");
        let body =
            open_body(&frame, Some(&cipher), 1 << 20).unwrap_or_else(|e| panic!("{name}: {e}"));

        if name == "push_compressed_encrypted" {
            // Deflate output may legally differ between zlib implementations: decode, then
            // check our own round trip.
            let content = Push::decode_body(body).unwrap().content;
            assert_eq!(
                content.len() as i64,
                int(fields, "content_len"),
                "{name}: length"
            );
            let md5 = hex::encode(Md5::digest(&content));
            assert_eq!(
                md5,
                text(fields, "content_sha_like_md5"),
                "{name}: content md5"
            );
            assert_eq!(
                &content[..],
                &push_payload(2000)[..],
                "{name}: content pattern"
            );
            let mut out = BytesMut::new();
            Encoder::new(DEFAULT_COMPRESS_THRESHOLD).write(
                &mut out,
                &Push {
                    content: content.clone(),
                },
                id,
                Flags::NONE,
                Some(&cipher),
            );
            let Some(Unit::Frame(ours)) = FrameDecoder::new(1 << 20).decode(&mut out).unwrap()
            else {
                panic!()
            };
            assert_eq!(ours.flags, flags, "{name}: our flags");
            assert_eq!(open_body(&ours, Some(&cipher), 1 << 20).unwrap(), content);
            checked += 1;
            continue;
        }

        // Decoding gives the vector's fields: re-encoding the decoded message raw must give
        // the same plain body as encoding the fields.
        let expected = encode_vector(name, fields, flags, id, &cipher);
        let decoded_again = if is_client_to_server(name) {
            format!(
                "{:?}",
                ClientMessage::decode(frame.cmd, body.clone())
                    .unwrap_or_else(|e| panic!("{name}: {e}"))
            )
        } else {
            format!(
                "{:?}",
                ServerMessage::decode(frame.cmd, body.clone())
                    .unwrap_or_else(|e| panic!("{name}: {e}"))
            )
        };
        assert!(
            !decoded_again.contains("Unsupported") && !decoded_again.contains("Other("),
            "{name}: {decoded_again}"
        );
        let plain_expected = {
            let mut b = expected.clone();
            let Some(Unit::Frame(f)) = FrameDecoder::new(1 << 20).decode(&mut b).unwrap() else {
                panic!()
            };
            open_body(&f, Some(&cipher), 1 << 20).unwrap()
        };
        assert_eq!(
            body, plain_expected,
            "{name}: decoded body differs from the fields"
        );

        // Encoding the fields gives the Java bytes exactly.
        if expected[..] != wire[..] {
            let at = first_difference(&expected, &wire);
            panic!(
                "{name}: encoding differs from the Java bytes at byte {at} (ours {} bytes, theirs {}): ours {:02x?} theirs {:02x?}",
                expected.len(),
                wire.len(),
                &expected[at..(at + 8).min(expected.len())],
                &wire[at..(at + 8).min(wire.len())],
            );
        }
        checked += 1;
    }
    assert_eq!(checked, frames.len());
    println!("checked {checked} golden frames");
}

#[test]
fn long_tags_vector_exceeds_the_default_limit() {
    let Some(dir) = common::vectors_dir() else {
        return;
    };
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("frames.json")).unwrap()).unwrap();
    let v = doc["frames"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "bind_long_tags")
        .unwrap();
    let mut buf = BytesMut::from(&unhex(&v["wire_hex"])[..]);
    assert!(FrameDecoder::default().decode(&mut buf).is_err());
}
