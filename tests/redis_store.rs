//! The Redis ticket store and session store against a real redis-server on loopback, driven
//! from a tokio current-thread runtime as a shard drives its store (no io_uring needed).
//! Waits are on conditions with deadlines, never sleeps.

mod common;
#[path = "common/redis.rs"]
mod redis_harness;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpush_fleet::crypto::AesCipher;
use mpush_fleet::device::Template;
use mpush_fleet::server::SessionStore;
use mpush_fleet::tickets::format::{ClientTicket, ReusableSession};
use mpush_fleet::tickets::redis::MAX_PIPELINE;
use mpush_fleet::tickets::{
    Loaded, RedisConfig, RedisSessions, RedisTickets, StoreCounters, TicketStore,
};
use redis_harness::{RedisProcess, Reply};
use tokio::sync::Notify;

const PATIENCE: Duration = Duration::from_secs(30);

/// The device id template of the drivers' stores: device `i`'s ticket is `mp:fcd:dev-{i}`.
const DEVICE_ID: &str = "dev-{i}";

/// A store driven the way a shard drives it: requests, `flush`, sleep until woken, drain.
struct Driver {
    rt: tokio::runtime::Runtime,
    store: RedisTickets,
    notify: Arc<Notify>,
    wakes: Arc<AtomicUsize>,
    counters: StoreCounters,
}

impl Driver {
    fn new(config: RedisConfig) -> Driver {
        Driver::with_ids(config, Template::new(DEVICE_ID))
    }

    fn with_ids(config: RedisConfig, device_id: Template) -> Driver {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut store = RedisTickets::new(config, device_id).expect("valid URL");
        let notify = Arc::new(Notify::new());
        let wakes = Arc::new(AtomicUsize::new(0));
        let (n, w) = (notify.clone(), wakes.clone());
        {
            let _in_runtime = rt.enter();
            store.attach(Arc::new(move || {
                w.fetch_add(1, Ordering::SeqCst);
                n.notify_one();
            }));
        }
        Driver {
            rt,
            store,
            notify,
            wakes,
            counters: StoreCounters::default(),
        }
    }

    fn url(url: String) -> Driver {
        Driver::new(RedisConfig::new(url))
    }

