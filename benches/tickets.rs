//! Tickets per second through `RedisTickets` (one store, one connection, driven as a shard
//! drives it: a turn's requests, `flush`, wait for the wake, drain), against the same
//! redis-server's own `redis-benchmark -P 64 -t get,set -n 200000 -q`, in one run.
//!
//! `cargo bench --bench tickets`. Starts its own redis-server on a free loopback port
//! (redis-server and redis-benchmark must be installed). Prints a summary line per figure at
//! the end: store tickets/s, redis-benchmark requests/s, and their ratio.

#[path = "../tests/common/redis.rs"]
mod redis_harness;

use std::process::Command;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mpush_fleet::crypto::AesCipher;
use mpush_fleet::device::Template;
use mpush_fleet::tickets::format::ClientTicket;
use mpush_fleet::tickets::{Loaded, RedisConfig, RedisTickets, TicketStore};
use redis_harness::RedisProcess;
use tokio::sync::Notify;

/// Requests per shard turn: what a shard ramping fast connects queues in one turn.
const TURN: usize = 1_000;
/// Total requests per summary figure, as redis-benchmark's `-n`.
const TOTAL: usize = 200_000;

struct Driver {
    rt: tokio::runtime::Runtime,
    store: RedisTickets,
    notify: Arc<Notify>,
    out: Vec<Loaded>,
}

impl Driver {
    fn new(url: String) -> Driver {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut store =
            RedisTickets::new(RedisConfig::new(url), Template::new("device-{i}")).unwrap();
        let notify = Arc::new(Notify::new());
        let n = notify.clone();
        {
            let _rt = rt.enter();
            store.attach(Arc::new(move || n.notify_one()));
        }
        Driver {
            rt,
            store,
            notify,
            out: Vec::new(),
        }
    }

    /// Runs `total` requests made by `make`, `TURN` per turn, keeping the store busy as a
    /// shard would: each turn drains answers, queues the next requests and flushes.
    fn run(&mut self, total: usize, mut make: impl FnMut(&mut RedisTickets, usize)) {
        let (store, notify, out) = (&mut self.store, &self.notify, &mut self.out);
        self.rt.block_on(async {
            let mut made = 0;
            loop {
                store.drain_ready(out);
                out.clear();
                let turn = TURN.min(total - made);
                for i in made..made + turn {
                    make(store, i);
                }
                made += turn;
                store.flush();
                if made == total && !store.pending() {
                    let c = store.take_counters();
                    assert_eq!(c.errors, 0, "the store failed during the bench");
                    return;
                }
                notify.notified().await;
            }
        });
    }
}

fn ticket() -> ClientTicket {
    ClientTicket {
        session_id: "0123456789abcdef0123456789abcdef".into(),
        expire_time_ms: now_ms() + 86_400_000,
        cipher: AesCipher::new([7; 16], [9; 16]),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `redis-benchmark -q` lines: `SET: 123456.79 requests per second, p50=...`.
fn redis_benchmark(port: u16, value_len: usize) -> Vec<(String, f64)> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-d", &value_len.to_string()])
        .args(["-P", "64", "-t", "get,set", "-n", &TOTAL.to_string(), "-q"])
        .output()
        .expect("redis-benchmark runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split(['\r', '\n'])
        .filter(|l| l.contains("requests per second"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let rps = rest.split_whitespace().next()?.parse().ok()?;
            Some((name.trim().to_owned(), rps))
        })
        .collect()
}

fn tickets(c: &mut Criterion) {
    let redis = RedisProcess::start("bench tickets").expect("redis-server installed");
    let mut d = Driver::new(redis.url());
    let t = ticket();
    let json_len = t.to_json().len();

    let mut group = c.benchmark_group("redis_tickets");
    group.sample_size(20);
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("save_10k", |b| {
        b.iter(|| d.run(10_000, |s, i| s.save(i as u32, &t, now_ms())))
    });
    group.bench_function("load_10k", |b| {
        b.iter(|| d.run(10_000, |s, i| s.load(i as u32)))
    });
    group.finish();

    // The summary: the same request count as redis-benchmark, back to back, same server.
    let timed = |d: &mut Driver, f: &mut dyn FnMut(&mut RedisTickets, usize)| {
        let start = Instant::now();
        d.run(TOTAL, f);
        TOTAL as f64 / start.elapsed().as_secs_f64()
    };
    let save = timed(&mut d, &mut |s, i| s.save(i as u32, &t, now_ms()));
    let load = timed(&mut d, &mut |s, i| s.load(i as u32));
    // The command (3-byte values), then with values of a ticket's size.
    let reference = redis_benchmark(redis.port(), 3);
    let sized = redis_benchmark(redis.port(), json_len);
    let sized_rps = |name: &str| {
        sized
            .iter()
            .find(|(n, _)| n == name)
            .map_or(f64::NAN, |(_, r)| *r)
    };
    let rps = |name: &str| {
        reference
            .iter()
            .find(|(n, _)| n == name)
            .map_or(f64::NAN, |(_, r)| *r)
    };
    println!(
        "\n## summary ({TOTAL} requests each; ticket value {json_len} bytes; {TURN} per turn)"
    );
    println!("store save (SET PX): {save:.0} tickets/s");
    println!("store load (GET):    {load:.0} tickets/s");
    println!(
        "redis-benchmark -P 64 SET: {:.0} requests/s (3-byte values)",
        rps("SET")
    );
    println!("redis-benchmark -P 64 GET: {:.0} requests/s", rps("GET"));
    println!(
        "redis-benchmark -P 64 -d {json_len}: SET {:.0}, GET {:.0} requests/s",
        sized_rps("SET"),
        sized_rps("GET")
    );
    println!(
        "ratio store/redis-benchmark: save {:.2}, load {:.2}",
        save / rps("SET"),
        load / rps("GET")
    );
}

criterion_group!(benches, tickets);
criterion_main!(benches);
