//! Round trips of every message (proptest), truncation and trailing bytes.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::crypto::AesCipher;
use crate::proto::pipeline::{open_body, Encoder};
use crate::proto::{Flags, FrameDecoder, MsgId, Unit};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9 ,:=\\-_.\u{4e16}]{0,40}",
        1 => proptest::collection::vec(any::<char>(), 0..20).prop_map(String::from_iter),
        1 => (32_760usize..32_780).prop_map(|n| "z".repeat(n)),
    ]
}

fn blob() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => proptest::collection::vec(any::<u8>(), 32_760..32_780),
    ]
    .prop_map(Bytes::from)
}

fn binding() -> impl Strategy<Value = UserBinding> {
    (text(), text(), text()).prop_map(|(user_id, data, tags)| UserBinding {
        user_id,
        data,
        tags,
    })
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (
            text(),
            text(),
            text(),
            text(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<i32>(),
            any::<i32>(),
            any::<i64>()
        )
            .prop_map(
                |(d, o, ov, cv, iv, ck, min, max, ts)| ClientMessage::Handshake(Handshake {
                    device_id: d,
                    os_name: o,
                    os_version: ov,
                    client_version: cv,
                    iv,
                    client_key: ck,
                    min_heartbeat: min,
                    max_heartbeat: max,
                    timestamp: ts,
                })
            ),
        (text(), text(), any::<i32>(), any::<i32>()).prop_map(|(s, d, min, max)| {
            ClientMessage::FastConnect(FastConnect {
                session_id: s,
                device_id: d,
                min_heartbeat: min,
                max_heartbeat: max,
            })
        }),
        binding().prop_map(|b| ClientMessage::Bind(Bind(b))),
        binding().prop_map(|b| ClientMessage::Unbind(Unbind(b))),
        blob().prop_map(|content| ClientMessage::Push(Push { content })),
        Just(ClientMessage::Ack(Ack)),
        (any::<u8>(), text(), text(), blob()).prop_map(|(m, uri, headers, body)| {
            ClientMessage::HttpRequest(HttpRequest {
                method: HttpMethod(m),
                uri,
                headers,
                body,
            })
        }),
    ]
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (any::<[u8; 16]>(), any::<i32>(), text(), any::<i64>()).prop_map(|(k, hb, s, exp)| {
            ServerMessage::HandshakeOk(HandshakeOk {
                server_key: k,
                heartbeat: hb,
                session_id: s,
                expire_time: exp,
            })
        }),
        any::<i32>()
            .prop_map(|heartbeat| ServerMessage::FastConnectOk(FastConnectOk { heartbeat })),
        (any::<u8>(), any::<u8>(), text())
            .prop_map(|(cmd, code, data)| ServerMessage::Ok(OkReply { cmd, code, data })),
        (any::<u8>(), any::<u8>(), text(), text()).prop_map(|(cmd, code, reason, data)| {
            ServerMessage::Error(ErrorReply {
                cmd,
                code: ErrorCode(code),
                reason,
                data,
            })
        }),
        blob().prop_map(|content| ServerMessage::Push(Push { content })),
        (text(), text())
            .prop_map(|(device_id, user_id)| ServerMessage::Kick(Kick { device_id, user_id })),
        (any::<i32>(), text(), text(), blob()).prop_map(
            |(status_code, reason_phrase, headers, body)| {
                ServerMessage::HttpResponse(HttpResponse {
                    status_code,
                    reason_phrase,
                    headers,
                    body,
                })
            }
        ),
    ]
}

/// Encodes through the full pipeline ("send"), decodes through the frame decoder and the
/// pipeline, and returns the decoded command and body.
fn through_the_wire<M: Message>(
    msg: &M,
    cipher: Option<&AesCipher>,
    threshold: usize,
) -> (u8, Bytes) {
    let mut enc = Encoder::new(threshold);
    let mut wire = BytesMut::new();
    enc.write(&mut wire, msg, MsgId(5), Flags::NONE, cipher);
    let Some(Unit::Frame(frame)) = FrameDecoder::new(1 << 20).decode(&mut wire).unwrap() else {
        panic!("no frame")
    };
    assert!(wire.is_empty());
    let body = open_body(&frame, cipher, 1 << 20).unwrap();
    (frame.cmd, body)
}

