//! Gateway frames from the real MPUSH Java classes and from a running server
//! (`shared/vectors/gateway.json`): every frame and every `live` unit decodes to its fields,
//! and encoding those fields gives its bytes exactly.

mod common;

use bytes::{Bytes, BytesMut};
use mpush_fleet::crypto::AesCipher;
use mpush_fleet::gateway::{decode_push, GatewayKickUser, GatewayPush, GatewayReply};
use mpush_fleet::proto::frame::{begin_frame, finish_frame};
use mpush_fleet::proto::message::{
    Ack, Bind, ClientMessage, ErrorCode, HttpMethod, HttpRequest, HttpResponse, Push,
    ServerMessage, UserBinding,
};
use mpush_fleet::proto::pipeline::{deflate, open_body, Encoder};
use mpush_fleet::proto::{Cmd, Flags, Frame, FrameDecoder, Message, MsgId, Unit};
use serde_json::Value;

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn text(f: &Value, name: &str) -> String {
    match &f[name] {
        Value::Null => String::new(),
        v => v
            .as_str()
            .unwrap_or_else(|| panic!("{name} not a string"))
            .to_owned(),
    }
}

fn int(f: &Value, name: &str) -> i64 {
    f[name]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} not an integer"))
}

fn bytes_field(f: &Value, name: &str) -> Bytes {
    match &f[name] {
        Value::Null => Bytes::new(),
        v => unhex(v).into(),
    }
}

fn load() -> Option<Value> {
    let dir = common::vectors_dir()?;
    let text = std::fs::read_to_string(dir.join("gateway.json")).expect("gateway.json");
    Some(serde_json::from_str(&text).expect("gateway.json is JSON"))
}

fn one_frame(wire: &[u8], what: &str) -> Frame {
    let mut buf = BytesMut::from(wire);
    let unit = FrameDecoder::new(1 << 20).decode(&mut buf);
    let Ok(Some(Unit::Frame(frame))) = unit else {
        panic!("{what}: not one whole frame: {unit:?}")
    };
    assert!(buf.is_empty(), "{what}: {} bytes left", buf.len());
    frame
}

fn gateway_push(f: &Value) -> GatewayPush {
    GatewayPush {
        user_id: text(f, "userId"),
        client_type: int(f, "clientType") as i32,
        timeout: int(f, "timeout") as i32,
        content: bytes_field(f, "content_hex"),
        task_id: text(f, "taskId"),
        tags: text(f, "tags_json"),
        condition: text(f, "condition"),
    }
}

fn reply(cmd: u8, f: &Value) -> GatewayReply {
    let (rcmd, code) = (int(f, "cmd") as u8, int(f, "code") as u8);
    if cmd == Cmd::Ok as u8 {
        let mut r = GatewayReply::ok(text(f, "data"));
        if let GatewayReply::Ok(ok) = &mut r {
            ok.cmd = rcmd;
            ok.code = code;
        }
        r
    } else {
        GatewayReply::error(rcmd, ErrorCode(code), &text(f, "reason"), text(f, "data"))
    }
}

fn raw<M: Message>(msg: &M, id: MsgId, flags: Flags) -> Vec<u8> {
    let mut out = BytesMut::new();
    Encoder::default().write_raw(&mut out, msg, id, flags);
    out.to_vec()
}

