//! The control API's requests in simulated time: slots that grow and are reused, a removal
//! that waits for the sink and the earned ack, binds and unbinds the server sees, kicks,
//! closes and opens.

use super::*;
use crate::device::Identity;
use crate::shard::core::{Answer, DeviceState, Request};
use crate::stats::Counters;

const LIMIT_MS: u64 = 600_000;

fn core_cfg(devices: u32, sink: bool) -> CoreConfig {
    CoreConfig {
        seed: 11,
        sink,
        ..scenario(devices)
    }
}

fn counters(sim: &Sim) -> &Counters {
    &sim.core.stats().counters
}

fn bound(sim: &Sim, n: u64) -> bool {
    let c = counters(sim);
    c.online == n as i64 && c.bound >= n
}

/// Sends one request and runs until its answer comes (bounded).
fn ask(sim: &mut Sim, id: u64, request: Request) -> Answer {
    let now = sim.now();
    sim.core.handle_control(now, id, request);
    sim.start_io();
    assert!(
        sim.run_until(LIMIT_MS, |s| s.core.has_control_answer()),
        "an answer in time"
    );
    let (got, answer) = sim.core.poll_control().expect("an answer");
    assert_eq!(got, id, "answers come back under their request's id");
    answer
}

fn done(a: Answer) -> DeviceState {
    match a {
        Answer::Done(s) => s,
        other => panic!("not done: {other:?}"),
    }
}

fn identity(device_id: &str, user_id: &str) -> Identity {
    Identity {
        device_id: device_id.into(),
        user_id: user_id.into(),
        ..Identity::default()
    }
}

#[test]
fn added_devices_grow_the_slots_and_a_removed_ones_slot_is_reused() {
    let cfg = core_cfg(2, false);
    let ids = cfg.device.identities.clone();
    let mut sim = Sim::new(cfg, SimConfig::default());
    assert!(sim.run_until(LIMIT_MS, |s| bound(s, 2)));

    ids.insert(100, identity("phone-a", "alice"));
    let added = done(ask(&mut sim, 1, Request::Add(100)));
    assert_eq!(added.index, 100);
    assert_eq!(sim.core.devices_running(), 3);
    let alice = |s: &Sim| {
        s.core
            .device(2)
            .is_some_and(|d| d.index() == 100 && d.is_bound())
    };
    assert!(sim.run_until(LIMIT_MS, alice), "{:?}", counters(&sim));
    assert_eq!(sim.push("alice", b"hi", Flags::NONE), 1, "alice is bound");
    sim.run_for(100);
    let state = done(ask(&mut sim, 2, Request::State(100)));
    assert_eq!(state.phase, "online");
    assert!(state.bound && state.connected);
    assert_eq!(state.counters.pushes_received, 1, "{state:?}");
    assert_eq!(state.counters.handshakes, 1);

    let closes = sim.server().client_closes;
    let removed = done(ask(&mut sim, 3, Request::Remove(100)));
    assert_eq!(removed.phase, "removed");
    assert!(sim.run_until(LIMIT_MS, |s| s.server().client_closes == closes + 1));
    assert_eq!(sim.core.devices_running(), 2);
    assert_eq!(counters(&sim).online, 2);
    assert_eq!(ask(&mut sim, 4, Request::State(100)), Answer::Unknown);
    assert_eq!(sim.push("alice", b"gone", Flags::NONE), 0);

    // The next device takes the freed slot: no growth.
    ids.insert(101, identity("phone-b", "bob"));
    done(ask(&mut sim, 5, Request::Add(101)));
    assert_eq!(sim.core.devices_running(), 3);
    assert_eq!(sim.core.device(2).map(|d| d.index()), Some(101));
    assert!(sim.run_until(LIMIT_MS, |s| s.core.device(2).is_some_and(|d| d.is_bound())));
    assert_eq!(sim.push("bob", b"hi", Flags::NONE), 1);

    // A device of the shard's own range is removed the same way.
    done(ask(&mut sim, 6, Request::Remove(0)));
    assert_eq!(sim.core.devices_running(), 2);
    assert!(sim.run_until(LIMIT_MS, |s| s.server_connections() == 2));
    assert!(sim.stop(LIMIT_MS), "the stop finishes with added slots");
}

