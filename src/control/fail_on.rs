//! `--fail-on`: thresholds that turn a run into a pass/fail check (exit code 1).
//!
//! Each threshold names the failure: `online<99.9%` fails the run when fewer than 99.9% of the
//! fleet's devices were online. Forms:
//!
//! - `COUNTER OP N`: a [`Counters`] field by its name ([`Counters::FIELDS`]) (`errors`, `reconnects`,
//!   `read_timeouts`, ...); `errors` is the sum over codes, `errors.103` one code;
//! - `COUNTER OP P%`: the counter as a percentage of the fleet's device count (`online`,
//!   `ever_online`, `bound`, ...);
//! - `LATENCY.STAT OP Dunit`: a [`Latency`] by name and a [`Summary`] field, `p50`, `p90`,
//!   `p99`, `p999` or `max`, with a unit `us`, `ms` or `s` (`handshake.p99>500ms`).
//!
//! - `PHASE.FIGURE OP N`, `PHASE.online OP P%`, `PHASE.LATENCY.STAT OP Dunit`: a figure of one
//!   phase of `--stages` by its name (`storm.timeouts>0`, `churn.fast_connect.p99>1s`); the
//!   figures are [`PhaseCounts::NAMES`], the latencies `handshake` and `fast_connect`.
//!
//! - `push.FIGURE OP N`, `push.errors.CODE OP N`, `push.LATENCY.STAT OP Dunit`: the figures
//!   of `run --push-rate` (`push.lost>0`, `push.no_reply>0`, `push.errors.1>0`,
//!   `push.e2e.p99>200ms`, `push.acked.p99>..`, `push.reply.p99>..`), the counters
//!   `push_*` and latencies `push_e2e`, `push_acked`, `push_reply` under their short names.
//!
//! `OP` is `<`, `<=`, `>` or `>=`. Several thresholds: comma-separated or a repeated flag.

use std::fmt;
use std::str::FromStr;

use crate::stages::PhaseCounts;
use crate::stats::{Counters, Latency, Reading, ShardStats, Summary};

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
    /// A counter's value (name of a [`Counters`] field; `errors` sums every code).
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
    /// A count ([`PhaseCounts::NAMES`]; `online` is the count at the phase's end).
    Count(String),
    /// `online` at the phase's end as a percentage of the fleet's devices.
    Percent,
    /// A latency statistic over the phase, in milliseconds.
    Latency(Latency, Stat),
}

/// A latency and statistic by name, and the unit's scale to ms.
fn latency_stat(lat: &str, stat: &str, unit: &str) -> Result<(Latency, Stat, f64), String> {
    let lat = Latency::ALL
        .into_iter()
        .find(|l| l.name() == lat)
        .ok_or_else(|| {
            let names: Vec<_> = Latency::ALL.iter().map(|l| l.name()).collect();
            format!("unknown latency {lat:?} (one of {})", names.join(", "))
        })?;
    let stat = Stat::parse(stat)
        .ok_or_else(|| format!("unknown statistic {stat:?} (p50, p90, p99, p999, max)"))?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "" => return Err("a latency needs a unit: us, ms or s".into()),
        u => return Err(format!("unknown unit {u:?} (us, ms, s)")),
    };
    Ok((lat, stat, scale))
}

/// `PHASE.REST` as a phase metric and the unit's scale.
fn phase_metric(rest: &str, unit: &str) -> Result<(PhaseMetric, f64), String> {
    if let Some((lat, stat)) = rest.split_once('.') {
        if lat != "handshake" && lat != "fast_connect" {
            return Err(format!(
                "a phase has the latencies handshake and fast_connect, not {lat:?}"
            ));
        }
        let (l, s, scale) = latency_stat(lat, stat, unit)?;
        return Ok((PhaseMetric::Latency(l, s), scale));
    }
    if !PhaseCounts::NAMES.contains(&rest) {
        return Err(format!(
            "unknown phase figure {rest:?} (one of {})",
            PhaseCounts::NAMES.join(", ")
        ));
    }
    match unit {
        "" => Ok((PhaseMetric::Count(rest.to_string()), 1.0)),
        "%" if rest == "online" => Ok((PhaseMetric::Percent, 1.0)),
        u => Err(format!("unit {u:?} makes no sense for {rest}")),
    }
}