/// The bytes a unit encodes from its fields with our code, as its sender wrote it, for every
/// frame type the gateway vectors hold. `None` for a GATEWAY_PUSH flagged COMPRESS (see
/// `check_unit`).
fn encode_fields(
    frame: &Frame,
    dir: &str,
    f: &Value,
    cipher: &AesCipher,
    what: &str,
) -> Option<Vec<u8>> {
    let (cmd, flags, id) = (frame.cmd, frame.flags, frame.msg_id);
    // Frames flagged CRYPTO were sent with "send" and the session cipher; the rest raw.
    let sealed = |msg: &dyn Fn(&mut BytesMut, &mut Encoder)| {
        let mut out = BytesMut::new();
        msg(&mut out, &mut Encoder::default());
        out.to_vec()
    };
    let up = dir.starts_with("device->") || dir.starts_with("app->");
    Some(match Cmd::from_u8(cmd) {
        Some(Cmd::GatewayPush) => {
            let want = gateway_push(f);
            let got = decode_push(frame, 1 << 20).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(got, want, "{what}: fields");
            assert_eq!(
                got.is_broadcast(),
                f["userId"].is_null(),
                "{what}: broadcast"
            );
            if flags.contains(Flags::COMPRESS) {
                return None;
            }
            raw(&want, id, flags)
        }
        Some(Cmd::GatewayKick) => {
            let want = GatewayKickUser {
                user_id: text(f, "userId"),
                device_id: text(f, "deviceId"),
                conn_id: text(f, "connId"),
                client_type: int(f, "clientType") as i32,
                target_server: text(f, "targetServer"),
                target_port: int(f, "targetPort") as i32,
            };
            let got = GatewayKickUser::decode_body(frame.body.clone()).unwrap();
            assert_eq!(got, want, "{what}: fields");
            raw(&want, id, flags)
        }
        Some(Cmd::Ok | Cmd::Error) => {
            let want = reply(cmd, f);
            let got = GatewayReply::decode(frame).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(got.as_ref(), Some(&want), "{what}: fields");
            let mut out = BytesMut::new();
            want.encode(&mut out, id);
            out.to_vec()
        }
        Some(Cmd::Ack) => raw(&Ack, id, flags),
        Some(Cmd::Push | Cmd::Bind | Cmd::HttpProxy) => {
            let body =
                open_body(frame, Some(cipher), 1 << 20).unwrap_or_else(|e| panic!("{what}: {e}"));
            let rest = flags.without(Flags::CRYPTO);
            let crypto = flags.contains(Flags::CRYPTO).then_some(cipher);
            macro_rules! put {
                ($msg:expr) => {{
                    let msg = $msg;
                    sealed(&|out, enc| match crypto {
                        Some(c) => enc.write(out, &msg, id, rest, Some(c)),
                        None => enc.write_raw(out, &msg, id, rest),
                    })
                }};
            }
            match (up, Cmd::from_u8(cmd)) {
                (_, Some(Cmd::Push)) => {
                    assert_eq!(body, bytes_field(f, "content_hex"), "{what}: content");
                    put!(Push { content: body })
                }
                (true, Some(Cmd::Bind)) => {
                    let want = Bind(UserBinding {
                        user_id: text(f, "userId"),
                        data: text(f, "data"),
                        tags: text(f, "tags"),
                    });
                    assert_eq!(
                        ClientMessage::decode(cmd, body).unwrap(),
                        ClientMessage::Bind(want.clone())
                    );
                    put!(want)
                }
                (true, _) => {
                    let want = HttpRequest {
                        method: HttpMethod(int(f, "method") as u8),
                        uri: text(f, "uri"),
                        headers: text(f, "headers"),
                        body: bytes_field(f, "body_hex"),
                    };
                    assert_eq!(
                        ClientMessage::decode(cmd, body).unwrap(),
                        ClientMessage::HttpRequest(want.clone())
                    );
                    put!(want)
                }
                (false, _) => {
                    let want = HttpResponse {
                        status_code: int(f, "statusCode") as i32,
                        reason_phrase: text(f, "reasonPhrase"),
                        headers: text(f, "headers"),
                        body: bytes_field(f, "body_hex"),
                    };
                    assert_eq!(
                        ServerMessage::decode(cmd, body).unwrap(),
                        ServerMessage::HttpResponse(want.clone())
                    );
                    put!(want)
                }
            }
        }
        other => panic!("{what}: no encoder for cmd {other:?}; add one"),
    })
}

/// Checks one unit with fields (a `frames[]` entry or a `live` unit): its header, its decoded
/// fields, and that encoding the fields gives its bytes exactly. A deflated GATEWAY_PUSH
/// (a probe) is the one exception: deflate output may differ between zlib implementations,
/// so its header must match and our own deflated frame must decode to the same fields.
fn check_unit(v: &Value, wire: &[u8], cipher: &AesCipher, what: &str) {
    if wire == [0xDF] {
        let mut buf = BytesMut::from(wire);
        assert_eq!(
            FrameDecoder::default().decode(&mut buf),
            Ok(Some(Unit::Heartbeat)),
            "{what}"
        );
        assert_eq!(int(v, "cmd"), i64::from(Cmd::Heartbeat as u8), "{what}");
        return;
    }
    let frame = one_frame(wire, what);
    let header = (
        int(v, "cmd") as u8,
        Flags(int(v, "flags") as u8),
        MsgId(int(v, "session_id") as i32),
    );
    assert_eq!(
        (frame.cmd, frame.flags, frame.msg_id),
        header,
        "{what}: header"
    );
    let dir = v["dir"].as_str().or(v["direction"].as_str()).unwrap_or("");
    let Some(ours) = encode_fields(&frame, dir, &v["fields"], cipher, what) else {
        let mut plain = BytesMut::new();
        gateway_push(&v["fields"]).encode_body(&mut plain);
        let mut out = BytesMut::new();
        let start = begin_frame(&mut out, Cmd::GatewayPush, frame.flags, frame.msg_id);
        out.extend_from_slice(&deflate(&plain));
        finish_frame(&mut out, start);
        assert_eq!(&out[4..13], &wire[4..13], "{what}: header bytes");
        let back = decode_push(&one_frame(&out, what), 1 << 20).unwrap();
        assert_eq!(
            back,
            gateway_push(&v["fields"]),
            "{what}: our deflated round trip"
        );
        return;
    };
    if ours != wire {
        let at = ours
            .iter()
            .zip(wire)
            .position(|(a, b)| a != b)
            .unwrap_or(ours.len().min(wire.len()));
        panic!(
            "{what}: our bytes differ at byte {at}: ours {} bytes, theirs {}",
            ours.len(),
            wire.len()
        );
    }
}

