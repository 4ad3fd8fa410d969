//! The proxy role end to end: server pushes, fleet devices receive, a real consumer on a Unix
//! socket takes them, and BIZ_ACK pushes are acked upstream only after it did. Loopback only;
//! conditions are awaited with deadlines.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use mpush_fleet::control::{memory_stores, Fleet, FleetConfig};
use mpush_fleet::device::DeviceConfig;
use mpush_fleet::server::{AckMode, PushTarget, Server, ServerConfig, ServerHandle};
use mpush_fleet::sink::{Sink, SinkSpec};
use mpush_fleet::stats::Latency;
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());
const PATIENCE: Duration = Duration::from_secs(60);

/// A downstream consumer: forwards each record (as JSON) to the test, and acks the seqs the
/// test sends it (in any order), or every record at once when `auto_ack`.
struct Consumer {
    records: Receiver<Value>,
    acks: Sender<u64>,
}

fn consumer(name: &str, auto_ack: bool) -> (PathBuf, Consumer) {
    let path = std::env::temp_dir().join(format!("mpush-fleet-sink-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind consumer socket");
    let (rec_tx, records) = crossbeam_channel::unbounded();
    let (acks, ack_rx) = crossbeam_channel::unbounded::<u64>();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut writer = stream.try_clone().expect("clone consumer stream");
        std::thread::spawn(move || {
            for seq in ack_rx {
                if writeln!(writer, "{seq}").is_err() {
                    return;
                }
            }
        });
        let mut writer = stream.try_clone().expect("clone consumer stream");
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            let v: Value = serde_json::from_str(&line).expect("a JSON line");
            if auto_ack && writeln!(writer, "{}", v["seq"]).is_err() {
                return;
            }
            if rec_tx.send(v).is_err() {
                return;
            }
        }
    });
    (path, Consumer { records, acks })
}

fn recv(c: &Consumer) -> Value {
    c.records
        .recv_timeout(PATIENCE)
        .expect("the consumer got a record")
}