    /// Flushes and waits until every request is answered; returns the loads' answers.
    fn settle(&mut self) -> Vec<Loaded> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let (store, notify) = (&mut self.store, &self.notify);
        let out = self.rt.block_on(async {
            let mut out = Vec::new();
            loop {
                // The shard's order: answers first (they free in-flight room), then the flush.
                store.drain_ready(&mut out);
                store.flush();
                if !store.pending() {
                    return out;
                }
                tokio::time::timeout_at(deadline, notify.notified())
                    .await
                    .expect("the store answers before the deadline");
            }
        });
        let c = self.store.take_counters();
        self.counters.saved += c.saved;
        self.counters.errors += c.errors;
        out
    }

    fn load(&mut self, device: u32) -> Option<ClientTicket> {
        self.store.load(device);
        let mut out = self.settle();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].device, device);
        out.pop().unwrap().ticket
    }

    fn save(&mut self, device: u32, ticket: &ClientTicket, wall_ms: i64) {
        self.store.save(device, ticket, wall_ms);
        assert!(self.settle().is_empty());
    }

    /// Lets the runtime run (fred's reconnect timers) between two polls of a condition.
    fn idle(&self) {
        self.rt
            .block_on(async { tokio::time::sleep(Duration::from_millis(5)).await });
    }

    fn take(&mut self) -> StoreCounters {
        std::mem::take(&mut self.counters)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn ticket(n: u8, expire_time_ms: i64) -> ClientTicket {
    ClientTicket {
        session_id: format!("{n:032x}"),
        expire_time_ms,
        cipher: AesCipher::new([n; 16], [n.wrapping_add(1); 16]),
    }
}

fn vectors() -> Option<serde_json::Value> {
    let dir = common::vectors_dir()?;
    let text = std::fs::read_to_string(dir.join("tickets.json")).expect("tickets.json");
    Some(serde_json::from_str(&text).expect("tickets.json is JSON"))
}

/// The Java tools' own `mp:fcd:` sample is read by the store; written back by the store it is
/// byte for byte what Java wrote.
#[test]
fn java_sample_ticket_is_read_and_written_back_byte_for_byte() {
    let Some(redis) =
        RedisProcess::start("java_sample_ticket_is_read_and_written_back_byte_for_byte")
    else {
        return;
    };
    let Some(v) = vectors() else { return };
    let (key, value) = (
        v["client_ticket"]["key"].as_str().unwrap(),
        v["client_ticket"]["value"].as_str().unwrap(),
    );
    let device = key
        .strip_prefix("mp:fcd:")
        .expect("sample key has the mp:fcd: prefix");
    let mut resp = redis.resp();
    resp.ok(&["SET", key, value]);

    // A template without `{i}`: every index renders the sample's device id.
    let mut d = Driver::with_ids(RedisConfig::new(redis.url()), Template::new(device));
    let device = 7;
    let t = d.load(device).expect("the Java sample loads");
    assert_eq!(t, ClientTicket::from_json(value).unwrap());
    assert_eq!(t.session_id, "0123456789abcdef0123456789abcdef");
    assert_eq!(t.expire_time_ms, 1_764_115_200_123);
    assert_eq!(
        hex::encode(t.cipher.key()),
        v["aes"]["key_hex"].as_str().unwrap()
    );
    assert_eq!(
        hex::encode(t.cipher.iv()),
        v["aes"]["iv_hex"].as_str().unwrap()
    );

    resp.ok(&["DEL", key]);
    // Written "before" its expiry, so that it is kept.
    d.save(device, &t, t.expire_time_ms - 60_000);
    assert_eq!(
        resp.get(key).as_deref(),
        Some(value),
        "byte-compatible with the Java writer"
    );
    assert_eq!(
        d.take(),
        StoreCounters {
            saved: 1,
            errors: 0
        }
    );
}

/// One atomic `SET ... PX` per save (no EXPIRE); the TTL is the configured one, cut to the
/// ticket's expireTime; an expired ticket is not written.
#[test]
fn saves_are_atomic_with_a_ttl_that_never_outlives_the_ticket() {
    let Some(redis) =
        RedisProcess::start("saves_are_atomic_with_a_ttl_that_never_outlives_the_ticket")
    else {
        return;
    };
    let mut resp = redis.resp();
    let mut cfg = RedisConfig::new(redis.url());
    cfg.ticket_ttl = Duration::from_secs(100);
    cfg.prefix = "fleet-a:".into();
    let mut d = Driver::new(cfg);
    resp.ok(&["CONFIG", "RESETSTAT"]);
    let now = now_ms();
    let (long, short, gone) = (1, 2, 3);
    d.save(long, &ticket(1, now + 1_000_000_000), now);
    d.save(short, &ticket(2, now + 5_000), now);
    d.save(gone, &ticket(3, now - 1), now);
    assert_eq!(
        d.take(),
        StoreCounters {
            saved: 2,
            errors: 0
        }
    );

    let long = resp.pttl("fleet-a:dev-1");
    assert!(long > 5_000 && long <= 100_000, "configured TTL: {long}");
    let short = resp.pttl("fleet-a:dev-2");
    assert!(
        short > 0 && short <= 5_000,
        "cut to the expireTime: {short}"
    );
    assert_eq!(
        resp.pttl("fleet-a:dev-3"),
        -2,
        "expired tickets are not written"
    );
    assert_eq!(
        resp.keys("mp:fcd:*"),
        Vec::<String>::new(),
        "the prefix is configurable"
    );

    let stats = resp.ok(&["INFO", "commandstats"]).text().unwrap();
    assert!(stats.contains("cmdstat_set:calls=2,"), "{stats}");
    assert!(
        !stats.contains("cmdstat_expire") && !stats.contains("cmdstat_pexpire"),
        "{stats}"
    );

    // Delete.
    d.store.delete(1);
    assert!(d.settle().is_empty());
    assert_eq!(resp.pttl("fleet-a:dev-1"), -2);
}

/// Values that are not tickets: counted errors and `None`, never a panic.
#[test]
fn corrupted_values_are_counted_errors_and_none() {
    let Some(redis) = RedisProcess::start("corrupted_values_are_counted_errors_and_none") else {
        return;
    };
    let mut resp = redis.resp();
    let good = ticket(4, now_ms() + 100_000).to_json();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not-json", b"garbage{".to_vec()),
        ("empty", Vec::new()),
        ("array", b"[1,2]".to_vec()),
        (
            "number-expire",
            good.replacen("\"expireTime\":\"", "\"expireTime\":", 1)
                .replacen("\",\"sessionId\"", ",\"sessionId\"", 1)
                .into_bytes(),
        ),
        (
            "object-session",
            good.replace("\"sessionId\":\"", "\"sessionId\":{\"x\":\"")
                .replace("\",\"cipherStr\"", "\"},\"cipherStr\"")
                .into_bytes(),
        ),
        ("short-key", good.replacen("|4,", ",", 1).into_bytes()),
        ("long-key", good.replacen("|4,", "|4|4,", 1).into_bytes()),
        ("byte-range", good.replacen("4|", "400|", 1).into_bytes()),
        (
            "no-cipher",
            br#"{"expireTime":"1","sessionId":"s"}"#.to_vec(),
        ),
        ("not-utf8", vec![b'{', 0xff, 0xfe, b'}']),
    ];
    for (i, (device, value)) in cases.iter().enumerate() {
        let key = format!("mp:fcd:dev-{i}");
        resp.cmd_bytes(&[b"SET", key.as_bytes(), value]).unwrap();
        assert!(
            ClientTicket::from_json(&String::from_utf8_lossy(value)).is_err(),
            "{device} must be bad"
        );
    }
    // Another Redis type under a ticket key: WRONGTYPE, a refused command.
    // Device 100 holds a hash, 101 a good ticket, 102 nothing.
    resp.ok(&["HSET", "mp:fcd:dev-100", "f", "v"]);
    resp.ok(&["SET", "mp:fcd:dev-101", &good]);

    let mut d = Driver::url(redis.url());
    for i in 0..cases.len() {
        d.store.load(i as u32);
    }
    d.store.load(100);
    d.store.load(101);
    d.store.load(102);
    let mut out = d.settle();
    out.sort_by_key(|l| l.device);
    assert_eq!(out.len(), cases.len() + 3);
    for l in &out[..cases.len() + 1] {
        assert!(l.ticket.is_none(), "device {}", l.device);
    }
    assert_eq!(
        out[cases.len() + 1]
            .ticket
            .as_ref()
            .map(ClientTicket::to_json),
        Some(good)
    );
    assert!(out[cases.len() + 2].ticket.is_none());
    // Every bad value is one error; a missing key is none.
    assert_eq!(
        d.take(),
        StoreCounters {
            saved: 0,
            errors: cases.len() as u64 + 1
        }
    );
}

/// The loads of one turn go out as pipelines of up to `MAX_PIPELINE` (one reply batch, one
/// wake each), and no more than `max_in_flight` are unanswered at once.
#[test]
fn one_turn_is_one_pipeline_and_in_flight_is_bounded() {
    let Some(redis) = RedisProcess::start("one_turn_is_one_pipeline_and_in_flight_is_bounded")
    else {
        return;
    };
    let mut d = Driver::url(redis.url());
    let t = ticket(5, now_ms() + 100_000);
    let n = 1_000;
    for i in 0..n {
        d.store.save(i, &t, now_ms());
    }
    d.settle();
    assert_eq!(
        d.take(),
        StoreCounters {
            saved: n as u64,
            errors: 0
        }
    );
    for i in 0..n {
        d.store.load(i);
    }
    let before = d.wakes.load(Ordering::SeqCst);
    let out = d.settle();
    assert_eq!(
        out.iter().filter(|l| l.ticket.as_ref() == Some(&t)).count(),
        n as usize
    );
    let pipelines = d.wakes.load(Ordering::SeqCst) - before;
    assert_eq!(
        pipelines,
        (n as usize).div_ceil(MAX_PIPELINE),
        "one reply per pipeline"
    );

    let mut cfg = RedisConfig::new(redis.url());
    cfg.max_in_flight = 100;
    let mut d = Driver::new(cfg);
    assert!(d.load(n + 1).is_none(), "warm-up: nothing stored there");
    for i in 0..n {
        d.store.load(i);
    }
    let before = d.wakes.load(Ordering::SeqCst);
    {
        let _rt = d.rt.enter();
        d.store.flush();
    }
    let queued = format!("{:?}", d.store);
    assert!(
        queued.contains("queued: 900") && queued.contains("in_flight: 100"),
        "{queued}"
    );
    let out = d.settle();
    assert_eq!(
        out.iter().filter(|l| l.ticket.is_some()).count(),
        n as usize
    );
    assert_eq!(
        d.wakes.load(Ordering::SeqCst) - before,
        10,
        "ten pipelines of 100"
    );
}

/// Redis down at start: loads answer `None` at once, errors are counted; when Redis comes
/// up, saves land again.
#[test]
fn redis_down_at_start_then_up_saves_resume() {
    if RedisProcess::start("redis_down_at_start_then_up_saves_resume").is_none() {
        return;
    }
    let port = RedisProcess::unused_port();
    let mut d = Driver::url(format!("redis://127.0.0.1:{port}/0"));
    for i in 0..10 {
        d.store.load(i);
    }
    let out = d.settle();
    assert_eq!(out.len(), 10);
    assert!(out.iter().all(|l| l.ticket.is_none()));
    let t = ticket(6, now_ms() + 100_000);
    d.save(0, &t, now_ms());
    assert_eq!(
        d.take(),
        StoreCounters {
            saved: 0,
            errors: 11
        }
    );

    let redis = RedisProcess::start_on(port);
    let mut resp = redis.resp();
    let deadline = Instant::now() + PATIENCE;
    while resp.get("mp:fcd:dev-0").is_none() {
        assert!(
            Instant::now() < deadline,
            "saves never resumed: {:?}",
            d.store
        );
        d.idle();
        d.save(0, &t, now_ms());
    }
    assert_eq!(d.load(0), Some(t));
}

/// Redis killed under a connected store and restarted on the same port: meanwhile requests
/// fail fast as counted errors; afterwards they succeed again.
#[test]
fn redis_killed_and_restarted_store_recovers() {
    let Some(mut redis) = RedisProcess::start("redis_killed_and_restarted_store_recovers") else {
        return;
    };
    let mut d = Driver::url(redis.url());
    let t = ticket(7, now_ms() + 100_000);
    d.save(1, &t, now_ms());
    assert_eq!(d.load(1), Some(t.clone()));
    assert_eq!(
        d.take(),
        StoreCounters {
            saved: 1,
            errors: 0
        }
    );

    redis.kill();
    // Within a deadline, loads fail (the connection's loss may take a request to notice).
    let deadline = Instant::now() + PATIENCE;
    while d.load(1).is_some() {
        assert!(Instant::now() < deadline, "a dead Redis still answered");
        d.idle();
    }
    assert!(d.take().errors >= 1);

    redis.restart();
    let mut resp = redis.resp();
    let deadline = Instant::now() + PATIENCE;
    while resp.get("mp:fcd:dev-2").is_none() {
        assert!(
            Instant::now() < deadline,
            "saves never resumed: {:?}",
            d.store
        );
        d.idle();
        d.save(2, &t, now_ms());
    }
    assert_eq!(d.load(2), Some(t));
}

/// Reusable sessions as the real server stores them: `mp:rs:<id>`, `ReusableSession::encode`,
/// a TTL; the Java sample reads; expire-all drops them.
#[test]
fn sessions_are_stored_in_the_real_servers_format() {
    let Some(redis) = RedisProcess::start("sessions_are_stored_in_the_real_servers_format") else {
        return;
    };
    let Some(v) = vectors() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let store = RedisSessions::new(&redis.url()).expect("valid URL");
    let mut resp = redis.resp();

    let session = ReusableSession {
        os_name: "android".into(),
        os_version: "14".into(),
        client_version: "1.0".into(),
        device_id: "device-9".into(),
        cipher: AesCipher::new([9; 16], [8; 16]),
    };
    rt.block_on(store.put("abc", &session, Duration::from_secs(86_400)))
        .unwrap();
    assert_eq!(resp.get("mp:rs:abc"), Some(session.encode()));
    let ttl = resp.pttl("mp:rs:abc");
    assert!(ttl > 3_600_000 && ttl <= 86_400_000, "{ttl}");
    assert_eq!(rt.block_on(store.get("abc")).unwrap(), Some(session));
    assert_eq!(rt.block_on(store.get("nope")).unwrap(), None);

    let (key, value) = (
        v["server_session"]["key"].as_str().unwrap(),
        v["server_session"]["value"].as_str().unwrap(),
    );
    resp.ok(&["SET", key, value]);
    let id = key.strip_prefix("mp:rs:").unwrap();
    let java = rt
        .block_on(store.get(id))
        .unwrap()
        .expect("the Java sample reads");
    assert_eq!(java.encode(), value);
    resp.ok(&["SET", "mp:rs:bad", "a,b,c"]);
    assert_eq!(
        rt.block_on(store.get("bad")).unwrap(),
        None,
        "undecodable is missing"
    );

    resp.ok(&["SET", "mp:fcd:keep", "x"]);
    assert_eq!(rt.block_on(store.expire_all()).unwrap(), 3);
    assert_eq!(resp.keys("mp:rs:*"), Vec::<String>::new());
    assert_eq!(resp.keys("mp:fcd:*"), vec!["mp:fcd:keep".to_string()]);
    assert!(matches!(resp.ok(&["PING"]), Reply::Simple(_)));
}