#[test]
fn frames_match_the_java_classes_byte_for_byte() {
    let Some(doc) = load() else { return };
    let aes = &doc["aes"];
    let cipher = AesCipher::new(key(aes, "key_hex"), key(aes, "iv_hex"));
    let frames = doc["frames"].as_array().expect("frames[]");
    assert!(frames.len() >= 20, "gateway.json looks truncated");
    for v in frames {
        let name = v["name"].as_str().unwrap();
        check_unit(v, &unhex(&v["wire_hex"]), &cipher, name);
    }
    println!("checked {} gateway frames", frames.len());
}

#[test]
fn live_units_match_byte_for_byte() {
    let Some(doc) = load() else { return };
    let live = &doc["live"];
    let aes = &doc["aes"];
    let default_cipher = AesCipher::new(key(aes, "key_hex"), key(aes, "iv_hex"));
    let (mut frames, mut undecodable, mut sealed_only) = (0, 0, 0);
    let groups = live["connections"]
        .as_array()
        .unwrap()
        .iter()
        .chain(live["device_side"].as_array().unwrap());
    for group in groups {
        let cipher = match group.get("session_key_hex") {
            Some(_) => AesCipher::new(key(group, "session_key_hex"), k16(&group["iv_hex"])),
            None => default_cipher.clone(),
        };
        for u in group["units"].as_array().unwrap() {
            let what = format!(
                "{} / {}",
                group["name"].as_str().unwrap(),
                u["what"].as_str().unwrap_or("?")
            );
            let wire = unhex(&u["hex"]);
            if wire.is_empty() {
                continue; // "connection closed by server"
            }
            if u.get("decoded_by_real_classes").is_some() {
                // The truncated probe: the real server answered ERROR 100; ours must refuse it too.
                let frame = one_frame(&wire, &what);
                assert!(decode_push(&frame, 1 << 20).is_err(), "{what}");
                undecodable += 1;
            } else if u.get("fields").is_some() {
                check_unit(u, &wire, &cipher, &what);
                frames += 1;
            } else {
                // A device-side frame sealed with a fleet device's session key (not in the
                // file): its header is what can be checked.
                let frame = one_frame(&wire, &what);
                if let Some(cmd) = u["cmd"].as_i64() {
                    assert_eq!(i64::from(frame.cmd), cmd, "{what}");
                    assert_eq!(i64::from(frame.flags.0), int(u, "flags"), "{what}");
                    assert_eq!(i64::from(frame.msg_id.0), int(u, "session_id"), "{what}");
                }
                sealed_only += 1;
            }
        }
    }
    let gateway_side: usize = live["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["units"].as_array().unwrap().len())
        .sum();
    assert!(
        gateway_side >= 40,
        "live connections look truncated: {gateway_side} units"
    );
    assert_eq!(undecodable, 1);
    println!("live: {frames} frames byte for byte, {undecodable} undecodable probe, {sealed_only} header-only");
}

#[test]
fn the_live_ack_order_is_completion_order() {
    // Five AUTO_ACK requests 1..5 answered 1, 5, 4, 2, 3: the tracker matches each reply to
    // its own request by id.
    let Some(doc) = load() else { return };
    let conn = &doc["live"]["connections"][0];
    let mut tracker = mpush_fleet::gateway::Tracker::new(3_000_000);
    let mut users = std::collections::HashMap::new();
    let mut answered = Vec::new();
    for u in conn["units"].as_array().unwrap() {
        let frame = one_frame(&unhex(&u["hex"]), "live");
        if frame.cmd == Cmd::GatewayPush as u8 {
            let push = decode_push(&frame, 1 << 20).unwrap();
            let id = tracker.start(0, push.user_id.clone());
            assert_eq!(id, frame.msg_id, "upstream numbers from 1 as we do");
            users.insert(id, push.user_id);
        } else {
            let reply = GatewayReply::decode(&frame).unwrap().unwrap();
            let done = tracker
                .handle_reply(1, frame.msg_id, &reply)
                .expect("matched");
            let (user, end) = mpush_fleet::gateway::result::parse_outcome(reply.data()).unwrap();
            assert_eq!((user, end.as_str()), (done.tag.clone(), "success-end"));
            assert_eq!(users[&done.id], done.tag);
            answered.push(done.id.0);
        }
    }
    assert_eq!(answered, [1, 5, 4, 2, 3]);
    assert_eq!(tracker.in_flight(), 0);
}

fn key(v: &Value, name: &str) -> [u8; 16] {
    k16(&v[name])
}

fn k16(v: &Value) -> [u8; 16] {
    unhex(v).try_into().expect("16 bytes")
}
