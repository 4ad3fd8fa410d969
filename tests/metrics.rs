//! The `--metrics` endpoint scraped over real HTTP on loopback and its text parsed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};

use mpush_fleet::http::metrics::serve_metrics;
use mpush_fleet::stats::{Latency, ShardStats};

/// One HTTP GET on its own connection (`Connection: close`); returns (status line, body).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    // The server closes after the response, as the request asked.
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Sample lines of the exposition text: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (key, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad sample line {l:?}"));
            let v = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")),
            };
            (key.to_string(), v)
        })
        .collect()
}

#[test]
fn scrape_parses_with_counters_gauges_and_histograms() {
    let mut stats = ShardStats::default();
    stats.counters.handshakes = 5;
    stats.counters.reconnects = 2;
    stats.counters.online = 3;
    stats.counters.error(103);
    stats.counters.error(103);
    for us in [800, 4_000, 9_000, 2_000_000] {
        stats.latencies.record(Latency::Handshake, us);
    }
    let shared = Arc::new(Mutex::new(stats));
    let source = shared.clone();
    let server = serve_metrics(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(move || source.lock().unwrap().clone()),
    )
    .unwrap();
    let addr = server.local_addr();

    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.contains("# TYPE mpush_fleet_handshakes_total counter"),
        "{body}"
    );
    assert!(body.contains("# TYPE mpush_fleet_online gauge"), "{body}");
    assert!(
        body.contains("# TYPE mpush_fleet_latency_seconds histogram"),
        "{body}"
    );
    let m = samples(&body);
    assert_eq!(m["mpush_fleet_handshakes_total"], 5.0);
    assert_eq!(m["mpush_fleet_reconnects_total"], 2.0);
    assert_eq!(m["mpush_fleet_online"], 3.0);
    assert_eq!(m["mpush_fleet_server_errors_total{code=\"103\"}"], 2.0);
    assert_eq!(
        m["mpush_fleet_latency_seconds_count{op=\"handshake\"}"],
        4.0
    );
    // Cumulative buckets: 0.8 ms under 1 ms; 0.8, 4 and 9 ms under 10 ms; all under +Inf.
    assert_eq!(
        m["mpush_fleet_latency_seconds_bucket{op=\"handshake\",le=\"0.001\"}"],
        1.0
    );
    assert_eq!(
        m["mpush_fleet_latency_seconds_bucket{op=\"handshake\",le=\"0.01\"}"],
        3.0
    );
    assert_eq!(
        m["mpush_fleet_latency_seconds_bucket{op=\"handshake\",le=\"2.5\"}"],
        4.0
    );
    assert_eq!(
        m["mpush_fleet_latency_seconds_bucket{op=\"handshake\",le=\"+Inf\"}"],
        4.0
    );
    let sum = m["mpush_fleet_latency_seconds_sum{op=\"handshake\"}"];
    assert!((sum - 2.0138).abs() < 0.01, "sum {sum}");
    assert_eq!(m["mpush_fleet_latency_seconds_count{op=\"connect\"}"], 0.0);

    // Each scrape reads the source again.
    shared.lock().unwrap().counters.handshakes = 6;
    let (_, body) = get(addr, "/metrics");
    assert_eq!(samples(&body)["mpush_fleet_handshakes_total"], 6.0);

    // Anything else is answered, not crashed on.
    assert_eq!(get(addr, "/").0, "HTTP/1.1 404 Not Found");
    assert_eq!(
        get(addr, "/metrics/").0,
        "HTTP/1.1 200 OK",
        "trailing slash"
    );
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /metrics HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"garbage\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(get(addr, "/metrics").0, "HTTP/1.1 200 OK");

    // Keep-alive: two scrapes on one connection, then a shutdown with it still open.
    let mut s = TcpStream::connect(addr).unwrap();
    let mut buf = [0u8; 4096];
    for _ in 0..2 {
        write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut got = Vec::new();
        // Read until the whole body is in (its length is in the head).
        loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed mid-response");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("content-length");
                if body.len() >= len {
                    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                    break;
                }
            }
        }
    }
    server.shutdown();
    drop(s);
}

#[test]
fn per_server_series_are_labelled_and_bounded() {
    use mpush_fleet::stats::servers::{MAX_LABELLED, OTHER};
    let mut stats = ShardStats::default();
    let a: SocketAddr = "127.0.0.1:3000".parse().unwrap();
    let b: SocketAddr = "[::1]:3001".parse().unwrap();
    stats.servers.entry(a).connects = 7;
    stats.servers.entry(a).online = 5;
    stats.servers.entry(b).connects = 2;
    stats.servers.entry(b).connect_failures = 1;
    stats.servers.entry(b).errors = 3;
    let shared = Arc::new(Mutex::new(stats));
    let source = shared.clone();
    let server = serve_metrics(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(move || source.lock().unwrap().clone()),
    )
    .unwrap();
    let addr = server.local_addr();
    let (_, body) = get(addr, "/metrics");
    assert!(
        body.contains("# TYPE mpush_fleet_server_online gauge"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE mpush_fleet_server_connects_total counter"),
        "{body}"
    );
    let m = samples(&body);
    let at = |name: &str, server: &str| m[&format!("mpush_fleet_{name}{{server=\"{server}\"}}")];
    assert_eq!(at("server_connects_total", "127.0.0.1:3000"), 7.0);
    assert_eq!(at("server_online", "127.0.0.1:3000"), 5.0);
    assert_eq!(at("server_connect_failures_total", "[::1]:3001"), 1.0);
    assert_eq!(at("server_session_errors_total", "[::1]:3001"), 3.0);
    assert!(!body.contains(&format!("server=\"{OTHER}\"")), "{body}");

    // Many servers (a long soak following ZooKeeper): the labels stop at MAX_LABELLED and
    // the rest are summed under server="other", scrape after scrape.
    for i in 0..2 * MAX_LABELLED as u16 {
        let s = SocketAddr::from(([10, 0, 0, 1], 4000 + i));
        shared.lock().unwrap().servers.entry(s).connects = 1;
    }
    let count_series = |body: &str| {
        body.lines()
            .filter(|l| l.starts_with("mpush_fleet_server_connects_total{"))
            .count()
    };
    let (_, body) = get(addr, "/metrics");
    assert_eq!(count_series(&body), MAX_LABELLED + 1, "{body}");
    let m = samples(&body);
    let other = m[&format!("mpush_fleet_server_connects_total{{server=\"{OTHER}\"}}")];
    // 2 + 64 servers, 32 labelled: the first two and 30 of the new ones; 34 in other.
    assert_eq!(other, (2 * MAX_LABELLED + 2 - MAX_LABELLED) as f64);
    assert_eq!(
        m["mpush_fleet_server_connects_total{server=\"127.0.0.1:3000\"}"],
        7.0
    );
    let (_, again) = get(addr, "/metrics");
    assert_eq!(samples(&again), m, "the same series from scrape to scrape");
    server.shutdown();
}
