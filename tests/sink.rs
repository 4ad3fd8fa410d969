//! The push sink against real destinations: a file, and a consumer on a real Unix socket
//! (std `UnixListener` in a thread) that acks when the test tells it to.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use mpush_fleet::sink::{Sink, SinkRecord, SinkSpec};

/// Generous bound for conditions that normally hold within milliseconds.
const PATIENCE: Duration = Duration::from_secs(20);

fn temp_path(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("mpush-sink-{}-{n}-{name}", std::process::id()))
}

/// Record `i`; its `on_taken` sends `i` on `taken`.
fn record(i: usize, taken: &Sender<usize>) -> SinkRecord {
    let tx = taken.clone();
    SinkRecord {
        device_id: format!("dev-{i}"),
        user_id: format!("user-{i}"),
        msg_id: i as i32,
        flags: 0x08,
        content: Bytes::from(vec![i as u8, 0xFF, 0x00, b'x']),
        received_at_ms: 1_700_000_000_000 + i as i64,
        on_taken: Some(Box::new(move || {
            let _ = tx.send(i);
        })),
    }
}

/// Waits for `n` values on `rx`, failing after [`PATIENCE`].
fn collect(rx: &Receiver<usize>, n: usize) -> Vec<usize> {
    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::new();
    while got.len() < n {
        match rx.recv_deadline(deadline) {
            Ok(i) => got.push(i),
            Err(_) => panic!("only {} of {n} arrived: {got:?}", got.len()),
        }
    }
    got
}