fn encode_client(m: &ClientMessage, cipher: Option<&AesCipher>, threshold: usize) -> (u8, Bytes) {
    match m {
        ClientMessage::Handshake(x) => through_the_wire(x, cipher, threshold),
        ClientMessage::FastConnect(x) => through_the_wire(x, cipher, threshold),
        ClientMessage::Bind(x) => through_the_wire(x, cipher, threshold),
        ClientMessage::Unbind(x) => through_the_wire(x, cipher, threshold),
        ClientMessage::Push(x) => through_the_wire(x, cipher, threshold),
        ClientMessage::Ack(x) => through_the_wire(x, cipher, threshold),
        ClientMessage::HttpRequest(x) => through_the_wire(x, cipher, threshold),
        ClientMessage::Heartbeat | ClientMessage::Unsupported(_) => unreachable!("not generated"),
    }
}

fn encode_server(m: &ServerMessage, cipher: Option<&AesCipher>, threshold: usize) -> (u8, Bytes) {
    match m {
        ServerMessage::HandshakeOk(x) => through_the_wire(x, cipher, threshold),
        ServerMessage::FastConnectOk(x) => through_the_wire(x, cipher, threshold),
        ServerMessage::Ok(x) => through_the_wire(x, cipher, threshold),
        ServerMessage::Error(x) => through_the_wire(x, cipher, threshold),
        ServerMessage::Push(x) => through_the_wire(x, cipher, threshold),
        ServerMessage::Kick(x) => through_the_wire(x, cipher, threshold),
        ServerMessage::HttpResponse(x) => through_the_wire(x, cipher, threshold),
        ServerMessage::Heartbeat | ServerMessage::Other(_) => unreachable!("not generated"),
    }
}

fn maybe_cipher() -> impl Strategy<Value = Option<AesCipher>> {
    proptest::option::of(
        (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(k, iv)| AesCipher::new(k, iv)),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn client_messages_round_trip(m in client_message(), c in maybe_cipher(), t in prop_oneof![Just(64usize), Just(10_240)]) {
        let (cmd, body) = encode_client(&m, c.as_ref(), t);
        prop_assert_eq!(ClientMessage::decode(cmd, body).unwrap(), m);
    }

    #[test]
    fn server_messages_round_trip(m in server_message(), c in maybe_cipher(), t in prop_oneof![Just(64usize), Just(10_240)]) {
        let (cmd, body) = encode_server(&m, c.as_ref(), t);
        prop_assert_eq!(ServerMessage::decode(cmd, body).unwrap(), m);
    }

    #[test]
    fn trailing_bytes_are_ignored_as_java_does(m in server_message(), extra in proptest::collection::vec(any::<u8>(), 1..8)) {
        let (cmd, body) = encode_server(&m, None, usize::MAX);
        let mut longer = BytesMut::from(&body[..]);
        longer.extend_from_slice(&extra);
        let decoded = ServerMessage::decode(cmd, longer.freeze()).unwrap();
        if !matches!(m, ServerMessage::Push(_)) {
            prop_assert_eq!(decoded, m);
        }
    }

    #[test]
    fn every_truncation_is_an_error_or_a_shorter_push(m in client_message()) {
        let (cmd, body) = encode_client(&m, None, usize::MAX);
        for cut in 0..body.len() {
            let r = ClientMessage::decode(cmd, body.slice(..cut));
            match &m {
                ClientMessage::Push(_) | ClientMessage::Ack(_) => prop_assert!(r.is_ok()),
                _ => prop_assert!(r.is_err(), "prefix {} of {} decoded", cut, body.len()),
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(cmd in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let body = Bytes::from(body);
        let _ = ClientMessage::decode(cmd, body.clone());
        let _ = ServerMessage::decode(cmd, body);
    }
}

#[test]
fn unknown_commands_are_reported_not_failed() {
    assert_eq!(
        ClientMessage::decode(99, Bytes::new()),
        Ok(ClientMessage::Unsupported(99))
    );
    assert_eq!(
        ClientMessage::decode(4, Bytes::new()),
        Ok(ClientMessage::Unsupported(4))
    );
    assert_eq!(
        ServerMessage::decode(99, Bytes::new()),
        Ok(ServerMessage::Other(99))
    );
}

#[test]
fn handshake_debug_redacts_keys() {
    let h = Handshake {
        device_id: "d".into(),
        os_name: String::new(),
        os_version: String::new(),
        client_version: String::new(),
        iv: [0xAB; 16],
        client_key: [0xCD; 16],
        min_heartbeat: 0,
        max_heartbeat: 0,
        timestamp: 0,
    };
    let text = format!("{h:?}");
    assert!(
        !text.contains("171") && !text.contains("205") && !text.to_lowercase().contains("abab")
    );
    assert!(text.contains("redacted"));
}
