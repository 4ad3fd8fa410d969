//! Pushes received: acked by their flag (auto at once, biz once the sink took them), a
//! push that cannot be opened, pushes in the same read as the handshake's answer.

use super::*;

#[test]
fn auto_ack_pushes_are_acked_at_once_and_biz_ack_only_after_the_sink_took_them() {
    let mut s = Script::new();
    s.online();
    let content = Bytes::from_static(b"{\"hello\":1}");
    let push = Push {
        content: content.clone(),
    };
    s.server_sends(&push, 77, Flags::AUTO_ACK, true);
    let ack = s.sent_frame();
    assert_eq!(
        (ack.cmd, ack.msg_id, ack.body.len()),
        (Cmd::Ack as u8, MsgId(77), 0)
    );
    let effects = s.effects();
    let [Effect::Deliver(d)] = &effects[..] else {
        panic!("{effects:?}")
    };
    assert_eq!((d.content.clone(), d.ack_on_take), (content.clone(), false));

    s.server_sends(&push, 78, Flags::BIZ_ACK, true);
    assert!(s.sent().is_empty(), "no ack before the sink took it");
    let effects = s.effects();
    let [Effect::Deliver(d)] = &effects[..] else {
        panic!("{effects:?}")
    };
    assert!(d.ack_on_take);
    s.event(Event::SinkTook(MsgId(78)));
    let ack = s.sent_frame();
    assert_eq!((ack.cmd, ack.msg_id), (Cmd::Ack as u8, MsgId(78)));
    let c = &s.sh.stats.counters;
    assert_eq!((c.pushes_received, c.acks_sent), (2, 2));
}

#[test]
fn compress_on_raw_content_loses_the_push_not_the_session() {
    // The real server copies a gateway push's COMPRESS flag onto content it never deflated
    // (PROTOCOL.md 8.3): the frame is whole and decrypts, only its content fails to inflate.
    let mut s = Script::new();
    s.online();
    let push = Push {
        content: Bytes::from_static(b"{\"content\":\"probe 21\"}"),
    };
    let broken = s.server_frame(&push, 1024, Flags::COMPRESS.with(Flags::AUTO_ACK), true);
    assert_eq!(
        broken.flags,
        Flags(0x0B),
        "CRYPTO|COMPRESS|AUTO_ACK, as live"
    );
    s.frame_in(broken);
    assert!(s.sent().is_empty(), "not acked");
    assert_eq!(s.effects(), vec![], "handed to no sink, no close");
    let c = &s.sh.stats.counters;
    assert_eq!((c.push_decode_errors, c.decode_errors), (1, 0));
    assert_eq!((c.pushes_received, c.reconnects), (0, 0));
    assert_eq!(s.device.phase(), Phase::Online);
    // The session carries on: the next push is delivered and acked.
    s.server_sends(&push, 1025, Flags::AUTO_ACK, true);
    assert_eq!(s.sent_frame().msg_id, MsgId(1025));
    assert!(matches!(&s.effects()[..], [Effect::Deliver(_)]));
}

#[test]
fn a_push_behind_the_handshake_ok_in_one_read_opens_with_the_session_key() {
    // Replaces the old batch-generation test: the device decrypts every frame itself, with
    // the cipher its state holds when the frame is handled.
    let mut s = Script::new();
    s.connect(None);
    let frame = s.sent_frame();
    let hs = Handshake::decode_body(Bytes::from(s.rsa.decrypt(&frame.body).unwrap())).unwrap();
    s.server_cipher = Some(AesCipher::new(hs.client_key, hs.iv));
    let ok = HandshakeOk {
        server_key: [0x11; 16],
        heartbeat: 10_000,
        session_id: "s".into(),
        expire_time: 1_800_000_000_000,
    };
    let ok = s.server_frame(&ok, 1, Flags::NONE, true);
    s.server_cipher = Some(AesCipher::new(mix_keys(&hs.client_key, &[0x11; 16]), hs.iv));
    let push = Push {
        content: Bytes::from_static(b"p"),
    };
    let push = s.server_frame(&push, 5, Flags::NONE, true);
    s.frame_in(ok);
    s.frame_in(push);
    let effects = s.effects();
    let [Effect::SaveTicket(_), Effect::Deliver(d)] = &effects[..] else {
        panic!("{effects:?}")
    };
    assert_eq!(&d.content[..], b"p");
}

#[test]
fn delivered_contents_stay_intact_while_later_pushes_are_decrypted() {
    // Bodies are decrypted into a buffer shared by the shard's devices: a content the sink
    // still holds must not be overwritten by the next push.
    let mut s = Script::new();
    s.online();
    let mut held = Vec::new();
    let mut wire_refs = Vec::new();
    for i in 0..300u32 {
        let content = Bytes::from(format!("push number {i} {}", "x".repeat(i as usize % 50)));
        let push = Push {
            content: content.clone(),
        };
        let frame = s.server_frame(&push, i as i32, Flags::NONE, true);
        // Every other body stays shared (as with a read buffer still in use), so both the
        // in-place path and the arena path are exercised.
        if i % 2 == 0 {
            wire_refs.push(frame.body.clone());
        }
        s.frame_in(frame);
        let Some(Effect::Deliver(d)) = s.effects().pop() else {
            panic!()
        };
        held.push((content, d.content));
    }
    for (want, got) in &held {
        assert_eq!(want, got);
    }
}