/// Checks that every phase a threshold names is one of `phases`.
///
/// # Errors
///
/// The first threshold naming another, as a message.
pub fn check_phases(thresholds: &[Threshold], phases: &[&str]) -> Result<(), String> {
    for t in thresholds {
        if let Metric::Phase(name, _) = &t.metric {
            if !phases.contains(&name.as_str()) {
                let known = if phases.is_empty() {
                    "this run has no --stages".to_string()
                } else {
                    format!("the phases are {}", phases.join(", "))
                };
                return Err(format!("--fail-on {t}: no phase named {name:?} ({known})"));
            }
        }
    }
    Ok(())
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

impl FromStr for Threshold {
    type Err = FailOnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text: String = s.split_whitespace().collect();
        let err = |why: String| FailOnError {
            text: s.trim().to_string(),
            why,
        };
        let at = text
            .find(['<', '>'])
            .ok_or_else(|| err("no comparison (<, <=, >, >=)".into()))?;
        let (name, rest) = text.split_at(at);
        let (op, value) = match (rest.as_bytes()[0], rest.as_bytes().get(1)) {
            (b'<', Some(b'=')) => (Op::Le, &rest[2..]),
            (b'>', Some(b'=')) => (Op::Ge, &rest[2..]),
            (b'<', _) => (Op::Lt, &rest[1..]),
            _ => (Op::Gt, &rest[1..]),
        };
        if name.is_empty() {
            return Err(err("nothing to compare before the comparison".into()));
        }
        let split = value
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(value.len());
        let (num, unit) = value.split_at(split);
        let limit: f64 = num
            .parse()
            .map_err(|_| err(format!("{num:?} is not a number")))?;
        if !limit.is_finite() {
            return Err(err(format!("{num:?} is not a number")));
        }
        // `run --push-rate`'s figures: `push.lost`, `push.e2e.p99`, `push.errors.2` name the
        // counters and latencies `push_lost`, `push_e2e`, `push_gateway_errors`.
        let alias = name.strip_prefix("push.").map(|rest| match rest {
            "errors" => "push_gateway_errors".to_string(),
            r => format!("push_{r}"),
        });
        if let Some(code) = alias
            .as_deref()
            .and_then(|a| a.strip_prefix("push_errors."))
        {
            let code: u8 = code
                .parse()
                .map_err(|_| err(format!("{code:?} is not an error code")))?;
            if !unit.is_empty() {
                return Err(err(format!("unit {unit:?} makes no sense for a count")));
            }
            return Ok(Threshold {
                metric: Metric::CodeOf("push_gateway_errors".into(), code),
                op,
                limit,
                text,
            });
        }
        let name = alias.as_deref().unwrap_or(name);
        let is_latency = |l: &str| Latency::ALL.iter().any(|x| x.name() == l);
        let metric = if let Some((lat, stat)) = name.split_once('.').filter(|(l, _)| is_latency(l))
        {
            let (lat, stat, scale) = latency_stat(lat, stat, unit).map_err(err)?;
            return Ok(Threshold {
                metric: Metric::Latency(lat, stat),
                op,
                limit: limit * scale,
                text,
            });
        } else if let Some((phase, rest)) = name.split_once('.').filter(|(p, _)| *p != "errors") {
            let (m, scale) = phase_metric(rest, unit).map_err(err)?;
            return Ok(Threshold {
                metric: Metric::Phase(phase.to_string(), m),
                op,
                limit: limit * scale,
                text,
            });
        } else if let Some(code) = name.strip_prefix("errors.") {
            Metric::ErrorCode(
                code.parse()
                    .map_err(|_| err(format!("{code:?} is not an error code")))?,
            )
        } else if Counters::field(name).is_some() {
            match unit {
                "" => Metric::Counter(name.to_string()),
                "%" => Metric::Percent(name.to_string()),
                u => {
                    return Err(err(format!(
                        "unit {u:?} makes no sense for a count (none or %)"
                    )))
                }
            }
        } else {
            return Err(err(format!(
                "unknown metric {name:?} (a counter such as online, errors, reconnects, or \
                 LATENCY.p99)"
            )));
        };
        if matches!(metric, Metric::ErrorCode(_)) && !unit.is_empty() {
            return Err(err(format!("unit {unit:?} makes no sense for a count")));
        }
        Ok(Threshold {
            metric,
            op,
            limit,
            text,
        })
    }
}

