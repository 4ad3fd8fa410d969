//! Fleet scenarios over the in-memory pair: the device scenarios of `tests/fleet.rs`, in
//! simulated time, plus the shard core's ordering rules. No sockets, no io_uring.

use std::sync::Arc;

use bytes::BytesMut;

use super::*;
use crate::device::{DeviceConfig, Phase};
use crate::proto::message::{ErrorCode, ErrorReply, Kick, Push};
use crate::proto::pipeline::Encoder;
use crate::proto::{Cmd, MsgId};
use crate::stats::Counters;

/// Simulated time any scenario may take at most.
const LIMIT_MS: u64 = 600_000;

fn core_cfg(devices: u32) -> CoreConfig {
    scenario(devices)
}

fn server_cfg(f: impl FnOnce(&mut SessionConfig)) -> Arc<SessionConfig> {
    let mut cfg = SessionConfig::default();
    f(&mut cfg);
    Arc::new(cfg)
}

fn counters(sim: &Sim) -> &Counters {
    &sim.core.stats().counters
}

fn all_bound(sim: &Sim, n: u32) -> bool {
    let c = counters(sim);
    c.online == i64::from(n) && c.connections == i64::from(n) && c.bound >= u64::from(n)
}

fn bring_online(sim: &mut Sim, n: u32, what: &str) {
    assert!(
        sim.run_until(LIMIT_MS, |s| all_bound(s, n)),
        "{what}: not all online and bound: {:?}",
        counters(sim)
    );
}

/// A second run of the same devices, with the tickets and the server of the first.
fn restart(sim: &mut Sim, cfg: CoreConfig) {
    assert!(sim.restart(cfg, LIMIT_MS), "the first run stops");
}

/// The connection of the device in `slot` as the server sees it.
fn conn_of(sim: &Sim, slot: u32) -> ConnId {
    *sim.server_conns()
        .iter()
        .filter(|c| c.slot == slot)
        .max()
        .expect("the device is connected")
}

fn frame<M: crate::proto::Message>(msg: &M, id: i32, flags: Flags) -> BytesMut {
    let mut wire = BytesMut::new();
    Encoder::default().write(&mut wire, msg, MsgId(id), flags, None);
    wire
}

#[test]
fn devices_handshake_and_bind_then_return_by_fast_connect() {
    let n = 300;
    let mut sim = Sim::new(core_cfg(n), SimConfig::default());
    bring_online(&mut sim, n, "first run");
    let s = sim.server().clone();
    assert_eq!((s.handshakes, s.fast_connects, s.binds), (300, 0, 300));
    assert_eq!(counters(&sim).tickets_saved, 300);
    restart(&mut sim, core_cfg(n));
    bring_online(&mut sim, n, "second run");
    let c = counters(&sim);
    assert_eq!((c.fast_connects, c.handshakes), (300, 0), "{c:?}");
    assert_eq!(sim.server().handshakes, 300, "no new RSA handshake");
}

#[test]
fn expired_sessions_fall_back_to_handshakes_on_the_same_connection() {
    let n = 100;
    let mut sim = Sim::new(core_cfg(n), SimConfig::default());
    bring_online(&mut sim, n, "first run");
    sim.expire_sessions();
    restart(&mut sim, core_cfg(n));
    bring_online(&mut sim, n, "after expiry");
    let c = counters(&sim);
    assert_eq!(c.errors.get(&103), Some(&100), "{c:?}");
    assert_eq!((c.handshakes, c.fast_connect_rejected), (100, 100));
    assert_eq!(
        c.connects,
        100,
        "the handshake reused the connection: {c:?} {:?}",
        sim.server()
    );
}

