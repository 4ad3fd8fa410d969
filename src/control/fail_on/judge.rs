//! `--fail-on` thresholds judged against a finished run's merged figures: every threshold's
//! [`Verdict`] for the summary table, and the failed ones as lines for the exit.

use super::{Metric, PhaseMetric, Threshold, Verdict};
use crate::stats::{Counters, Latency, Reading, ShardStats, Summary};

/// A counter's value by name, from the counters' own table (`errors`: the sum over codes).
fn counter(c: &Counters, name: &str) -> f64 {
    c.get(name).map_or(0.0, Reading::total)
}

/// The thresholds that `stats` of a fleet of `devices` devices violates, as readable lines.
pub fn evaluate(thresholds: &[Threshold], devices: u32, stats: &ShardStats) -> Vec<String> {
    judge(thresholds, devices, stats)
        .into_iter()
        .filter(|v| v.failed)
        .map(|v| format!("--fail-on {}: {}", v.threshold, v.actual))
        .collect()
}

/// Every threshold with its verdict, in the order given; [`evaluate`] lists the failed ones.
pub fn judge(thresholds: &[Threshold], devices: u32, stats: &ShardStats) -> Vec<Verdict> {
    let c = &stats.counters;
    thresholds
        .iter()
        .map(|t| {
            let (actual, shown) = match &t.metric {
                Metric::Counter(name) => {
                    let v = counter(c, name);
                    (v, format!("{name} was {v}"))
                }
                Metric::Percent(name) => {
                    let v = counter(c, name);
                    // An empty fleet is vacuously complete.
                    let pct = if devices == 0 {
                        100.0
                    } else {
                        100.0 * v / f64::from(devices)
                    };
                    (
                        pct,
                        format!("{name} was {pct:.3}% ({v} of {devices} devices)"),
                    )
                }
                Metric::CodeOf(name, code) => {
                    let v = match c.get(name) {
                        Some(Reading::ByCode(m)) => m.get(code).copied().unwrap_or(0) as f64,
                        _ => 0.0,
                    };
                    (v, format!("{name} with code {code} were {v}"))
                }
                Metric::ErrorCode(code) => {
                    let v = c.errors.get(code).copied().unwrap_or(0) as f64;
                    (v, format!("errors with code {code} were {v}"))
                }
                Metric::Latency(l, s) => {
                    let summary = Summary::of(stats.latencies.get(*l));
                    let v = s.of(&summary);
                    (v, format!("was {v:.3}ms over {} samples", summary.count))
                }
                Metric::Phase(name, m) => phase_value(stats, devices, name, m),
            };
            Verdict {
                threshold: t.to_string(),
                failed: t.op.holds(actual, t.limit),
                actual: shown,
            }
        })
        .collect()
}

/// A phase figure and how it reads; a phase that did not run reads as zero, and says so.
fn phase_value(stats: &ShardStats, devices: u32, name: &str, m: &PhaseMetric) -> (f64, String) {
    let Some(p) = stats.stages.phase(name).filter(|p| p.ran) else {
        return (0.0, format!("phase {name} did not run"));
    };
    match m {
        PhaseMetric::Count(f) => {
            let v = match f.as_str() {
                "online" => p.online_at_end as f64,
                f => p.counts.get(f).unwrap_or(0) as f64,
            };
            (v, format!("{name}.{f} was {v}"))
        }
        PhaseMetric::Percent => {
            let pct = if devices == 0 {
                100.0
            } else {
                100.0 * p.online_at_end as f64 / f64::from(devices)
            };
            (pct, format!("{name}.online was {pct:.3}%"))
        }
        PhaseMetric::Latency(l, s) => {
            let h = match l {
                Latency::FastConnect => &p.fast_connect,
                _ => &p.handshake,
            };
            let summary = Summary::of(h);
            let v = s.of(&summary);
            (v, format!("was {v:.3}ms over {} samples", summary.count))
        }
    }
}