/// Parses a comma-separated list of thresholds.
///
/// # Errors
///
/// The first threshold that does not parse (an empty item is an error too).
pub fn parse_list(s: &str) -> Result<Vec<Threshold>, FailOnError> {
    s.split(',').map(str::parse).collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Threshold {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn push_figures_have_short_names() {
        assert_eq!(t("push.lost>0").metric, Metric::Counter("push_lost".into()));
        assert_eq!(
            t("push.e2e.p99>200ms").metric,
            Metric::Latency(Latency::PushE2e, Stat::P99)
        );
        assert_eq!(
            t("push.errors.2>0").metric,
            Metric::CodeOf("push_gateway_errors".into(), 2)
        );
        let mut s = ShardStats::default();
        s.counters.push_lost = 1;
        s.counters.push_gateway_errors.insert(2, 3);
        let v = judge(
            &[
                t("push.lost>0"),
                t("push.errors.2>=3"),
                t("push.errors.1>0"),
            ],
            1,
            &s,
        );
        assert_eq!(
            v.iter().map(|v| v.failed).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert!("push.nothing>0".parse::<Threshold>().is_err());
        assert!("push.errors.x>0".parse::<Threshold>().is_err());
    }

    #[test]
    fn good_forms_parse() {
        let x = t("online<99.9%");
        assert_eq!(
            (x.metric, x.op, x.limit),
            (Metric::Percent("online".into()), Op::Lt, 99.9)
        );
        assert_eq!(
            t("ever_online<100%").metric,
            Metric::Percent("ever_online".into())
        );
        let x = t("handshake.p99>500ms");
        assert_eq!(
            (x.metric, x.op, x.limit),
            (
                Metric::Latency(Latency::Handshake, Stat::P99),
                Op::Gt,
                500.0
            )
        );
        assert_eq!(t("connect.p50>2s").limit, 2000.0);
        assert_eq!(t("bind.max>=250us").limit, 0.25);
        assert_eq!(t("heartbeat_rtt.p999 > 1 s").op, Op::Gt);
        let x = t("errors>0");
        assert_eq!(
            (x.metric, x.op, x.limit),
            (Metric::Counter("errors".into()), Op::Gt, 0.0)
        );
        assert_eq!(
            t("reconnects>10").metric,
            Metric::Counter("reconnects".into())
        );
        assert_eq!(t("read_timeouts>=1").op, Op::Ge);
        assert_eq!(t("errors.103>0").metric, Metric::ErrorCode(103));
        assert_eq!(t("bound<=5").op, Op::Le);
        assert_eq!(t(" online < 99.9% ").to_string(), "online<99.9%");
        let list = parse_list("online<99.9%,handshake.p99>500ms").unwrap();
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn bad_forms_are_errors_not_panics() {
        for bad in [
            "",
            "online",
            "<5",
            "online<",
            "online<%",
            "online<abc",
            "online<5x",
            "online=5",
            "nope>1",
            "handshake.p98>1ms",
            "handshake.p99>5",
            "handshake.p99>5%",
            "warp.p99>1ms",
            "errors.x>0",
            "errors.999>0",
            "errors.103>1%",
            "online<nan%",
            "online<inf",
            "online<1.2.3",
            ">",
            "<",
            ">=",
            "online<>5",
            "a.b.c>1ms",
            "é<1",
            "online<-1",
        ] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad:?} parsed");
        }
        assert!(parse_list("online<99%,").is_err());
        for bad in [
            "storm.p99>1ms",
            "storm.connect.p99>1ms",
            "storm.handshake.p99>1",
            "storm.timeouts>1%",
            "storm.nope>0",
        ] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad:?} parsed");
        }
        let e = "handshake.p99>5".parse::<Threshold>().unwrap_err();
        assert!(e.to_string().contains("unit"), "{e}");
    }

    #[test]
    fn evaluation_reports_only_violations() {
        let mut s = ShardStats::default();
        s.counters.online = 998;
        s.counters.ever_online = 1000;
        s.counters.reconnects = 11;
        s.counters.error(103);
        s.counters.error(103);
        s.counters.error(104);
        for ms in [10, 20, 30, 600] {
            s.latencies.record(Latency::Handshake, ms * 1000);
        }
        let list = parse_list(
            "online<99.9%,ever_online<100%,errors>0,errors.103>=2,errors.104>1,reconnects>10,\
             read_timeouts>=1,handshake.max>500ms,handshake.p50>100ms,connect.p99>1ms",
        )
        .unwrap();
        let v = evaluate(&list, 1000, &s);
        assert_eq!(v.len(), 5, "{v:#?}");
        assert!(
            v[0].starts_with("--fail-on online<99.9%: online was 99.800%"),
            "{}",
            v[0]
        );
        assert_eq!(v[1], "--fail-on errors>0: errors was 3");
        assert!(v[2].starts_with("--fail-on errors.103>=2"), "{}", v[2]);
        assert_eq!(v[3], "--fail-on reconnects>10: reconnects was 11");
        assert!(
            v[4].starts_with("--fail-on handshake.max>500ms: was 600."),
            "{}",
            v[4]
        );
        assert!(evaluate(&list[1..2], 0, &ShardStats::default()).is_empty());
    }

    #[test]
    fn a_threshold_names_a_phase_and_judges_its_figures() {
        use crate::stages::PhaseStats;
        let x = t("storm.timeouts>0");
        assert_eq!(
            x.metric,
            Metric::Phase("storm".into(), PhaseMetric::Count("timeouts".into()))
        );
        assert_eq!(t("churn.fast_connect.p99>1s").limit, 1000.0);
        assert_eq!(
            t("ramp.online<100%").metric,
            Metric::Phase("ramp".into(), PhaseMetric::Percent)
        );
        let list = parse_list("storm.timeouts>0,storm.online<100%,hold.errors>0").unwrap();
        assert!(check_phases(&list, &["storm", "hold"]).is_ok());
        let e = check_phases(&list, &["storm"]).unwrap_err();
        assert!(e.contains("\"hold\"") && e.contains("hold.errors>0"), "{e}");
        let mut s = ShardStats::default();
        let mut storm = PhaseStats::new("storm", "storm");
        storm.ran = true;
        storm.counts.timeouts = 2;
        storm.online_at_end = 9;
        s.stages.phases.push(storm);
        let v = evaluate(&list, 10, &s);
        assert_eq!(
            v,
            [
                "--fail-on storm.timeouts>0: storm.timeouts was 2",
                "--fail-on storm.online<100%: storm.online was 90.000%"
            ]
        );
        let verdicts = judge(&list, 10, &s);
        assert_eq!(verdicts[2].actual, "phase hold did not run");
    }
}
