//! The fleet's counters and latency histograms as Prometheus exposition text, from
//! `prometheus-client` (text format 0.0.4). Only the text: the `GET /metrics` endpoint that
//! serves it is [`crate::http::metrics`], so `stats` has no sockets.
//!
//! Latencies are exposed as Prometheus *histograms* (`mpush_fleet_latency_seconds{op=..}`),
//! not summaries: bucket counts add up across processes (several processes split one fleet),
//! so `histogram_quantile` over `sum by (le)` gives fleet-wide percentiles; a summary's
//! quantiles cannot be combined. The HDR histogram's recorded values are sorted into the
//! fixed buckets of [`BUCKETS_SECS`]; `_sum` is the HDR mean times the count (HDR keeps no
//! exact sum), exact within the histogram's 3 significant digits.

use std::collections::HashMap;
use std::fmt;

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::servers::{Labels, ServerFigures};
use super::{Counters, Latency, Reading, ShardStats};

/// Histogram bucket upper bounds, seconds: 0.5 ms to 60 s, about three per decade, which
/// covers loopback connects and slow handshakes under load alike.
pub const BUCKETS_SECS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The Content-Type of [`render`]'s text (text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The exposition text of `stats`, its servers labelled afresh (see [`render_labelled`]).
///
/// # Errors
///
/// Only if the encoder fails, which writing into a `String` does not.
pub fn render(stats: &ShardStats) -> Result<String, fmt::Error> {
    render_labelled(stats, &mut Labels::default())
}

/// The exposition text of `stats`; the per-server series (`server="HOST:PORT"`) are the
/// ones `labels` gives, at most [`super::servers::MAX_LABELLED`] plus `server="other"`. An
/// endpoint keeps one `labels` for its life, so series stay put from scrape to scrape.
///
/// # Errors
///
/// Only if the encoder fails, which writing into a `String` does not.
pub fn render_labelled(stats: &ShardStats, labels: &mut Labels) -> Result<String, fmt::Error> {
    let servers = labels.series(&stats.servers);
    let mut registry = Registry::with_prefix("mpush_fleet");
    registry.register_collector(Box::new(Snapshot(stats.clone(), servers)));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// One scrape's figures, and its per-server series.
#[derive(Debug)]
struct Snapshot(ShardStats, Vec<(String, ServerFigures)>);

/// The per-server metrics: name, help, whether a gauge, the figure.
type ServerMetric = (&'static str, &'static str, bool, fn(&ServerFigures) -> i64);

const SERVER_METRICS: [ServerMetric; 4] = [
    (
        "server_connects",
        "TCP connects attempted, by server",
        false,
        |f| i64::try_from(f.connects).unwrap_or(i64::MAX),
    ),
    (
        "server_connect_failures",
        "Connects that failed or timed out, by server",
        false,
        |f| i64::try_from(f.connect_failures).unwrap_or(i64::MAX),
    ),
    ("server_online", "Devices online, by server", true, |f| {
        f.online
    }),
    (
        "server_session_errors",
        "Errors of sessions (ERROR replies, undecodable frames, timeouts), by server",
        false,
        |f| i64::try_from(f.errors).unwrap_or(i64::MAX),
    ),
];

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
        if !self.1.is_empty() {
            for (name, help, gauge, read) in SERVER_METRICS {
                let kind = if gauge {
                    MetricType::Gauge
                } else {
                    MetricType::Counter
                };
                let mut m = encoder.encode_descriptor(name, help, None, kind)?;
                for (server, f) in &self.1 {
                    let labels = [("server", server.as_str())];
                    let mut family = m.encode_family(&labels)?;
                    let v = read(f);
                    if gauge {
                        family.encode_gauge(&v)?;
                    } else {
                        let v = u64::try_from(v).unwrap_or(0);
                        family.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
                    }
                }
            }
        }
        let mut m = encoder.encode_descriptor(
            "latency_seconds",
            "Latencies by operation (connect, handshake, fast_connect, bind, heartbeat_rtt, \
             push_to_sink, window_wait, device_push_ack, http_proxy)",
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
    // One pass over the counts (a scrape walks every histogram): the sum as HDR's mean
    // takes it, each value at its bucket's median.
    let mut sum_us = 0.0;
    for v in h.iter_recorded() {
        let at = v.value_iterated_to();
        let secs = h.highest_equivalent(at) as f64 / 1e6;
        if let Some(slot) = out.iter_mut().find(|(le, _)| secs <= *le) {
            slot.1 += v.count_at_value();
        }
        sum_us += h.median_equivalent(at) as f64 * v.count_at_value() as f64;
    }
    (sum_us / 1e6, h.len(), out)
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