#[test]
fn a_removed_device_closes_only_after_the_sink_took_its_push_and_the_ack_went_out() {
    let cfg = core_cfg(1, true);
    let mut sim = Sim::new(cfg, SimConfig::default());
    assert!(sim.run_until(LIMIT_MS, |s| bound(s, 1)));
    assert_eq!(sim.push("user-0", b"keep me", Flags::BIZ_ACK), 1);
    assert!(sim.run_until(LIMIT_MS, |s| s.sink.len() == 1));

    let now = sim.now();
    sim.core.handle_control(now, 9, Request::Remove(0));
    sim.start_io();
    sim.run_for(2_000);
    assert_eq!(sim.core.poll_control(), None, "waits for the sink");
    assert_eq!(sim.server().client_closes, 0, "still open");
    assert!(sim.server().acked.is_empty());

    sim.sink_take(1);
    let mut answer = None;
    assert!(sim.run_until(LIMIT_MS, |s| s.server().client_closes == 1));
    while let Some(a) = sim.core.poll_control() {
        answer = Some(a);
    }
    let (id, a) = answer.expect("answered once closed");
    assert_eq!(id, 9);
    assert_eq!(done(a).phase, "removed");
    assert_eq!(
        sim.server().acked.len(),
        1,
        "the earned ack went out before the close"
    );
    assert_eq!(sim.core.devices_running(), 0);
}

#[test]
fn bind_unbind_kick_close_and_open() {
    let cfg = core_cfg(2, false);
    let mut sim = Sim::new(cfg, SimConfig::default());
    assert!(sim.run_until(LIMIT_MS, |s| bound(s, 2)));

    let binds = sim.server().binds;
    let bind = Request::Bind {
        device: 1,
        user_id: "carol".into(),
        tags: "vip".into(),
    };
    done(ask(&mut sim, 1, bind));
    assert!(sim.run_until(LIMIT_MS, |s| s.server().binds == binds + 1));
    assert!(sim.run_until(LIMIT_MS, |s| s.core.device(1).is_some_and(|d| d.is_bound())));
    assert_eq!(sim.push("carol", b"x", Flags::NONE), 1);

    done(ask(&mut sim, 2, Request::Unbind(1)));
    sim.run_for(100);
    assert_eq!(sim.push("carol", b"x", Flags::NONE), 0, "unbound");
    let state = done(ask(&mut sim, 3, Request::State(1)));
    assert!(!state.bound && state.connected);

    let connected = counters(&sim).connected;
    done(ask(&mut sim, 4, Request::Kick(0)));
    assert!(sim.run_until(LIMIT_MS, |s| {
        counters(s).connected == connected + 1 && counters(s).online == 2
    }));

    let closed = done(ask(&mut sim, 5, Request::Close(0)));
    assert_eq!(closed.phase, "stopped");
    assert!(sim.run_until(LIMIT_MS, |s| s.server_connections() == 1));
    assert!(matches!(
        ask(&mut sim, 6, Request::Kick(0)),
        Answer::Refused(_)
    ));
    done(ask(&mut sim, 7, Request::Open(0)));
    assert!(sim.run_until(LIMIT_MS, |s| s.server_connections() == 2));
    assert!(matches!(
        ask(&mut sim, 8, Request::Open(0)),
        Answer::Refused(_)
    ));
    assert_eq!(ask(&mut sim, 9, Request::State(77)), Answer::Unknown);
    let bad = Request::Bind {
        device: 0,
        user_id: String::new(),
        tags: String::new(),
    };
    assert!(matches!(ask(&mut sim, 10, bad), Answer::Refused(_)));
}
