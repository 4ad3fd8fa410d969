//! The session cycle's start: a handshake that saves a ticket and binds, a ticket's fast
//! connect (and what happens when it is refused, expired, or its bind fails).

use super::*;

#[test]
fn handshake_saves_a_ticket_then_binds() {
    let mut s = Script::new();
    let ok = s.handshake(10_000);
    let effects = s.effects();
    let [Effect::SaveTicket(ticket)] = &effects[..] else {
        panic!("{effects:?}")
    };
    assert_eq!(ticket.session_id, ok.session_id);
    assert_eq!(ticket.expire_time_ms, ok.expire_time);
    assert_eq!(Some(&ticket.cipher), s.server_cipher.as_ref());
    assert_eq!(s.device.phase(), Phase::Online);
    s.expect_bind_and_ok();
    let c = &s.sh.stats.counters;
    assert_eq!(
        (
            c.handshakes,
            c.bound,
            c.online,
            c.connections,
            c.ever_online
        ),
        (1, 1, 1, 1, 1)
    );
}

fn ticket(expire_time_ms: i64) -> ClientTicket {
    ClientTicket {
        session_id: "resume-me".into(),
        expire_time_ms,
        cipher: AesCipher::new([3; 16], [4; 16]),
    }
}

#[test]
fn a_valid_ticket_fast_connects_and_switches_to_its_cipher() {
    let mut s = Script::new();
    s.connect(Some(ticket(i64::MAX)));
    let frame = s.sent_frame();
    assert_eq!(
        (frame.cmd, frame.flags),
        (Cmd::FastConnect as u8, Flags::NONE)
    );
    let fc = FastConnect::decode_body(frame.body).unwrap();
    assert_eq!(
        (fc.session_id.as_str(), fc.device_id.as_str()),
        ("resume-me", "device-7")
    );
    s.server_sends(
        &FastConnectOk { heartbeat: 10_000 },
        frame.msg_id.0,
        Flags::NONE,
        false,
    );
    assert_eq!(s.device.phase(), Phase::Online);
    s.server_cipher = Some(ticket(0).cipher);
    s.expect_bind_and_ok();
    let c = &s.sh.stats.counters;
    assert_eq!((c.fast_connects, c.handshakes), (1, 0));
}

#[test]
fn a_resumed_session_whose_bind_fails_drops_its_ticket() {
    let mut s = Script::new();
    s.connect(Some(ticket(i64::MAX)));
    let frame = s.sent_frame();
    s.server_sends(
        &FastConnectOk { heartbeat: 10_000 },
        frame.msg_id.0,
        Flags::NONE,
        false,
    );
    let bind = s.sent_frame();
    // The server's stored session has another key: it cannot read the bind.
    let err = ErrorReply {
        cmd: Cmd::Bind as u8,
        code: ErrorCode::DISPATCH_ERROR,
        reason: "handle message error".into(),
        data: String::new(),
    };
    s.server_sends(&err, bind.msg_id.0, Flags::NONE, false);
    assert_eq!(
        s.effects(),
        vec![
            Effect::DeleteTicket,
            Effect::Close(CloseReason::ServerError { cmd: 5, code: 100 })
        ]
    );
}

#[test]
fn an_expired_ticket_is_not_used() {
    let mut s = Script::new();
    s.connect(Some(ticket(1)));
    assert_eq!(s.sent_frame().cmd, Cmd::Handshake as u8);
}

#[test]
fn fast_connect_refused_falls_back_to_a_handshake_on_the_same_connection() {
    for code in [ErrorCode::SESSION_EXPIRED, ErrorCode::INVALID_DEVICE] {
        let mut s = Script::new();
        s.connect(Some(ticket(i64::MAX)));
        let frame = s.sent_frame();
        let err = ErrorReply {
            cmd: Cmd::FastConnect as u8,
            code,
            reason: "no".into(),
            data: String::new(),
        };
        s.server_sends(&err, frame.msg_id.0, Flags::NONE, false);
        assert_eq!(s.effects(), vec![Effect::DeleteTicket]);
        let hs = s.sent_frame();
        assert_eq!((hs.cmd, hs.flags), (Cmd::Handshake as u8, Flags::CRYPTO));
        assert_eq!(s.device.phase(), Phase::ExpectHandshakeOk);
        assert_eq!(s.sh.stats.counters.fast_connect_rejected, 1);
        assert_eq!(s.sh.stats.counters.errors[&code.0], 1);
    }
}
