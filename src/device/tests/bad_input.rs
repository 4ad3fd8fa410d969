//! Bad input from the server: garbage and undecodable streams close the connection with a
//! counted error, an error reply closes only when it answers the bind.

use super::*;

#[test]
fn garbage_closes_this_connection_with_a_decode_error() {
    let mut s = Script::new();
    s.online();
    s.frame_in(Frame {
        cmd: Cmd::Push as u8,
        flags: Flags::CRYPTO,
        msg_id: MsgId(1),
        body: Bytes::from_static(&[1; 17]),
    });
    let effects = s.effects();
    assert!(
        matches!(&effects[..], [Effect::Close(CloseReason::Decode(_))]),
        "{effects:?}"
    );
    assert_eq!(s.sh.stats.counters.decode_errors, 1);
    assert_eq!(s.device.phase(), Phase::Backoff);
}

#[test]
fn an_undecodable_stream_gives_the_connection_up() {
    let mut s = Script::new();
    s.handshake(10_000);
    s.effects();
    // A header announcing a body over the limit: the stream cannot be resynchronised.
    let mut wire = BytesMut::from(&[0x7F, 0xFF, 0xFF, 0xFF, 15, 0, 0, 0, 0, 0, 0, 1, 0][..]);
    let err = FrameDecoder::default().decode(&mut wire).unwrap_err();
    let e = err.clone();
    s.input(|d, now, sh| d.handle_stream_error(now, sh, e));
    assert_eq!(s.effects(), vec![Effect::Close(CloseReason::Decode(err))]);
    assert_eq!(
        (s.device.phase(), s.sh.stats.counters.decode_errors),
        (Phase::Backoff, 1)
    );
    // Not connected any more: a second report is stale and changes nothing.
    s.input(|d, now, sh| d.handle_stream_error(now, sh, DecodeError::NegativeLength(-1)));
    assert!(s.effects().is_empty());
}

#[test]
fn a_bind_error_closes_and_an_unrelated_error_is_only_counted() {
    let mut s = Script::new();
    s.handshake(10_000);
    s.effects();
    let bind = s.sent_frame();
    let err = ErrorReply {
        cmd: Cmd::Unbind as u8,
        code: ErrorCode(1),
        reason: String::new(),
        data: String::new(),
    };
    s.server_sends(&err, 9, Flags::NONE, false);
    assert!(s.effects().is_empty());
    let err = ErrorReply {
        cmd: Cmd::Bind as u8,
        ..err
    };
    s.server_sends(&err, bind.msg_id.0, Flags::NONE, false);
    assert_eq!(
        s.effects(),
        vec![Effect::Close(CloseReason::ServerError { cmd: 5, code: 1 })]
    );
}
