//! The `--report` JSON (printed as the summary too when stdout is not a terminal, or with
//! `--json`) and the status line; the table a terminal gets is in `summary`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proto::message::ErrorCode;
use crate::stats::{Counters, Latency, ShardStats, Summary};

/// The `--report` JSON.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// Devices in this process's range.
    pub devices: u32,
    /// Index of the range's first device (`--first-device`; in a merged report, the lowest).
    pub first_device: u32,
    /// Devices online at the end.
    pub online: i64,
    /// Devices that reached online at least once.
    pub ever_online: u64,
    /// Completed handshakes.
    pub handshakes: u64,
    /// Completed fast connects.
    pub fast_connects: u64,
    /// Binds acknowledged.
    pub bound: u64,
    /// Pushes received.
    pub pushes_received: u64,
    /// Acks sent.
    pub acks_sent: u64,
    /// Reconnects.
    pub reconnects: u64,
    /// ERROR replies by code name (`SESSION_EXPIRED`: 3, ...).
    pub errors: BTreeMap<String, u64>,
    /// Seconds the fleet ran.
    pub duration_secs: f64,
    /// Sessions that came up (handshakes + fast connects) per second of the run.
    pub sessions_per_sec: f64,
    /// Latency percentiles by name.
    pub latency: BTreeMap<&'static str, Summary>,
    /// Every counter.
    pub counters: Counters,
    /// What this process cost (Linux `/proc/self`); `None` where it cannot be read. In a
    /// merged report, the sum over the processes merged.
    pub process: Option<ProcessCost>,
    /// Every latency histogram, base64 HDR V2 by name, so that reports merge exactly
    /// (`mpush-fleet report merge`).
    pub histograms: BTreeMap<&'static str, String>,
    /// What `--rate auto` found: sessions/s and p99, for handshakes and fast connects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<crate::stages::Capacity>,
    /// Each phase of `--stages`, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<super::phases::PhaseReport>,
    /// Connects, online devices and errors by server address (`HOST:PORT`).
    pub servers: BTreeMap<String, crate::stats::servers::ServerFigures>,
    /// `run --push-rate`: seconds from the first push sent to the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_sending_secs: Option<f64>,
    /// `run --push-rate`: pushes sent per second over those seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_rate_achieved: Option<f64>,
}

/// CPU time and memory of this process, for the whole-system figures (bytes per idle session,
/// CPU per handshake and per fast connect).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessCost {
    /// User CPU seconds since the process started.
    pub cpu_user_secs: f64,
    /// System CPU seconds since the process started.
    pub cpu_system_secs: f64,
    /// Resident memory just before the fleet was stopped, bytes.
    pub rss_bytes_online: u64,
    /// Peak resident memory, bytes.
    pub rss_peak_bytes: u64,
}

impl ProcessCost {
    /// Reads this process's CPU times and memory; `rss_bytes_online` is the current RSS.
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = clock_ticks_per_sec();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kb = |key: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            line.split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
                .map(|k| k * 1024)
        };
        Some(ProcessCost {
            cpu_user_secs: utime / ticks,
            cpu_system_secs: stime / ticks,
            rss_bytes_online: kb("VmRSS:")?,
            rss_peak_bytes: kb("VmHWM:")?,
        })
    }
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on; read it anyway where rustix can.
fn clock_ticks_per_sec() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

impl RunReport {
    /// Builds the report of a run.
    pub fn new(devices: u32, stats: &ShardStats, elapsed: Duration) -> Self {
        let c = &stats.counters;
        let secs = elapsed.as_secs_f64().max(1e-9);
        RunReport {
            devices,
            first_device: 0,
            online: c.online,
            ever_online: c.ever_online,
            handshakes: c.handshakes,
            fast_connects: c.fast_connects,
            bound: c.bound,
            pushes_received: c.pushes_received,
            acks_sent: c.acks_sent,
            reconnects: c.reconnects,
            errors: error_names(c),
            duration_secs: elapsed.as_secs_f64(),
            sessions_per_sec: (c.handshakes + c.fast_connects) as f64 / secs,
            latency: Latency::ALL
                .iter()
                .map(|&l| (l.name(), Summary::of(stats.latencies.get(l))))
                .collect(),
            counters: c.clone(),
            process: None,
            histograms: stats.latencies.encode(),
            capacity: stats.stages.capacity,
            stages: super::phases::phase_reports(&stats.stages),
            servers: stats.servers.by_name(),
            push_sending_secs: None,
            push_rate_achieved: None,
        }
    }
}

fn error_names(c: &Counters) -> BTreeMap<String, u64> {
    c.errors
        .iter()
        .map(|(&code, &n)| (format!("{}_{code}", ErrorCode(code).name()), n))
        .collect()
}

/// One status line: where the fleet is now.
pub fn status_line(devices: u32, elapsed: Duration, stats: &ShardStats) -> String {
    let c = &stats.counters;
    let mut line = format!(
        "[{:>6.1}s] devices {devices} connected {} online {} handshakes {} fast {} bound {} \
         heartbeats {}/{} pushes {} acks {} reconnects {}",
        elapsed.as_secs_f64(),
        c.connections,
        c.online,
        c.handshakes,
        c.fast_connects,
        c.bound,
        c.heartbeats_sent,
        c.heartbeats_received,
        c.pushes_received,
        c.acks_sent,
        c.reconnects,
    );
    line.push_str(&super::phases::status(stats));
    line.push_str(&push_status(c));
    line.push_str(&super::upstream::status(c));
    if c.retries_throttled > 0 {
        line.push_str(&format!(" retries_throttled {}", c.retries_throttled));
    }
    line.push_str(&stats.servers.status());
    let errors = error_names(c);
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line.push_str(&format!(" errors {}", list.join(",")));
    }
    for l in Latency::ALL {
        let s = Summary::of(stats.latencies.get(l));
        if s.count > 0 {
            line.push_str(&format!(
                " {} p50/p99 {:.1}/{:.1}ms",
                l.name(),
                s.p50_ms,
                s.p99_ms
            ));
        }
    }
    line
}

/// The status line's part for `run --push-rate` (empty without pushes): every push sent,
/// where it ended up, and what the gateway said.
pub fn push_status(c: &Counters) -> String {
    if c.push_sent == 0 {
        return String::new();
    }
    let errors: Vec<String> = c
        .push_gateway_errors
        .iter()
        .map(|(code, n)| format!("{}={n}", ErrorCode(*code).name()))
        .collect();
    let mut s = format!(
        " | push sent {} received {} twice {} ok {} no_reply {} (received {}) explained {} \
         lost {}",
        c.push_sent,
        c.push_received,
        c.push_received_twice,
        c.push_gateway_ok,
        c.push_no_reply,
        c.push_no_reply_received,
        c.push_explained,
        c.push_lost,
    );
    if !errors.is_empty() {
        s.push_str(&format!(" gateway_errors {}", errors.join(",")));
    }
    if c.push_no_route > 0 {
        s.push_str(&format!(" no_route {}", c.push_no_route));
    }
    s
}