#[test]
fn file_sink_writes_json_lines_and_takes_after_flush() {
    let path = temp_path("records.jsonl");
    let sink = Sink::start(SinkSpec::File(path.clone()), 8).unwrap();
    let tx = sink.sender();
    let (taken_tx, taken) = crossbeam_channel::unbounded();
    let (check_tx, checks) = crossbeam_channel::unbounded();
    const N: usize = 50;
    let mut pending: Vec<SinkRecord> = (0..N)
        .map(|i| {
            let mut r = record(i, &taken_tx);
            // On the sink's thread, when taken: the line must already be in the file.
            let (p, check, inner) = (path.clone(), check_tx.clone(), r.on_taken.take().unwrap());
            r.on_taken = Some(Box::new(move || {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let _ = check.send(text.contains(&format!("\"deviceId\":\"dev-{i}\"")));
                inner();
            }));
            r
        })
        .collect();
    pending.reverse();
    let deadline = Instant::now() + PATIENCE;
    while let Some(r) = pending.pop() {
        if let Err(r) = tx.try_send(r) {
            // Full: keep it and retry, as a shard would (never drop).
            pending.push(r);
            assert!(Instant::now() < deadline, "the file sink never made room");
            std::thread::yield_now();
        }
    }
    let mut got = collect(&taken, N);
    got.sort_unstable();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    assert!(
        checks.try_iter().take(N + 1).all(|ok| ok),
        "on_taken ran before its line was flushed"
    );
    let drain = sink.close(Duration::from_secs(5));
    assert_eq!(
        (drain.written, drain.acked, drain.left),
        (N as u64, N as u64, 0)
    );

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), N);
    for (k, v) in lines.iter().enumerate() {
        assert_eq!(v["seq"], k as u64 + 1, "seq numbers count up from 1");
        let i: usize = v["deviceId"]
            .as_str()
            .unwrap()
            .strip_prefix("dev-")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(v["userId"], format!("user-{i}"));
        assert_eq!(v["msgId"], i as i64);
        assert_eq!(v["flags"], 8);
        assert_eq!(v["receivedAt"], 1_700_000_000_000 + i as i64);
        let content = base64::engine::general_purpose::STANDARD
            .decode(v["content"].as_str().unwrap())
            .unwrap();
        assert_eq!(content, [i as u8, 0xFF, 0x00, b'x']);
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn bad_specs_and_destinations_fail_at_start() {
    assert!(Sink::start(SinkSpec::Stdout, 0).is_err());
    assert!(Sink::start(SinkSpec::File("/nonexistent-dir/x/y.jsonl".into()), 4).is_err());
    let err = Sink::start(SinkSpec::Unix(temp_path("nobody.sock")), 4).unwrap_err();
    assert!(format!("{err:#}").contains("sink consumer"), "{err:#}");
}

/// What the test consumer saw: the connection number (from 0) and the record's line.
type Seen = (usize, serde_json::Value);

enum Cmd {
    /// Write this ack line on the current connection.
    Ack(u64),
    /// Close the current connection and accept the next one.
    Drop,
    /// Write these raw bytes on the current connection (garbage, for robustness).
    Raw(Vec<u8>),
}

/// A downstream consumer on a real Unix socket; acks only when told.
struct Consumer {
    path: PathBuf,
    seen: Receiver<Seen>,
    cmds: Sender<Cmd>,
}

impl Consumer {
    fn start() -> Consumer {
        let path = temp_path("consumer.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (seen_tx, seen) = crossbeam_channel::unbounded();
        let (cmds, cmd_rx) = crossbeam_channel::unbounded::<Cmd>();
        std::thread::spawn(move || {
            for conn_no in 0.. {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                let reader = BufReader::new(conn.try_clone().unwrap());
                let tx = seen_tx.clone();
                std::thread::spawn(move || {
                    for line in reader.lines() {
                        let Ok(line) = line else { return };
                        let v: serde_json::Value =
                            serde_json::from_str(&line).expect("a JSON line");
                        if tx.send((conn_no, v)).is_err() {
                            return;
                        }
                    }
                });
                loop {
                    match cmd_rx.recv() {
                        Ok(Cmd::Ack(seq)) => {
                            let _ = conn.write_all(format!("{seq}\n").as_bytes());
                        }
                        Ok(Cmd::Raw(bytes)) => {
                            let _ = conn.write_all(&bytes);
                        }
                        Ok(Cmd::Drop) => {
                            let _ = conn.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                        Err(_) => return,
                    }
                }
            }
        });
        Consumer { path, seen, cmds }
    }

    fn spec(&self) -> SinkSpec {
        SinkSpec::Unix(self.path.clone())
    }

    /// Waits for `n` lines.
    fn expect_lines(&self, n: usize) -> Vec<Seen> {
        let deadline = Instant::now() + PATIENCE;
        (0..n)
            .map(|k| {
                self.seen
                    .recv_deadline(deadline)
                    .unwrap_or_else(|_| panic!("line {k} of {n} never came"))
            })
            .collect()
    }

    fn ack(&self, seq: u64) {
        self.cmds.send(Cmd::Ack(seq)).unwrap();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn seq_of(seen: &Seen) -> u64 {
    seen.1["seq"].as_u64().unwrap()
}

#[test]
fn unix_sink_takes_a_record_only_after_the_consumers_ack() {
    let consumer = Consumer::start();
    let sink = Sink::start(consumer.spec(), 4).unwrap();
    let (taken_tx, taken) = crossbeam_channel::unbounded();
    sink.sender().try_send(record(7, &taken_tx)).unwrap();
    let line = consumer.expect_lines(1).remove(0);
    assert_eq!(line.1["deviceId"], "dev-7");
    // The consumer holds the line but has not acked: the record is not taken.
    assert!(taken.try_recv().is_err(), "taken before the consumer acked");
    assert_eq!(sink.counters().acked, 0);
    // Garbage and an unknown seq are counted and ignored, never taken for an ack.
    consumer
        .cmds
        .send(Cmd::Raw(b"not-a-seq\n99\n".to_vec()))
        .unwrap();
    consumer.ack(seq_of(&line));
    assert_eq!(collect(&taken, 1), [7]);
    let c = sink.counters();
    assert_eq!((c.written, c.acked), (1, 1));
    assert!(c.errors >= 1, "{c:?}");
    let drain = sink.close(Duration::from_secs(5));
    assert_eq!((drain.written, drain.acked, drain.left), (1, 1, 0));
}

#[test]
fn full_queue_returns_the_record_and_a_slow_consumer_loses_nothing() {
    const CAP: usize = 4;
    const N: usize = 200;
    let consumer = Consumer::start();
    let sink = Sink::start(consumer.spec(), CAP).unwrap();
    let tx = sink.sender();
    let (taken_tx, taken) = crossbeam_channel::unbounded();

    // The consumer acks nothing yet: at most CAP in flight plus CAP queued can be accepted.
    let mut accepted = 0;
    let deadline = Instant::now() + PATIENCE;
    let returned = loop {
        match tx.try_send(record(accepted, &taken_tx)) {
            Ok(()) => accepted += 1,
            Err(r) => break r,
        }
        assert!(
            accepted <= 2 * CAP,
            "accepted {accepted} records with nothing acked"
        );
        assert!(Instant::now() < deadline);
    };
    assert_eq!(
        returned.device_id,
        format!("dev-{accepted}"),
        "the full queue gives the record back"
    );
    assert!(taken.try_recv().is_err(), "nothing is taken before an ack");

    // Now the consumer acks what it sees, each batch in reverse order, while the producer keeps
    // retrying whatever came back.
    let mut pending: Vec<SinkRecord> = (accepted + 1..N)
        .rev()
        .map(|i| record(i, &taken_tx))
        .collect();
    pending.push(returned);
    let mut lines = 0;
    let mut taken_ids = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while taken_ids.len() < N {
        assert!(
            Instant::now() < deadline,
            "{} of {N} taken",
            taken_ids.len()
        );
        while let Some(r) = pending.pop() {
            if let Err(r) = tx.try_send(r) {
                pending.push(r);
                break;
            }
        }
        let mut batch: Vec<u64> = Vec::new();
        if let Ok(first) = consumer.seen.recv_timeout(Duration::from_millis(5)) {
            batch.push(seq_of(&first));
            batch.extend(consumer.seen.try_iter().map(|s| seq_of(&s)));
        }
        lines += batch.len();
        batch.iter().rev().for_each(|&s| consumer.ack(s));
        taken_ids.extend(taken.try_iter());
    }
    taken_ids.sort_unstable();
    assert_eq!(
        taken_ids,
        (0..N).collect::<Vec<_>>(),
        "every record taken exactly once"
    );
    assert_eq!(lines, N, "one connection, so each line was written once");
    let drain = sink.close(Duration::from_secs(5));
    assert_eq!(
        (drain.written, drain.acked, drain.left),
        (N as u64, N as u64, 0)
    );
}

#[test]
fn consumer_disconnect_resends_every_unacked_record() {
    let consumer = Consumer::start();
    let sink = Sink::start(consumer.spec(), 16).unwrap();
    let (taken_tx, taken) = crossbeam_channel::unbounded();
    for i in 0..5 {
        sink.sender().try_send(record(i, &taken_tx)).unwrap();
    }
    let first = consumer.expect_lines(5);
    assert!(first.iter().all(|s| s.0 == 0));
    let seqs: Vec<u64> = first.iter().map(seq_of).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    // Ack two, then go away: the sink processes the acks before it sees the end.
    consumer.ack(2);
    consumer.ack(4);
    consumer.cmds.send(Cmd::Drop).unwrap();
    let mut got = collect(&taken, 2);
    got.sort_unstable();
    assert_eq!(got, [1, 3]);

    // The sink reconnects and writes the three unacked records again, same seqs.
    let again = consumer.expect_lines(3);
    assert!(again.iter().all(|s| s.0 == 1), "{again:?}");
    let resent: BTreeSet<u64> = again.iter().map(seq_of).collect();
    assert_eq!(resent, BTreeSet::from([1, 3, 5]));
    assert!(
        taken.try_recv().is_err(),
        "taken without an ack on the new connection"
    );
    for s in &resent {
        consumer.ack(*s);
    }
    let mut got = collect(&taken, 3);
    got.sort_unstable();
    assert_eq!(got, [0, 2, 4]);
    let c = sink.counters();
    assert_eq!((c.written, c.acked, c.reconnects, c.resent), (5, 5, 1, 3));
    let drain = sink.close(Duration::from_secs(5));
    assert_eq!(drain.left, 0);
    assert!(taken.try_recv().is_err(), "a record was taken twice");
}

#[test]
fn close_drains_queued_records_and_reports_what_was_left() {
    // A consumer that acks everything: close waits for the acks.
    let consumer = Consumer::start();
    let sink = Sink::start(consumer.spec(), 8).unwrap();
    let (taken_tx, taken) = crossbeam_channel::unbounded();
    for i in 0..6 {
        sink.sender().try_send(record(i, &taken_tx)).unwrap();
    }
    let seen = consumer.expect_lines(6);
    let sender = sink.sender();
    let acker = {
        let cmds = consumer.cmds.clone();
        std::thread::spawn(move || {
            seen.iter()
                .for_each(|s| cmds.send(Cmd::Ack(seq_of(s))).unwrap())
        })
    };
    let drain = sink.close(PATIENCE);
    acker.join().unwrap();
    assert_eq!((drain.written, drain.acked, drain.left), (6, 6, 0));
    assert_eq!(taken.try_iter().count(), 6);
    assert!(sender.is_closed());
    assert!(
        sender.try_send(record(99, &taken_tx)).is_err(),
        "a closed sink accepts nothing"
    );

    // A consumer that never acks: close gives up at its timeout and reports the records left
    // (their pushes stay unacked upstream).
    let silent = Consumer::start();
    let sink = Sink::start(silent.spec(), 8).unwrap();
    for i in 0..3 {
        sink.sender().try_send(record(i, &taken_tx)).unwrap();
    }
    silent.expect_lines(3);
    let drain = sink.close(Duration::from_millis(50));
    assert_eq!((drain.written, drain.acked, drain.left), (3, 0, 3));
    assert!(taken.try_recv().is_err());
}
