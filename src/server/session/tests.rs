//! Scenarios over one [`ServerSession`] with no sockets: a scripted client builds frames, the
//! test reads what the session transmits and the effects it asks for.

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;
use crate::crypto::{mix_keys, session_id_md5_hex, RsaEncryptor};
use crate::proto::message::{
    Bind, FastConnect, Handshake, HttpRequest, Message, OkReply, ServerMessage, Unbind, UserBinding,
};
use crate::proto::{encode_frame, open_body, FrameDecoder, Unit};
use crate::tickets::format::ReusableSession;

const WALL: i64 = 1_764_115_200_123;
const KEY: [u8; 16] = [7; 16];
const IV: [u8; 16] = [9; 16];

fn config(quirk: bool) -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        rsa: RsaDecryptor::mpush_default(),
        min_heartbeat_ms: 30_000,
        max_heartbeat_ms: 180_000,
        session_expire_secs: 86_400,
        limits: BodyLimits::default(),
        sessionid_quirk: quirk,
        http_proxy: Some(Arc::new(
            crate::server::http_proxy::HttpProxyConfig::default(),
        )),
        pre_handshake_heartbeat_ms: PRE_HANDSHAKE_HEARTBEAT_MS,
    })
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

fn handshake(device: &str) -> Handshake {
    Handshake {
        device_id: device.into(),
        os_name: "Android".into(),
        os_version: "14".into(),
        client_version: "1.0.0".into(),
        iv: IV,
        client_key: KEY,
        min_heartbeat: 0,
        max_heartbeat: 60_000,
        timestamp: WALL,
    }
}

fn body<M: Message>(msg: &M) -> Bytes {
    let mut b = BytesMut::new();
    msg.encode_body(&mut b);
    b.freeze()
}

fn frame(cmd: Cmd, flags: Flags, id: i32, body: Bytes) -> Frame {
    Frame {
        cmd: cmd as u8,
        flags,
        msg_id: MsgId(id),
        body,
    }
}

fn rsa_handshake_frame(hs: &Handshake, id: i32) -> Frame {
    let ct = RsaEncryptor::mpush_default().encrypt(&mut rng(), &body(hs));
    frame(Cmd::Handshake, Flags::CRYPTO, id, Bytes::from(ct))
}

fn aes_frame<M: Message>(msg: &M, id: i32, cipher: &AesCipher) -> Frame {
    let mut out = BytesMut::new();
    Encoder::default().write(&mut out, msg, MsgId(id), Flags::NONE, Some(cipher));
    match FrameDecoder::default().decode(&mut out) {
        Ok(Some(Unit::Frame(f))) => f,
        other => panic!("not a frame: {other:?}"),
    }
}

/// Everything the session transmitted, decoded as units.
fn sent(s: &mut ServerSession) -> Vec<Unit> {
    let mut out = BytesMut::new();
    let _ = s.poll_transmit(&mut out);
    let mut units = Vec::new();
    while let Some(u) = FrameDecoder::new(1 << 20)
        .decode(&mut out)
        .expect("server output decodes")
    {
        units.push(u);
    }
    assert!(out.is_empty());
    units
}

fn one_frame(s: &mut ServerSession) -> Frame {
    match sent(s).as_slice() {
        [Unit::Frame(f)] => f.clone(),
        other => panic!("expected one frame, got {other:?}"),
    }
}

fn decode(f: &Frame, cipher: Option<&AesCipher>) -> ServerMessage {
    let body = open_body(f, cipher, 1 << 20).expect("opens");
    ServerMessage::decode(f.cmd, body).expect("decodes")
}

fn effects(s: &mut ServerSession) -> Vec<Effect> {
    std::iter::from_fn(|| s.poll_effect()).collect()
}

