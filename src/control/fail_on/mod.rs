//! `--fail-on`: thresholds that turn a run into a pass/fail check (exit code 1).
//!
//! Each threshold names the failure: `online<99.9%` fails the run when fewer than 99.9% of the
//! fleet's devices were online. Forms:
//!
//! - `COUNTER OP N`: a [`Counters`](crate::stats::Counters) field by its name
//!   ([`Counters::FIELDS`](crate::stats::Counters::FIELDS)) (`errors`, `reconnects`,
//!   `read_timeouts`, ...); `errors` is the sum over codes, `errors.103` one code;
//! - `COUNTER OP P%`: the counter as a percentage of the fleet's device count (`online`,
//!   `ever_online`, `bound`, ...);
//! - `LATENCY.STAT OP Dunit`: a [`Latency`] by name and a [`Summary`] field, `p50`, `p90`,
//!   `p99`, `p999` or `max`, with a unit `us`, `ms` or `s` (`handshake.p99>500ms`).
//!
//! - `PHASE.FIGURE OP N`, `PHASE.online OP P%`, `PHASE.LATENCY.STAT OP Dunit`: a figure of one
//!   phase of `--stages` by its name (`storm.timeouts>0`, `churn.fast_connect.p99>1s`); the
//!   figures are [`PhaseCounts::NAMES`](crate::stages::PhaseCounts::NAMES), the latencies
//!   `handshake` and `fast_connect`.
//!
//! - `push.FIGURE OP N`, `push.errors.CODE OP N`, `push.LATENCY.STAT OP Dunit`: the figures
//!   of `run --push-rate` (`push.lost>0`, `push.no_reply>0`, `push.errors.1>0`,
//!   `push.e2e.p99>200ms`, `push.acked.p99>..`, `push.reply.p99>..`), the counters
//!   `push_*` and latencies `push_e2e`, `push_acked`, `push_reply` under their short names.
//!
//! `OP` is `<`, `<=`, `>` or `>=`. Several thresholds: comma-separated or a repeated flag.
//!
//! Here: what a threshold is ([`Threshold`], [`Metric`]) and its verdict. Beside it: `parse`
//! (the text forms above, and the check that named phases exist) and `judge` (a threshold
//! against a finished run's figures).

mod judge;
mod parse;
#[cfg(test)]
mod tests;

use std::fmt;

use crate::stats::{Latency, Summary};

pub use self::judge::{evaluate, judge};
pub use self::parse::{check_phases, parse_list};

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Op {
    fn holds(self, actual: f64, limit: f64) -> bool {
        match self {
            Op::Lt => actual < limit,
            Op::Le => actual <= limit,
            Op::Gt => actual > limit,
            Op::Ge => actual >= limit,
        }
    }
}

/// A percentile or the maximum of a latency [`Summary`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Median.
    P50,
    /// 90th percentile.
    P90,
    /// 99th percentile.
    P99,
    /// 99.9th percentile.
    P999,
    /// Largest sample.
    Max,
}

impl Stat {
    fn parse(s: &str) -> Option<Stat> {
        Some(match s {
            "p50" => Stat::P50,
            "p90" => Stat::P90,
            "p99" => Stat::P99,
            "p999" => Stat::P999,
            "max" => Stat::Max,
            _ => return None,
        })
    }

    fn of(self, s: &Summary) -> f64 {
        match self {
            Stat::P50 => s.p50_ms,
            Stat::P90 => s.p90_ms,
            Stat::P99 => s.p99_ms,
            Stat::P999 => s.p999_ms,
            Stat::Max => s.max_ms,
        }
    }
}

/// What a threshold measures.
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    /// A counter's value (name of a [`Counters`](crate::stats::Counters) field; `errors` sums
    /// every code).
    Counter(String),
    /// A counter as a percentage of the fleet's devices.
    Percent(String),
    /// ERROR replies with one code.
    ErrorCode(u8),
    /// One code of a per-code counter other than `errors` (`push.errors.2`).
    CodeOf(String, u8),
    /// A latency statistic, in milliseconds.
    Latency(Latency, Stat),
    /// A figure of the phase of this name.
    Phase(String, PhaseMetric),
}

/// What a phase threshold measures.
#[derive(Clone, Debug, PartialEq)]
pub enum PhaseMetric {
    /// A count ([`PhaseCounts::NAMES`](crate::stages::PhaseCounts::NAMES); `online` is the
    /// count at the phase's end).
    Count(String),
    /// `online` at the phase's end as a percentage of the fleet's devices.
    Percent,
    /// A latency statistic over the phase, in milliseconds.
    Latency(Latency, Stat),
}

/// One parsed `--fail-on` threshold: the run fails when `metric op limit` holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    /// What is compared.
    pub metric: Metric,
    /// How.
    pub op: Op,
    /// Against what: a count, a percentage, or milliseconds.
    pub limit: f64,
    text: String,
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A threshold that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--fail-on {text:?}: {why}")]
pub struct FailOnError {
    /// The threshold as given.
    pub text: String,
    /// What is wrong with it.
    pub why: String,
}

/// One threshold judged at the end of a run, for the summary table: whether it failed the
/// run, and what was measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The threshold as given (`online<99.9%`).
    pub threshold: String,
    /// Whether its condition held, which fails the run.
    pub failed: bool,
    /// What was measured, readable (`online was 100.000% (50 of 50 devices)`).
    pub actual: String,
}
