//! `--metrics`: the fleet's counters and latency histograms as a Prometheus text endpoint.
//!
//! The exposition text comes from `prometheus-client` (text format 0.0.4); a scrape calls the
//! source closure once, so the figures are the control plane's latest merge, never a shard's
//! live state. A tiny std HTTP responder on its own thread answers `GET /metrics`: Prometheus
//! scrapes every few seconds, one connection at a time is plenty.
//!
//! Latencies are exposed as Prometheus *histograms* (`mpush_fleet_latency_seconds{op=..}`),
//! not summaries: bucket counts add up across processes (several processes split one fleet),
//! so `histogram_quantile` over `sum by (le)` gives fleet-wide percentiles; a summary's
//! quantiles cannot be combined. The HDR histogram's recorded values are sorted into the
//! fixed buckets of [`BUCKETS_SECS`]; `_sum` is the HDR mean times the count (HDR keeps no
//! exact sum), exact within the histogram's 3 significant digits.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{Counters, Latency, Reading, ShardStats};

/// Histogram bucket upper bounds, seconds: 0.5 ms to 60 s, about three per decade, which
/// covers loopback connects and slow handshakes under load alike.
pub const BUCKETS_SECS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// What the endpoint reads on each scrape.
pub type StatsSource = Arc<dyn Fn() -> ShardStats + Send + Sync>;

/// A running metrics endpoint; stops when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MetricsServer {
    /// The address it listens on (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the listener thread and waits for it.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept; if the connect fails the listener is already gone.
        let _ = TcpStream::connect(self.addr);
        let _ = thread.join();
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Starts the endpoint on `addr` (port 0 picks a free port).
///
/// # Errors
///
/// The address cannot be bound, or the thread cannot be spawned.
pub fn serve_metrics(addr: SocketAddr, source: StatsSource) -> anyhow::Result<MetricsServer> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding metrics on {addr}"))?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    break;
                }
                // A failed accept or a broken client affects that scrape only.
                if let Ok(conn) = conn {
                    if let Err(e) = answer(conn, &source) {
                        tracing::debug!(error = %e, "metrics request failed");
                    }
                }
            }
        })
        .context("spawning the metrics thread")?;
    Ok(MetricsServer {
        addr,
        stop,
        thread: Some(thread),
    })
}

/// The exposition text of `stats`.
///
/// # Errors
///
/// Only if the encoder fails, which writing into a `String` does not.
pub fn render(stats: &ShardStats) -> Result<String, fmt::Error> {
    render_owned(stats.clone())
}

fn render_owned(stats: ShardStats) -> Result<String, fmt::Error> {
    let mut registry = Registry::with_prefix("mpush_fleet");
    registry.register_collector(Box::new(Snapshot(stats)));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Longest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;

fn answer(mut conn: TcpStream, source: &StatsSource) -> std::io::Result<()> {
    // A client that connects and says nothing must not hold the only thread for long.
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(
                &mut conn,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
            );
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => match render_owned(source()) {
            Ok(body) => respond(
                &mut conn,
                "200 OK",
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                body.as_bytes(),
            ),
            Err(_) => respond(&mut conn, "500 Internal Server Error", "text/plain", b""),
        },
        (b"GET", _) => respond(&mut conn, "404 Not Found", "text/plain", b"try /metrics\n"),
        _ => respond(&mut conn, "405 Method Not Allowed", "text/plain", b""),
    }
}

fn respond(
    conn: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

/// One scrape's figures.
#[derive(Debug)]
struct Snapshot(ShardStats);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let c = &self.0.counters;
        // Names, kinds and help texts come from the counters' one table.
        for field in Counters::FIELDS {
            let (name, help) = (field.prometheus, field.doc);
            match (field.read)(c) {
                Reading::Count(n) => {
                    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                    m.encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
                Reading::Level(n) => {
                    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                    m.encode_gauge(&n)?;
                }
                Reading::ByCode(codes) => {
                    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                    for (code, n) in codes {
                        let labels = [("code", code.to_string())];
                        m.encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(n, None)?;
                    }
                }
            }
        }
        let mut m = encoder.encode_descriptor(
            "latency_seconds",
            "Latencies by operation (connect, handshake, fast_connect, bind, heartbeat_rtt, \
             push_to_sink)",
            None,
            MetricType::Histogram,
        )?;
        for l in Latency::ALL {
            let h = self.0.latencies.get(l);
            let (sum, count, buckets) = buckets(h);
            let labels = [("op", l.name())];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                sum,
                count,
                &buckets,
                None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
            )?;
        }
        Ok(())
    }
}

/// (sum in seconds, count, per-bucket counts — not cumulative, the encoder adds them up) of a
/// microsecond HDR histogram; samples above the last bound land only in `+Inf` via `count`.
fn buckets(h: &Histogram<u64>) -> (f64, u64, Vec<(f64, u64)>) {
    let mut out: Vec<(f64, u64)> = BUCKETS_SECS.iter().map(|&b| (b, 0)).collect();
    for v in h.iter_recorded() {
        let secs = h.highest_equivalent(v.value_iterated_to()) as f64 / 1e6;
        if let Some(slot) = out.iter_mut().find(|(le, _)| secs <= *le) {
            slot.1 += v.count_at_value();
        }
    }
    let count = h.len();
    (h.mean() * count as f64 / 1e6, count, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_filled_from_hdr() {
        let mut s = ShardStats::default();
        s.latencies.record(Latency::Bind, 300); // 0.3 ms -> le 0.0005
        s.latencies.record(Latency::Bind, 7_000); // 7 ms -> le 0.01
        s.latencies.record(Latency::Bind, 120_000_000); // 120 s -> only +Inf
        let (sum, count, b) = buckets(s.latencies.get(Latency::Bind));
        assert_eq!(count, 3);
        assert_eq!(b[0], (0.0005, 1));
        assert_eq!(b[4], (0.01, 1));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 2);
        assert!((sum - 120.0073).abs() < 0.2, "{sum}");
    }
}