fn expect_error(s: &mut ServerSession, cmd: Cmd, code: u8, reason: &str) {
    let f = one_frame(s);
    assert_eq!(f.flags, Flags::NONE, "ERROR is always raw");
    match decode(&f, None) {
        ServerMessage::Error(e) => {
            assert_eq!(
                (e.cmd, e.code.0, e.reason.as_str()),
                (cmd as u8, code, reason)
            );
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
}

fn closed_with(effects: &[Effect]) -> Option<CloseReason> {
    effects.iter().find_map(|e| match e {
        Effect::Close(r) => Some(*r),
        _ => None,
    })
}

/// Handshakes `device` and returns the session cipher the client would derive.
fn online(s: &mut ServerSession, device: &str) -> AesCipher {
    s.handle_frame(
        Tick(1),
        WALL,
        &mut rng(),
        rsa_handshake_frame(&handshake(device), 1),
    );
    let f = one_frame(s);
    assert_eq!(f.msg_id, MsgId(1));
    assert!(f.flags.contains(Flags::CRYPTO));
    let ServerMessage::HandshakeOk(ok) = decode(&f, Some(&AesCipher::new(KEY, IV))) else {
        panic!("not HandshakeOk");
    };
    let _ = effects(s);
    AesCipher::new(mix_keys(&KEY, &ok.server_key), IV)
}

#[test]
fn handshake_with_the_default_key() {
    let mut s = ServerSession::new(config(false), Tick(0));
    s.handle_frame(
        Tick(5),
        WALL,
        &mut rng(),
        rsa_handshake_frame(&handshake("dev-1"), 1),
    );
    let f = one_frame(&mut s);
    let ServerMessage::HandshakeOk(ok) = decode(&f, Some(&AesCipher::new(KEY, IV))) else {
        panic!("not HandshakeOk");
    };
    assert_eq!(ok.heartbeat, 60_000, "max(30s, min(60s, 180s))");
    assert_eq!(ok.session_id, session_id_md5_hex(&format!("dev-1{WALL}")));
    assert_eq!(ok.expire_time, WALL + 86_400_000);
    assert_eq!(s.heartbeat_ms(), 60_000);
    assert_eq!(s.device_id(), Some("dev-1"));
    let effs = effects(&mut s);
    let stored = effs.iter().find_map(|e| match e {
        Effect::StoreSession {
            session_id,
            session,
            ttl_secs,
        } => Some((session_id, session, ttl_secs)),
        _ => None,
    });
    let (id, session, ttl) = stored.expect("session stored");
    assert_eq!((id, *ttl), (&ok.session_id, 86_400));
    assert_eq!(session.device_id, "dev-1");
    assert_eq!(session.os_name, "Android");
    assert_eq!(
        session.cipher,
        AesCipher::new(mix_keys(&KEY, &ok.server_key), IV)
    );
    assert!(effs
        .iter()
        .any(|e| matches!(e, Effect::Event(SessionEvent::Handshake))));
}

#[test]
fn sessionid_quirk_hashes_null() {
    let mut s = ServerSession::new(config(true), Tick(0));
    s.handle_frame(
        Tick(5),
        WALL,
        &mut rng(),
        rsa_handshake_frame(&handshake("dev-1"), 1),
    );
    let f = one_frame(&mut s);
    let ServerMessage::HandshakeOk(ok) = decode(&f, Some(&AesCipher::new(KEY, IV))) else {
        panic!("not HandshakeOk");
    };
    assert_eq!(ok.session_id, session_id_md5_hex(&format!("null{WALL}")));
}

#[test]
fn handshake_param_checks() {
    let mut s = ServerSession::new(config(false), Tick(0));
    s.handle_frame(
        Tick(1),
        WALL,
        &mut rng(),
        rsa_handshake_frame(&handshake(""), 3),
    );
    expect_error(&mut s, Cmd::Handshake, 0, "Param invalid");
    assert_eq!(
        closed_with(&effects(&mut s)),
        Some(CloseReason::ParamInvalid)
    );
    assert!(s.is_closed());

    // A 15-byte client key: decoded as WrongFieldSize, answered the same way.
    let mut s = ServerSession::new(config(false), Tick(0));
    let mut b = BytesMut::from(&body(&handshake("dev"))[..]);
    let key_len_at = b.len() - 8 - 4 - 4 - 16 - 2;
    b[key_len_at + 1] = 15;
    b.truncate(key_len_at + 2 + 15);
    let ct = RsaEncryptor::mpush_default().encrypt(&mut rng(), &b);
    s.handle_frame(
        Tick(1),
        WALL,
        &mut rng(),
        frame(Cmd::Handshake, Flags::CRYPTO, 1, ct.into()),
    );
    expect_error(&mut s, Cmd::Handshake, 0, "Param invalid");
}

#[test]
fn repeated_handshake_is_error_102_without_close() {
    let mut s = ServerSession::new(config(false), Tick(0));
    let cipher = online(&mut s, "dev-1");
    // The client's second handshake goes out with its current cipher, the session key.
    s.handle_frame(
        Tick(2),
        WALL,
        &mut rng(),
        aes_frame(&handshake("dev-1"), 2, &cipher),
    );
    expect_error(&mut s, Cmd::Handshake, 102, "repeat handshake");
    assert_eq!(closed_with(&effects(&mut s)), None);
}

#[test]
fn garbled_rsa_body_is_error_100_and_close() {
    let mut s = ServerSession::new(config(false), Tick(0));
    let f = frame(
        Cmd::Handshake,
        Flags::CRYPTO,
        1,
        Bytes::from(vec![0x42; 128]),
    );
    s.handle_frame(Tick(1), WALL, &mut rng(), f);
    expect_error(&mut s, Cmd::Handshake, 100, "handle message error");
    assert_eq!(closed_with(&effects(&mut s)), Some(CloseReason::Garbled));
}

#[test]
fn bind_unbind_and_rebind() {
    let mut s = ServerSession::new(config(false), Tick(0));
    let cipher = online(&mut s, "dev-1");
    let bind = |u: &str| {
        Bind(UserBinding {
            user_id: u.into(),
            ..Default::default()
        })
    };
    s.handle_frame(
        Tick(2),
        WALL,
        &mut rng(),
        aes_frame(&bind("alice"), 2, &cipher),
    );
    let ok = one_frame(&mut s);
    assert_eq!(ok.msg_id, MsgId(2));
    assert_eq!(
        decode(&ok, None),
        ServerMessage::Ok(OkReply {
            cmd: 5,
            code: 0,
            data: "bind success".into()
        })
    );
    let effs = effects(&mut s);
    assert!(effs.iter().any(
        |e| matches!(e, Effect::RegisterRoute { user_id, client_type, .. }
        if user_id == "alice" && *client_type == ClientType(1))
    ));
    assert_eq!(s.user_id(), Some("alice"));

    // Another user on the same connection: unbind first (its own OK), then bind.
    s.handle_frame(
        Tick(3),
        WALL,
        &mut rng(),
        aes_frame(&bind("bob"), 3, &cipher),
    );
    let units = sent(&mut s);
    assert_eq!(units.len(), 2);
    let effs = effects(&mut s);
    assert!(matches!(&effs[0], Effect::UnregisterRoute { user_id, .. } if user_id == "alice"));
    assert_eq!(s.user_id(), Some("bob"));

    let unbind = Unbind(UserBinding {
        user_id: "bob".into(),
        ..Default::default()
    });
    s.handle_frame(Tick(4), WALL, &mut rng(), aes_frame(&unbind, 4, &cipher));
    assert_eq!(
        decode(&one_frame(&mut s), None),
        ServerMessage::Ok(OkReply {
            cmd: 6,
            code: 0,
            data: "unbind success".into()
        })
    );
    assert_eq!(s.user_id(), None);
}

#[test]
fn bind_checks() {
    let mut s = ServerSession::new(config(false), Tick(0));
    let bind = Bind(UserBinding {
        user_id: "alice".into(),
        ..Default::default()
    });
    s.handle_frame(
        Tick(1),
        WALL,
        &mut rng(),
        frame(Cmd::Bind, Flags::NONE, 1, body(&bind)),
    );
    expect_error(&mut s, Cmd::Bind, 0, "not handshake");
    assert_eq!(
        closed_with(&effects(&mut s)),
        Some(CloseReason::NotHandshake)
    );

    let mut s = ServerSession::new(config(false), Tick(0));
    let cipher = online(&mut s, "dev-1");
    s.handle_frame(
        Tick(2),
        WALL,
        &mut rng(),
        aes_frame(&Bind(UserBinding::default()), 2, &cipher),
    );
    expect_error(&mut s, Cmd::Bind, 0, "invalid param");
    assert_eq!(
        closed_with(&effects(&mut s)),
        Some(CloseReason::InvalidBindParam)
    );
}

fn fast_connect(session_id: &str, device: &str) -> Frame {
    let fc = FastConnect {
        session_id: session_id.into(),
        device_id: device.into(),
        min_heartbeat: 0,
        max_heartbeat: 1_000_000,
    };
    frame(Cmd::FastConnect, Flags::NONE, 1, body(&fc))
}

#[test]
fn fast_connect_outcomes() {
    let stored = ReusableSession {
        os_name: "ios".into(),
        os_version: "17".into(),
        client_version: "2.0".into(),
        device_id: "dev-1".into(),
        cipher: AesCipher::new([3; 16], [4; 16]),
    };
    let mut s = ServerSession::new(config(false), Tick(0));
    s.handle_frame(Tick(1), WALL, &mut rng(), fast_connect("sid", "dev-1"));
    let effs = effects(&mut s);
    assert!(matches!(&effs[..], [Effect::LoadSession { session_id }] if session_id == "sid"));
    s.handle_session_loaded(SessionLookup::Missing);
    expect_error(&mut s, Cmd::FastConnect, 103, "session expired");
    assert_eq!(closed_with(&effects(&mut s)), None);

    s.handle_frame(Tick(2), WALL, &mut rng(), fast_connect("sid", "dev-2"));
    let _ = effects(&mut s);
    s.handle_session_loaded(SessionLookup::Found(stored.clone()));
    expect_error(&mut s, Cmd::FastConnect, 104, "invalid device");

    s.handle_frame(Tick(3), WALL, &mut rng(), fast_connect("sid", "dev-1"));
    let _ = effects(&mut s);
    s.handle_session_loaded(SessionLookup::Found(stored.clone()));
    let ok = one_frame(&mut s);
    assert_eq!(ok.flags, Flags::NONE, "FastConnectOk is raw");
    assert_eq!(
        decode(&ok, None),
        ServerMessage::FastConnectOk(FastConnectOk { heartbeat: 180_000 })
    );
    assert_eq!(s.heartbeat_ms(), 180_000);
    // The stored cipher is now the connection's.
    let bind = Bind(UserBinding {
        user_id: "alice".into(),
        ..Default::default()
    });
    s.handle_frame(
        Tick(4),
        WALL,
        &mut rng(),
        aes_frame(&bind, 5, &stored.cipher),
    );
    let effs = effects(&mut s);
    assert!(effs
        .iter()
        .any(|e| matches!(e, Effect::RegisterRoute { client_type, .. }
        if *client_type == ClientType(1))));
}

#[test]
fn heartbeat_echo_and_its_fault() {
    let mut s = ServerSession::new(config(false), Tick(0));
    s.handle_heartbeat(Tick(1));
    s.handle_frame(
        Tick(1),
        WALL,
        &mut rng(),
        frame(Cmd::Heartbeat, Flags::NONE, 0, Bytes::new()),
    );
    assert_eq!(sent(&mut s), vec![Unit::Heartbeat, Unit::Heartbeat]);
    s.set_echo_heartbeats(false);
    s.handle_heartbeat(Tick(2));
    assert!(sent(&mut s).is_empty());
    let beats = effects(&mut s)
        .iter()
        .filter(|e| matches!(e, Effect::Event(SessionEvent::Heartbeat)))
        .count();
    assert_eq!(beats, 3);
}

#[test]
fn idle_connection_closes_on_the_third_idle_check() {
    let mut s = ServerSession::new(config(false), Tick(0));
    let _ = online(&mut s, "dev-1"); // heartbeat 60 s from now on
    let hb = 60_000;
    // The first check is still on the pre-handshake 10 s period.
    assert_eq!(s.poll_timeout(), Some(Tick(10_000)));
    s.handle_timeout(Tick(9_999));
    assert_eq!(
        s.poll_timeout(),
        Some(Tick(10_000)),
        "early call is a no-op"
    );
    s.handle_timeout(Tick(10_000)); // read 9.999 s ago: not idle
    let t1 = 10_000 + hb;
    assert_eq!(s.poll_timeout(), Some(Tick(t1)));
    s.handle_timeout(Tick(t1)); // idle 1
    s.handle_timeout(Tick(t1 + hb)); // idle 2
    s.handle_heartbeat(Tick(t1 + hb + 1)); // a read resets the count at the next check
    s.handle_timeout(Tick(t1 + 2 * hb));
    s.handle_timeout(Tick(t1 + 3 * hb)); // idle 1
    s.handle_timeout(Tick(t1 + 4 * hb)); // idle 2
    assert!(!s.is_closed());
    s.handle_timeout(Tick(t1 + 5 * hb)); // idle 3 > 2
    assert!(s.is_closed());
    assert_eq!(
        closed_with(&effects(&mut s)),
        Some(CloseReason::IdleTimeout)
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn push_kick_ack_and_garbage() {
    let mut s = ServerSession::new(config(false), Tick(0));
    assert!(
        !s.handle_push(MsgId(9), Bytes::from_static(b"x"), Flags::AUTO_ACK),
        "offline"
    );
    let cipher = online(&mut s, "dev-1");
    assert!(s.handle_push(MsgId(9), Bytes::from_static(b"hello"), Flags::BIZ_ACK));
    let f = one_frame(&mut s);
    assert_eq!(
        (f.msg_id, f.flags),
        (MsgId(9), Flags::BIZ_ACK.with(Flags::CRYPTO))
    );
    assert_eq!(
        decode(&f, Some(&cipher)),
        ServerMessage::Push(Push {
            content: Bytes::from_static(b"hello")
        })
    );

    assert!(s.handle_kick(MsgId(10), "alice"));
    let f = one_frame(&mut s);
    let kick = Kick {
        device_id: "dev-1".into(),
        user_id: "alice".into(),
    };
    assert_eq!(decode(&f, Some(&cipher)), ServerMessage::Kick(kick));

    s.handle_frame(
        Tick(3),
        WALL,
        &mut rng(),
        frame(Cmd::Ack, Flags::NONE, 9, Bytes::new()),
    );
    let effs = effects(&mut s);
    assert!(effs.iter().any(|e| matches!(e, Effect::Acked(MsgId(9)))));

    s.handle_garbage();
    let f = one_frame(&mut s);
    assert!(
        open_body(&f, Some(&cipher), 1024).is_err(),
        "garbage must not decrypt"
    );
}

#[test]
fn unsupported_command_is_error_101_and_close() {
    let mut s = ServerSession::new(config(false), Tick(0));
    s.handle_frame(
        Tick(1),
        WALL,
        &mut rng(),
        frame(Cmd::Login, Flags::NONE, 4, Bytes::new()),
    );
    expect_error(&mut s, Cmd::Login, 101, "unsupported command");
    assert_eq!(
        closed_with(&effects(&mut s)),
        Some(CloseReason::UnsupportedCmd)
    );
    // A closed session ignores input.
    s.handle_heartbeat(Tick(2));
    assert!(sent(&mut s).is_empty());
}

#[test]
fn http_proxy_becomes_an_effect_and_its_answer_goes_back() {
    let mut s = ServerSession::new(config(false), Tick(0));
    let cipher = online(&mut s, "dev-1");
    let req = HttpRequest {
        method: crate::proto::message::HttpMethod::GET,
        uri: "http://example.invalid/".into(),
        headers: String::new(),
        body: Bytes::new(),
    };
    s.handle_frame(Tick(2), WALL, &mut rng(), aes_frame(&req, 6, &cipher));
    assert!(
        sent(&mut s).is_empty(),
        "nothing is answered before the backend"
    );
    let mut effects = std::iter::from_fn(|| s.poll_effect());
    assert!(effects.any(
        |e| matches!(e, Effect::HttpProxy { msg_id: MsgId(6), ref request } if *request == req)
    ));
    // A backend's answer goes with the session cipher; the proxy's own failures raw.
    let answer = |status_code| HttpResponse {
        status_code,
        reason_phrase: "x".into(),
        headers: String::new(),
        body: Bytes::from_static(b"body"),
    };
    s.handle_http_response(MsgId(6), answer(200), false);
    let f = one_frame(&mut s);
    assert!(f.flags.contains(Flags::CRYPTO));
    let ServerMessage::HttpResponse(r) = decode(&f, Some(&cipher)) else {
        panic!("not a response")
    };
    assert_eq!((r.status_code, r.body.as_ref()), (200, b"body".as_slice()));
    s.handle_http_response(MsgId(6), answer(504), true);
    let f = one_frame(&mut s);
    assert_eq!(f.flags, Flags::NONE);
    let ServerMessage::HttpResponse(r) = decode(&f, None) else {
        panic!("not a response")
    };
    assert_eq!(r.status_code, 504);
}

#[test]
fn http_proxy_with_an_empty_uri_answers_400_then_502() {
    let mut s = ServerSession::new(config(false), Tick(0));
    let cipher = online(&mut s, "dev-1");
    let req = HttpRequest {
        method: crate::proto::message::HttpMethod::GET,
        uri: String::new(),
        headers: String::new(),
        body: Bytes::new(),
    };
    s.handle_frame(Tick(2), WALL, &mut rng(), aes_frame(&req, 7, &cipher));
    let mut out = BytesMut::new();
    assert!(s.poll_transmit(&mut out));
    let dec = FrameDecoder::default();
    let mut codes = Vec::new();
    while let Some(Unit::Frame(f)) = dec.decode(&mut out).unwrap() {
        assert_eq!((f.flags, f.msg_id), (Flags::NONE, MsgId(7)));
        let ServerMessage::HttpResponse(r) = decode(&f, None) else {
            panic!("not a response")
        };
        codes.push(r.status_code);
    }
    assert_eq!(codes, [400, 502]);
}

#[test]
fn client_push_with_auto_ack_is_acked() {
    let mut s = ServerSession::new(config(false), Tick(0));
    let _ = online(&mut s, "dev-1");
    let mut out = BytesMut::new();
    encode_frame(&mut out, Cmd::Push, Flags::AUTO_ACK, MsgId(12), b"up");
    let Some(Unit::Frame(f)) = FrameDecoder::default().decode(&mut out).unwrap() else {
        panic!()
    };
    s.handle_frame(Tick(2), WALL, &mut rng(), f);
    let ack = one_frame(&mut s);
    assert_eq!(
        (ack.cmd, ack.msg_id, ack.body.len()),
        (Cmd::Ack as u8, MsgId(12), 0)
    );
}

#[test]
fn heartbeat_choice_and_client_types() {
    let cfg = config(false);
    assert_eq!(cfg.heartbeat_for(10_000), 30_000);
    assert_eq!(cfg.heartbeat_for(100_000), 100_000);
    assert_eq!(cfg.heartbeat_for(i32::MAX), 180_000);
    assert_eq!(ClientType::from_os_name("Android"), ClientType(1));
    assert_eq!(ClientType::from_os_name("iOS"), ClientType(1));
    assert_eq!(ClientType::from_os_name("Windows 11"), ClientType(2));
    assert_eq!(ClientType::from_os_name("h5"), ClientType(3));
    assert_eq!(ClientType::from_os_name("toaster"), ClientType(-1));
}
