//! Fleet statistics: plain per-shard counters and HDR latency histograms.
//!
//! Each shard owns one [`ShardStats`] and writes to it with plain adds: no atomics, no locks
//! on the hot path. The control plane receives a shard's counters and its latency samples
//! since the last report over a channel, and merges them.
//! Must not touch: sockets, device state. It renders text ([`prometheus`]); serving it is
//! [`crate::http`]'s job.

mod counters;
pub mod hdr;
mod latencies;
pub mod prometheus;
pub mod servers;

pub use counters::{Counters, Field, Kind, Reading};
pub use latencies::{Latencies, Sample};

use hdrhistogram::Histogram;
use serde::Serialize;

/// The latencies the fleet measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Latency {
    /// TCP connect.
    Connect,
    /// Handshake sent to HandshakeOk.
    Handshake,
    /// FastConnect sent to FastConnectOk.
    FastConnect,
    /// Bind sent to OK.
    Bind,
    /// Heartbeat sent to heartbeat received.
    HeartbeatRtt,
    /// Push received to the sink taking it.
    PushToSink,
    /// A connect waiting for the admission window or a retry token.
    WindowWait,
    /// `run --push-rate`: a push sent to the gateway until its device received it.
    PushE2e,
    /// `run --push-rate`: a push sent until its device acked it (AUTO_ACK: on receipt;
    /// BIZ_ACK: once the sink took it).
    PushAcked,
    /// `run --push-rate`: a push sent until the gateway replied (OK or ERROR).
    PushReply,
    /// A device PUSH started to the server's ACK.
    DevicePushAck,
    /// An HTTP_PROXY request started to its HttpResponse.
    HttpProxy,
}

impl Latency {
    /// Every latency, in report order.
    pub const ALL: [Latency; 12] = [
        Latency::Connect,
        Latency::Handshake,
        Latency::FastConnect,
        Latency::Bind,
        Latency::HeartbeatRtt,
        Latency::PushToSink,
        Latency::WindowWait,
        Latency::PushE2e,
        Latency::PushAcked,
        Latency::PushReply,
        Latency::DevicePushAck,
        Latency::HttpProxy,
    ];

    /// The name used in reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Latency::Connect => "connect",
            Latency::Handshake => "handshake",
            Latency::FastConnect => "fast_connect",
            Latency::Bind => "bind",
            Latency::HeartbeatRtt => "heartbeat_rtt",
            Latency::PushToSink => "push_to_sink",
            Latency::WindowWait => "window_wait",
            Latency::PushE2e => "push_e2e",
            Latency::PushAcked => "push_acked",
            Latency::PushReply => "push_reply",
            Latency::DevicePushAck => "device_push_ack",
            Latency::HttpProxy => "http_proxy",
        }
    }
}

/// What a shard measures.
#[derive(Clone, Debug, Default)]
pub struct ShardStats {
    /// Counters and gauges.
    pub counters: Counters,
    /// Latency histograms.
    pub latencies: Latencies,
    /// Per-phase figures and the capacity search's findings (empty without stages).
    pub stages: crate::stages::StageStats,
    /// Connects, online devices and errors by server.
    pub servers: servers::ByServer,
}

impl ShardStats {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &ShardStats) {
        self.counters.merge(&other.counters);
        self.latencies.merge(&other.latencies);
        self.stages.merge(&other.stages);
        self.servers.merge(&other.servers);
    }
}

/// Percentiles of one histogram, in milliseconds, for reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Summary {
    /// Summarises a microsecond histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counters_and_histograms() {
        let mut a = ShardStats::default();
        let mut b = ShardStats::default();
        a.counters.handshakes = 2;
        a.counters.error(103);
        b.counters.handshakes = 3;
        b.counters.error(103);
        b.counters.error(104);
        a.latencies.record(Latency::Handshake, 1_000);
        b.latencies.record(Latency::Handshake, 3_000);
        a.merge(&b);
        assert_eq!(a.counters.handshakes, 5);
        assert_eq!(a.counters.errors[&103], 2);
        assert_eq!(a.counters.errors[&104], 1);
        let s = Summary::of(a.latencies.get(Latency::Handshake));
        assert_eq!(s.count, 2);
        assert!(s.max_ms >= 2.9 && s.max_ms <= 3.1, "{s:?}");
    }
}