#[test]
fn sessionid_quirk_collisions_are_taken_in_stride() {
    // Every device handshakes in the same simulated millisecond, so the quirk gives many the
    // same session id: fast connects with the wrong device get 104 and handshake again.
    let n = 50;
    let quirk = server_cfg(|c| c.sessionid_quirk = true);
    let cfg = SimConfig {
        server: quirk,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(core_cfg(n), cfg);
    bring_online(&mut sim, n, "first run");
    restart(&mut sim, core_cfg(n));
    bring_online(&mut sim, n, "after collisions");
    let c = counters(&sim);
    let rejected = c.errors.get(&104).copied().unwrap_or(0);
    assert!(rejected >= 1, "{c:?}");
    assert_eq!(c.fast_connects + c.fast_connect_rejected, 50, "{c:?}");
    assert_eq!(c.handshakes, c.fast_connect_rejected, "{c:?}");
}

#[test]
fn heartbeats_keep_sessions_and_silence_makes_devices_reconnect() {
    let n = 40;
    let hb = server_cfg(|c| {
        c.min_heartbeat_ms = 1_000;
        c.max_heartbeat_ms = 1_000;
    });
    let mut core = core_cfg(n);
    core.device = Arc::new(DeviceConfig {
        min_heartbeat: 1_000,
        max_heartbeat: 1_000,
        ..(*core.device).clone()
    });
    let mut sim = Sim::new(
        core,
        SimConfig {
            server: hb,
            ..SimConfig::default()
        },
    );
    bring_online(&mut sim, n, "start");
    sim.run_for(10_000);
    let c = counters(&sim).clone();
    assert!(c.heartbeats_received >= 40 * 15, "{c:?}");
    assert_eq!(
        (c.reconnects, c.read_timeouts, c.online),
        (0, 0, 40),
        "{c:?}"
    );
    // The server goes silent for 10 s: every device gives its connection up and comes back.
    let until = sim.now_ms() + 10_000;
    sim.stall_server_until(until);
    assert!(sim.run_until(LIMIT_MS, |s| counters(s).read_timeouts >= 40));
    bring_online(&mut sim, n, "after the silence");
    assert!(counters(&sim).fast_connects >= 40, "{:?}", counters(&sim));
}

#[test]
fn auto_ack_pushes_are_acked_and_close_all_comes_back_by_fast_connect() {
    let n = 20;
    let mut sim = Sim::new(core_cfg(n), SimConfig::default());
    bring_online(&mut sim, n, "start");
    assert_eq!(sim.push("user-3", b"hello", Flags::AUTO_ACK), 1);
    assert!(sim.run_until(LIMIT_MS, |s| !s.server().acked.is_empty()));
    assert_eq!(counters(&sim).pushes_received, 1);
    sim.close_all();
    assert!(sim.run_until(LIMIT_MS, |s| counters(s).peer_closed >= 20));
    bring_online(&mut sim, n, "after close-all");
    assert_eq!(counters(&sim).fast_connects, 20);
}

#[test]
fn two_source_addresses_are_both_used() {
    let n = 10;
    let mut core = core_cfg(n);
    core.sources = vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
    let mut sim = Sim::new(core, SimConfig::default());
    bring_online(&mut sim, n, "start");
    assert_eq!(
        sim.connects_by_source.len(),
        2,
        "{:?}",
        sim.connects_by_source
    );
    assert!(sim.connects_by_source.values().all(|&v| v == 5));
}

/// Ordering: a slow loop (a turn every 4 s, longer than the 3 s request timeout) sees each
/// reply together with the deadline that passed meanwhile; input first, so never a timeout.
#[test]
fn a_reply_that_arrived_before_its_deadline_is_never_a_timeout() {
    let n = 30;
    let cfg = SimConfig {
        turn_ms: 4_000,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(core_cfg(n), cfg);
    bring_online(&mut sim, n, "slow loop");
    let c = counters(&sim);
    assert_eq!((c.request_timeouts, c.reconnects), (0, 0), "{c:?}");
}

/// Ordering: a valid ERROR then, in the same write, a header over the body limit: the ERROR
/// reaches the device before the stream error ends the connection.
#[test]
fn frames_before_a_stream_error_reach_the_device() {
    let mut sim = Sim::new(core_cfg(1), SimConfig::default());
    bring_online(&mut sim, 1, "start");
    let conn = conn_of(&sim, 0);
    let error = ErrorReply {
        cmd: Cmd::Bind as u8,
        code: ErrorCode(7),
        reason: "late".into(),
        data: String::new(),
    };
    let mut wire = frame(&error, 99, Flags::NONE);
    // A header announcing a body far over the limit.
    wire.extend_from_slice(&[0x7F, 0xFF, 0xFF, 0xFF, 0x0F, 0, 0, 0, 0, 0, 0, 0, 1]);
    sim.inject(conn, &wire);
    assert!(sim.run_until(LIMIT_MS, |s| counters(s).decode_errors >= 1));
    let c = counters(&sim);
    assert_eq!(c.errors.get(&7), Some(&1), "the ERROR was counted: {c:?}");
    assert_eq!(c.decode_errors, 1, "{c:?}");
}

/// Ordering: a push and the server's close land in the same turn: the push is received first.
#[test]
fn frames_before_a_close_in_the_same_turn_reach_the_device() {
    let mut sim = Sim::new(core_cfg(1), SimConfig::default());
    bring_online(&mut sim, 1, "start");
    assert_eq!(sim.push("user-0", b"last words", Flags::NONE), 1);
    sim.close_all();
    assert!(sim.run_until(LIMIT_MS, |s| counters(s).peer_closed >= 1));
    assert_eq!(counters(&sim).pushes_received, 1, "{:?}", counters(&sim));
}

/// Ordering: an AUTO_ACK push then a KICK in one read: the ack is written before the shutdown.
#[test]
fn bytes_queued_before_a_close_are_written_before_the_shutdown() {
    let mut sim = Sim::new(core_cfg(1), SimConfig::default());
    bring_online(&mut sim, 1, "start");
    let conn = conn_of(&sim, 0);
    let push = Push {
        content: bytes::Bytes::from_static(b"order-1"),
    };
    let kick = Kick {
        device_id: "device-0".into(),
        user_id: "user-0".into(),
    };
    let mut wire = frame(&push, 41, Flags::AUTO_ACK);
    wire.extend_from_slice(&frame(&kick, 42, Flags::NONE));
    sim.inject(conn, &wire);
    assert!(sim.run_until(LIMIT_MS, |s| s.server().client_closes >= 1));
    assert_eq!(
        sim.server().acked,
        vec![41],
        "the ack reached the server first"
    );
    assert_eq!(counters(&sim).kicks, 1);
    assert_eq!(sim.core.device(0).map(|d| d.phase()), Some(Phase::Stopped));
}

/// Time past 2^32 ms (49.7 days): heartbeats go on and the loop stays idle between them.
#[test]
fn the_shard_runs_past_two_to_the_32_milliseconds() {
    let n = 10;
    let hb = server_cfg(|c| {
        c.min_heartbeat_ms = 60_000;
        c.max_heartbeat_ms = 60_000;
    });
    let mut core = core_cfg(n);
    core.device = Arc::new(DeviceConfig {
        min_heartbeat: 60_000,
        max_heartbeat: 60_000,
        ..(*core.device).clone()
    });
    let cfg = SimConfig {
        server: hb,
        start_ms: (1u64 << 32) - 10_000,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(core, cfg);
    bring_online(&mut sim, n, "start");
    let (turns, sent) = (sim.turns, counters(&sim).heartbeats_sent);
    sim.run_for(3_600_000);
    assert!(sim.now_ms() > 1u64 << 32);
    let c = counters(&sim);
    assert_eq!((c.online, c.reconnects), (10, 0), "{c:?}");
    // About one heartbeat a minute each: 59 minutes' worth, give or take one.
    assert!(c.heartbeats_sent - sent >= 10 * 58, "{c:?}");
    // Each heartbeat costs a handful of turns (timer, echo, read check); a spin costs millions.
    assert!(
        sim.turns - turns < 10 * 60 * 6,
        "{} turns",
        sim.turns - turns
    );
}

#[test]
fn a_graceful_stop_closes_every_session_and_finishes() {
    let n = 25;
    let mut sim = Sim::new(core_cfg(n), SimConfig::default());
    bring_online(&mut sim, n, "start");
    assert!(sim.stop(LIMIT_MS));
    let c = counters(&sim);
    assert_eq!((c.online, c.connections), (0, 0), "{c:?}");
    sim.run_for(1_000);
    assert_eq!(sim.server_connections(), 0);
    assert_eq!(counters(&sim).reconnects, 0, "no reconnect during a stop");
}

/// A slow sink: BIZ_ACK pushes are acked only once taken, the connection stops reading while
/// its pushes wait, and none is lost.
#[test]
fn a_full_sink_pauses_the_connection_and_loses_nothing() {
    let mut core = core_cfg(1);
    core.sink = true;
    let cfg = SimConfig {
        sink_capacity: 2,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(core, cfg);
    bring_online(&mut sim, 1, "start");
    for i in 0..6 {
        assert_eq!(
            sim.push("user-0", format!("p{i}").as_bytes(), Flags::BIZ_ACK),
            1
        );
    }
    sim.run_for(1_000);
    assert_eq!(sim.sink.len(), 2, "the sink is full");
    assert!(
        sim.server().acked.is_empty(),
        "nothing acked before the sink took it"
    );
    let mut rounds = 0;
    while sim.server().acked.len() < 6 {
        rounds += 1;
        assert!(rounds < 20, "acks: {:?}", sim.server().acked);
        sim.sink_take(2);
        sim.run_for(100);
    }
    assert_eq!(sim.server().acked.len(), 6);
    assert_eq!(counters(&sim).pushes_received, 6);
    assert_eq!(counters(&sim).online, 1, "the session stayed up");
}

/// A graceful stop while the server drops every session: no reconnect is started during the
/// stop (a storm of reconnects at Ctrl-C would hit the server as the fleet leaves).
#[test]
fn no_reconnect_is_started_during_a_graceful_stop() {
    let n = 50;
    let mut sim = Sim::new(core_cfg(n), SimConfig::default());
    bring_online(&mut sim, n, "start");
    let connects = counters(&sim).connects;
    let now = sim.now();
    sim.core.handle_stop(now);
    sim.close_all();
    assert!(sim.run_until(LIMIT_MS, |s| s.core.is_finished()));
    assert_eq!(counters(&sim).connects, connects, "{:?}", counters(&sim));
    assert_eq!(sim.server_connections(), 0);
}
