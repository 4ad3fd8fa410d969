//! The core driven by hand: what it asks of its driver, and what it does with stale or
//! misordered completions. Whole scenarios against a server live in `crate::sim`.

use std::sync::Arc;

use bytes::BytesMut;

use super::*;
use crate::device::DeviceConfig;

fn core(devices: u32) -> ShardCore {
    let cfg = CoreConfig {
        first_device: 100,
        devices,
        rate_per_sec: 0.0,
        servers: vec!["127.0.0.1:3000".parse().unwrap()],
        sources: Vec::new(),
        device: Arc::new(DeviceConfig::default()),
        seed: 1,
        sink: false,
        drain_timeout_ms: 1_000,
        admission: Default::default(),
        plan: Default::default(),
        upstream: Default::default(),
    };
    ShardCore::new(cfg, at(0))
}

fn at(ms: u64) -> Now {
    Now::at_ms(ms, 1_700_000_000_000)
}

fn ios(core: &mut ShardCore) -> Vec<Io> {
    std::iter::from_fn(|| core.poll_io()).collect()
}

/// Starts the devices and answers their lookups with "no ticket": returns their connects.
fn connecting(core: &mut ShardCore) -> Vec<ConnId> {
    core.handle_timeout(at(0));
    let loads: Vec<u32> = std::iter::from_fn(|| core.poll_ticket())
        .map(|op| match op {
            TicketOp::Load(d) => d,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    for d in loads {
        core.handle_ticket(at(1), d, None);
    }
    ios(core)
        .into_iter()
        .map(|io| match io {
            Io::Connect { conn, .. } => conn,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn ticket_requests_name_global_device_indices() {
    let mut c = core(3);
    c.handle_timeout(at(0));
    let ops: Vec<_> = std::iter::from_fn(|| c.poll_ticket()).collect();
    assert_eq!(
        ops,
        vec![
            TicketOp::Load(100),
            TicketOp::Load(101),
            TicketOp::Load(102)
        ]
    );
}

#[test]
fn a_connect_answers_with_the_handshake_and_stale_completions_are_ignored() {
    let mut c = core(1);
    let conns = connecting(&mut c);
    assert_eq!(conns.len(), 1);
    let conn = conns[0];
    c.handle_connected(at(2), conn);
    let out = ios(&mut c);
    assert!(
        matches!(&out[..], [Io::Write { conn: w, data }] if *w == conn && data.len() > 13),
        "{out:?}"
    );
    // A completion for an older generation of the slot is nobody's.
    let stale = ConnId {
        slot: conn.slot,
        gen: conn.gen.wrapping_sub(1),
    };
    c.handle_closed(at(3), stale);
    let mut junk = BytesMut::from(&b"\xde\xad"[..]);
    assert_eq!(c.handle_read(at(3), stale, &mut junk), IDLE_READ);
    assert!(ios(&mut c).is_empty());
    assert_eq!(c.stats().counters.peer_closed, 0);
}

#[test]
fn a_partial_frame_is_kept_and_the_next_read_asks_for_the_rest() {
    let mut c = core(1);
    let conn = connecting(&mut c)[0];
    c.handle_connected(at(2), conn);
    let _ = ios(&mut c);
    // A header announcing a 1,000-byte body, and 10 bytes of it.
    let mut head = BytesMut::new();
    head.extend_from_slice(&1_000i32.to_be_bytes());
    head.extend_from_slice(&[Cmd::Push as u8, 0, 0, 0, 0, 0, 0, 0, 1]);
    head.extend_from_slice(&[0u8; 10]);
    let want = c.handle_read(at(3), conn, &mut head);
    assert_eq!(want, 990);
    assert!(head.is_empty(), "the driver gets its buffer back empty");
}

#[test]
fn a_connect_that_completes_after_a_stop_is_shut_down() {
    let mut c = core(1);
    let conn = connecting(&mut c)[0];
    c.handle_stop(at(2));
    c.handle_timeout(at(2));
    let _ = ios(&mut c);
    c.handle_connected(at(3), conn);
    assert_eq!(ios(&mut c), vec![Io::Shutdown(conn)]);
    // Nothing was received and nothing is in flight: the next turn ends the stop.
    c.handle_timeout(at(4));
    assert!(c.is_finished());
}

#[test]
fn a_failed_write_loses_the_connection() {
    let mut c = core(1);
    let conn = connecting(&mut c)[0];
    c.handle_connected(at(2), conn);
    assert_eq!(ios(&mut c).len(), 1);
    c.handle_write_done(at(3), conn, false);
    assert_eq!(ios(&mut c), vec![Io::Shutdown(conn)]);
    assert_eq!(c.stats().counters.peer_closed, 1);
}

use crate::proto::Cmd;
