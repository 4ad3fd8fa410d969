//! `--fail-on`'s text forms (see the module above) parsed into [`Threshold`]s, and the check
//! that every phase a threshold names is one the run has.

use std::str::FromStr;

use super::{FailOnError, Metric, Op, PhaseMetric, Stat, Threshold};
use crate::stages::PhaseCounts;
use crate::stats::{Counters, Latency};

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
