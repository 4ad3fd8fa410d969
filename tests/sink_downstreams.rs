//! The network downstreams of the push sink, against real ones on loopback: a redis-server
//! started by the harness (XADD to a stream) and an HTTP webhook served by axum in the test.
//! A record is taken only when the downstream answered; a failing or stopped downstream slows
//! the sink and loses nothing; BIZ_ACK pushes from a fleet are acked upstream only after it.

mod common;
#[path = "common/fleet_sink.rs"]
mod fleet_sink;
#[path = "common/http_backend.rs"]
mod http_backend;
#[path = "common/redis.rs"]
mod redis_harness;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use fleet_sink::{acked, fleet, PATIENCE};
use mpush_fleet::server::{AckMode, PushTarget, Server, ServerConfig};
use mpush_fleet::sink::{Sink, SinkRecord, SinkSpec, StreamSpec, WebhookSpec};
use redis_harness::{RedisProcess, Reply};
use serde_json::Value;

fn wait(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `n` records for devices `device-{i}`, each counting into `taken` when it is taken.
fn send(sink: &Sink, first: u32, n: u32, taken: &Arc<AtomicU64>) {
    let tx = sink.sender();
    for i in first..first + n {
        let t = taken.clone();
        let mut rec = SinkRecord {
            device_id: format!("device-{i}"),
            user_id: format!("user-{i}"),
            msg_id: i as i32,
            flags: 8,
            content: Bytes::from(vec![0u8, 0xff, i as u8]),
            received_at_ms: 1_700_000_000_000 + i64::from(i),
            on_taken: Some(Box::new(move || {
                t.fetch_add(1, Ordering::SeqCst);
            })),
        };
        // The queue is bounded: wait for room as a shard would (by reading less).
        loop {
            match tx.try_send(rec) {
                Ok(()) => break,
                Err(back) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

/// XRANGE's entries as field/value maps (values as bytes).
fn entries(reply: &Reply) -> Vec<std::collections::HashMap<String, Vec<u8>>> {
    let Reply::Array(entries) = reply else {
        panic!("XRANGE answered {reply:?}")
    };
    entries
        .iter()
        .map(|e| {
            let Reply::Array(parts) = e else {
                panic!("{e:?}")
            };
            let Reply::Array(kv) = &parts[1] else {
                panic!("{e:?}")
            };
            kv.chunks(2)
                .map(|p| match (&p[0], &p[1]) {
                    (k, Reply::Bulk(Some(v))) => (k.text().unwrap(), v.clone()),
                    _ => panic!("{p:?}"),
                })
                .collect()
        })
        .collect()
}

fn stream_spec(redis: &RedisProcess, key: &str, maxlen: Option<i64>) -> SinkSpec {
    SinkSpec::RedisStream(StreamSpec {
        url: redis.url(),
        key: key.into(),
        maxlen,
    })
}

#[test]
fn redis_stream_takes_each_record_when_xadd_answers() {
    let Some(redis) = RedisProcess::start("redis_stream_takes_each_record_when_xadd_answers")
    else {
        return;
    };
    let sink = Sink::start(stream_spec(&redis, "pushes", None), 64).unwrap();
    let taken = Arc::new(AtomicU64::new(0));
    send(&sink, 0, 300, &taken);
    wait("300 records taken", || taken.load(Ordering::SeqCst) == 300);
    let mut r = redis.resp();
    assert_eq!(r.ok(&["XLEN", "pushes"]).int(), Some(300));
    // Every record once, in order; the fields as text, content as raw bytes.
    let all = entries(&r.ok(&["XRANGE", "pushes", "-", "+"]));
    assert_eq!(all.len(), 300);
    let first = &all[0];
    let field = |k: &str| String::from_utf8(first[k].clone()).unwrap();
    assert_eq!(
        (field("deviceId"), field("userId"), field("msgId")),
        ("device-0".into(), "user-0".into(), "0".into())
    );
    assert_eq!(
        (field("flags"), field("receivedAt")),
        ("8".into(), "1700000000000".into())
    );
    assert_eq!(first["content"], vec![0, 0xff, 0]);
    let mut seqs: Vec<u64> = all
        .iter()
        .map(|e| String::from_utf8_lossy(&e["seq"]).parse().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
    let drain = sink.close(Duration::from_secs(5));
    assert_eq!((drain.written, drain.acked, drain.left), (300, 300, 0));
}

#[test]
fn redis_stream_maxlen_trims() {
    let Some(redis) = RedisProcess::start("redis_stream_maxlen_trims") else {
        return;
    };
    let sink = Sink::start(stream_spec(&redis, "capped", Some(100)), 64).unwrap();
    let taken = Arc::new(AtomicU64::new(0));
    send(&sink, 0, 1000, &taken);
    wait("1000 records taken", || {
        taken.load(Ordering::SeqCst) == 1000
    });
    let len = redis.resp().ok(&["XLEN", "capped"]).int().unwrap();
    // `MAXLEN ~`: Redis trims whole nodes, so somewhat more than 100 may stay.
    assert!((100..1000).contains(&len), "XLEN {len}");
    sink.close(Duration::from_secs(5));
}

#[test]
fn redis_stream_outage_loses_nothing() {
    let Some(mut redis) = RedisProcess::start("redis_stream_outage_loses_nothing") else {
        return;
    };
    let sink = Sink::start(stream_spec(&redis, "s", None), 64).unwrap();
    let taken = Arc::new(AtomicU64::new(0));
    send(&sink, 0, 50, &taken);
    wait("the first 50 taken", || taken.load(Ordering::SeqCst) == 50);
    redis.kill();
    send(&sink, 50, 50, &taken);
    // Nobody can have taken them: Redis is down.
    assert_eq!(taken.load(Ordering::SeqCst), 50);
    wait("failures counted", || sink.counters().errors > 0);
    redis.restart();
    wait("all 100 taken", || taken.load(Ordering::SeqCst) == 100);
    // The restarted Redis (no persistence) holds the second 50, each at least once.
    let all = entries(&redis.resp().ok(&["XRANGE", "s", "-", "+"]));
    for i in 50..100 {
        let id = format!("device-{i}").into_bytes();
        assert!(
            all.iter().any(|e| e["deviceId"] == id),
            "device-{i} in the stream"
        );
    }
    let c = sink.counters();
    assert!(c.resent > 0 && c.errors > 0, "{c:?}");
    let drain = sink.close(Duration::from_secs(5));
    assert_eq!((drain.acked, drain.left), (100, 0));
}

#[test]
fn redis_stream_not_there_is_an_error_at_start() {
    let port = RedisProcess::unused_port();
    let spec = SinkSpec::RedisStream(StreamSpec {
        url: format!("redis://127.0.0.1:{port}/0"),
        key: "k".into(),
        maxlen: None,
    });
    let err = format!("{:#}", Sink::start(spec, 4).unwrap_err());
    assert!(err.contains("redis-stream sink"), "{err}");
}

/// A webhook on loopback: keeps every body, fails the first `fail_first` requests with 503,
/// holds answers while `hold` is set, and tracks how many requests it had at once.
struct Hook {
    addr: SocketAddr,
    st: Arc<HookState>,
}

struct HookState {
    bodies: Mutex<Vec<Value>>,
    fail_first: AtomicU32,
    active: AtomicU32,
    max_active: AtomicU32,
    hold: tokio::sync::watch::Sender<bool>,
}

async fn hook(State(st): State<Arc<HookState>>, body: Bytes) -> StatusCode {
    let now = st.active.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_active.fetch_max(now, Ordering::SeqCst);
    let v: Value = serde_json::from_slice(&body).expect("a JSON body");
    st.bodies.lock().unwrap().push(v);
    let fail = st
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if !fail {
        let mut rx = st.hold.subscribe();
        let _ = rx.wait_for(|held| !*held).await;
    }
    st.active.fetch_sub(1, Ordering::SeqCst);
    if fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    }
}

fn start_hook(fail_first: u32, hold: bool) -> Hook {
    let st = Arc::new(HookState {
        bodies: Mutex::new(Vec::new()),
        fail_first: AtomicU32::new(fail_first),
        active: AtomicU32::new(0),
        max_active: AtomicU32::new(0),
        hold: tokio::sync::watch::channel(hold).0,
    });
    let app = axum::Router::new()
        .route("/in", axum::routing::post(hook))
        .with_state(st.clone());
    let addr = http_backend::spawn(app);
    Hook { addr, st }
}

fn webhook_spec(hook: &Hook, inflight: usize) -> SinkSpec {
    SinkSpec::Webhook(WebhookSpec {
        authority: hook.addr.to_string(),
        path: "/in".into(),
        inflight,
    })
}

#[test]
fn webhook_retries_failures_and_keeps_its_inflight_bound() {
    let hook = start_hook(3, true);
    let sink = Sink::start(webhook_spec(&hook, 4), 64).unwrap();
    let taken = Arc::new(AtomicU64::new(0));
    send(&sink, 0, 40, &taken);
    // Held: the sink fills its 4 requests and no more, and nothing is taken meanwhile.
    wait("4 requests held", || {
        hook.st.active.load(Ordering::SeqCst) == 4
    });
    assert_eq!(taken.load(Ordering::SeqCst), 0);
    hook.st.hold.send_replace(false);
    wait("40 records taken", || taken.load(Ordering::SeqCst) == 40);
    assert!(hook.st.max_active.load(Ordering::SeqCst) <= 4);
    let bodies = hook.st.bodies.lock().unwrap().clone();
    // 3 answered 503 and were posted again: 43 bodies, every device at least once.
    assert_eq!(bodies.len(), 43);
    for i in 0..40 {
        let id = format!("device-{i}");
        assert!(bodies.iter().any(|b| b["deviceId"] == id.as_str()), "{id}");
    }
    let b = bodies.iter().find(|b| b["deviceId"] == "device-2").unwrap();
    assert_eq!(b["userId"], "user-2");
    assert_eq!(b["content"], "AP8C", "base64 of 00 ff 02");
    let c = sink.counters();
    assert_eq!((c.written, c.acked, c.resent, c.errors), (40, 40, 3, 3));
    let drain = sink.close(Duration::from_secs(5));
    assert_eq!(drain.left, 0);
}

#[test]
fn webhook_not_listening_is_an_error_at_start() {
    let port = RedisProcess::unused_port();
    let spec: SinkSpec = format!("webhook:http://127.0.0.1:{port}/in")
        .parse()
        .unwrap();
    let err = format!("{:#}", Sink::start(spec, 4).unwrap_err());
    assert!(err.contains("webhook"), "{err}");
}

#[test]
fn webhook_close_deadline_counts_what_it_holds_as_left() {
    let hook = start_hook(0, true);
    let sink = Sink::start(webhook_spec(&hook, 2), 8).unwrap();
    let taken = Arc::new(AtomicU64::new(0));
    send(&sink, 0, 5, &taken);
    wait("2 requests held", || {
        hook.st.active.load(Ordering::SeqCst) == 2
    });
    let drain = sink.close(Duration::from_millis(200));
    assert_eq!((drain.acked, drain.left), (0, 5), "{drain:?}");
    assert_eq!(taken.load(Ordering::SeqCst), 0);
}

#[test]
fn fleet_biz_ack_waits_for_the_webhook_answer() {
    if !common::io_uring_or_skip("fleet_biz_ack_waits_for_the_webhook_answer") {
        return;
    }
    let server = Server::start(ServerConfig::new()).unwrap();
    let hook = start_hook(0, true);
    let sink = Sink::start(webhook_spec(&hook, 4), 64).unwrap();
    let fleet = fleet(&server, 5, &sink);
    let sent = server.push(
        PushTarget::User("user-2".into()),
        Bytes::from_static(b"order-7"),
        AckMode::Biz,
    );
    let msg_id = sent.msg_ids[0];
    wait("the webhook got the push", || {
        hook.st.bodies.lock().unwrap().len() == 1
    });
    assert!(!acked(&server, msg_id), "acked before the webhook answered");
    hook.st.hold.send_replace(false);
    wait("the BIZ_ACK push acked", || acked(&server, msg_id));
    let body = hook.st.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["deviceId"], "device-2");
    assert_eq!(body["content"], "b3JkZXItNw==");
    fleet.stop().unwrap();
    sink.close(Duration::from_secs(5));
    server.shutdown();
}

#[test]
fn fleet_biz_ack_after_xadd() {
    if !common::io_uring_or_skip("fleet_biz_ack_after_xadd") {
        return;
    }
    let Some(redis) = RedisProcess::start("fleet_biz_ack_after_xadd") else {
        return;
    };
    let server = Server::start(ServerConfig::new()).unwrap();
    let sink = Sink::start(stream_spec(&redis, "fleet", None), 64).unwrap();
    let fleet = fleet(&server, 5, &sink);
    let mut ids = Vec::new();
    for u in 0..5 {
        let sent = server.push(
            PushTarget::User(format!("user-{u}")),
            Bytes::from(format!("p{u}")),
            AckMode::Biz,
        );
        ids.extend(sent.msg_ids);
    }
    wait("every BIZ_ACK push acked", || {
        ids.iter().all(|&id| acked(&server, id))
    });
    assert_eq!(redis.resp().ok(&["XLEN", "fleet"]).int(), Some(5));
    fleet.stop().unwrap();
    sink.close(Duration::from_secs(5));
    server.shutdown();
}

#[test]
fn a_webhook_that_answers_garbage_takes_nothing_and_loses_nothing() {
    let liar = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = liar.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in liar.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/9 banana\r\n\xff\xfe\r\n\r\n");
        }
    });
    let spec = SinkSpec::Webhook(WebhookSpec {
        authority: addr.to_string(),
        path: "/in".into(),
        inflight: 2,
    });
    let sink = Sink::start(spec, 8).unwrap();
    let taken = Arc::new(AtomicU64::new(0));
    send(&sink, 0, 2, &taken);
    wait("the garbage answers counted as failures", || {
        sink.counters().errors >= 2
    });
    assert_eq!(taken.load(Ordering::SeqCst), 0);
    let drain = sink.close(Duration::from_millis(200));
    assert_eq!((drain.acked, drain.left), (0, 2), "{drain:?}");
}