fn wait_server(server: &ServerHandle, what: &str, done: impl Fn(&ServerHandle) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done(server) {
        assert!(
            Instant::now() < deadline,
            "server never reached: {what}: {:?}",
            server.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn fleet(server: &ServerHandle, n: u32, sink: &Sink) -> Fleet {
    let cfg = FleetConfig {
        devices: n,
        shards: 2,
        pin: false,
        servers: vec![server.local_addr()],
        seed: Some(3),
        report_every: Duration::from_millis(50),
        sink: Some(sink.sender()),
        device: DeviceConfig {
            backoff_base_ms: 50,
            ..DeviceConfig::default()
        },
        driver: common::driver(),
        ..FleetConfig::default()
    };
    let mut fleet = Fleet::start(cfg, memory_stores(2)).expect("fleet starts");
    assert!(
        fleet.wait_until(PATIENCE, |c| c.bound == u64::from(n)),
        "{:?}",
        fleet.counters()
    );
    fleet
}

fn acked(server: &ServerHandle, msg_id: i32) -> bool {
    server
        .pushes()
        .iter()
        .any(|p| p.msg_id == msg_id && p.acked)
}

#[test]
fn biz_ack_is_sent_only_after_the_consumer_acked() {
    if !common::io_uring_or_skip("biz_ack_is_sent_only_after_the_consumer_acked") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(ServerConfig::new()).unwrap();
    let (path, c) = consumer("biz", false);
    let sink = Sink::start(SinkSpec::Unix(path), 64).unwrap();
    let mut fleet = fleet(&server, 10, &sink);

    let sent = server.push(
        PushTarget::User("user-3".into()),
        Bytes::from_static(b"order-42"),
        AckMode::Biz,
    );
    let msg_id = sent.msg_ids[0];
    let rec = recv(&c);
    assert_eq!(
        (rec["deviceId"].as_str(), rec["userId"].as_str()),
        (Some("device-3"), Some("user-3"))
    );
    assert_eq!(rec["msgId"], msg_id);
    assert_eq!(rec["content"], "b3JkZXItNDI=", "base64 of the content");
    // The consumer holds its ack: the fleet has received and delivered the push, and the
    // server must still see it unacked. A later push to another user, AUTO_ACK, is acked
    // meanwhile: the pipeline is moving, only this ack waits.
    let other = server.push(
        PushTarget::User("user-4".into()),
        Bytes::from_static(b"x"),
        AckMode::Auto,
    );
    wait_server(&server, "the AUTO_ACK push acked", |s| {
        acked(s, other.msg_ids[0])
    });
    let auto_rec = recv(&c);
    assert!(
        !acked(&server, msg_id),
        "BIZ_ACK push acked before the consumer took it"
    );

    c.acks.send(rec["seq"].as_u64().unwrap()).unwrap();
    c.acks.send(auto_rec["seq"].as_u64().unwrap()).unwrap();
    wait_server(&server, "the BIZ_ACK push acked", |s| acked(s, msg_id));
    fleet.poll(Duration::from_millis(100));
    let result = fleet.stop().unwrap();
    assert_eq!(result.stats.counters.acks_sent, 2);
    assert_eq!(result.stats.latencies.get(Latency::PushToSink).len(), 2);
    sink.close(Duration::from_secs(5));
    server.shutdown();
}

#[test]
fn a_slow_sink_loses_no_push() {
    if !common::io_uring_or_skip("a_slow_sink_loses_no_push") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(ServerConfig::new()).unwrap();
    let (path, c) = consumer("slow", false);
    // Room for 2 records: the fleet must hold the rest and slow its reads.
    let sink = Sink::start(SinkSpec::Unix(path), 2).unwrap();
    let fleet = fleet(&server, 10, &sink);
    let rounds = 20;
    let mut expected = BTreeSet::new();
    for _ in 0..rounds {
        let sent = server.push(PushTarget::All, Bytes::from_static(b"p"), AckMode::Biz);
        assert_eq!(sent.sent, 10);
        expected.extend(sent.msg_ids.iter().map(|&id| id as i64));
    }
    // A slow consumer: acks one record at a time, only after it read it.
    let mut seen = BTreeSet::new();
    while seen.len() < expected.len() {
        let rec = recv(&c);
        seen.insert(rec["msgId"].as_i64().unwrap());
        c.acks.send(rec["seq"].as_u64().unwrap()).unwrap();
    }
    assert_eq!(seen, expected, "every push reached the consumer");
    wait_server(&server, "every push acked", |s| {
        s.stats().acks_received >= 200
    });
    let c2 = fleet.stop().unwrap().stats.counters;
    assert_eq!((c2.pushes_received, c2.acks_sent), (200, 200));
    sink.close(Duration::from_secs(5));
    server.shutdown();
}

#[test]
fn a_graceful_stop_drains_the_sink_and_sends_the_acks_it_earned() {
    if !common::io_uring_or_skip("a_graceful_stop_drains_the_sink_and_sends_the_acks_it_earned") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(ServerConfig::new()).unwrap();
    let (path, c) = consumer("drain", false);
    let sink = Sink::start(SinkSpec::Unix(path), 64).unwrap();
    let mut fleet = fleet(&server, 10, &sink);
    let sent = server.push(
        PushTarget::All,
        Bytes::from_static(b"last words"),
        AckMode::Biz,
    );
    let held: Vec<Value> = (0..10).map(|_| recv(&c)).collect();
    // Stop while the consumer still holds every ack; release them only once both shards are
    // draining: the sessions must stay up until the acks the sink earned are sent.
    fleet.begin_stop();
    assert!(
        fleet.wait_until(PATIENCE, |c| c.draining_shards == 2),
        "{:?}",
        fleet.counters()
    );
    assert_eq!(
        server.stats().connections,
        10,
        "sessions closed before the sink drained"
    );
    assert!(sent.msg_ids.iter().all(|&id| !acked(&server, id)));
    let stopper = std::thread::spawn(move || fleet.stop());
    for rec in &held {
        c.acks.send(rec["seq"].as_u64().unwrap()).unwrap();
    }
    let result = stopper.join().unwrap().unwrap();
    assert_eq!(
        result.stats.counters.acks_sent, 10,
        "{:?}",
        result.stats.counters
    );
    wait_server(&server, "all 10 acked", |s| {
        sent.msg_ids.iter().all(|&id| acked(s, id))
    });
    sink.close(Duration::from_secs(5));
    server.shutdown();
}
