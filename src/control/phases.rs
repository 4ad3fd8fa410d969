//! Stages and `--rate auto` in `run`: the flag values, the plan a run gets, and the phases'
//! and the capacity's place in the report, the summary table and the status line.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::cli::{RunArgs, UsageError};
use super::report::RunReport;
use super::summary::{fmt_ms, Table};
use crate::stages::{plan, AutoConfig, Plan, RampRate, StageKind, StageStats};
use crate::stats::{ShardStats, Summary};

/// `--rate`: sessions per second, or `auto` (the capacity search).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RateArg {
    /// This many new sessions per second across the fleet (0: as fast as possible).
    PerSec(f64),
    /// Search for the server's capacity.
    Auto,
}

impl RateArg {
    /// The fixed rate (0 for `auto`, whose phases set their own).
    pub fn per_sec(self) -> f64 {
        match self {
            RateArg::PerSec(r) => r,
            RateArg::Auto => 0.0,
        }
    }
}

impl FromStr for RateArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(RateArg::Auto);
        }
        match s.parse::<f64>() {
            Ok(r) if r.is_finite() && r >= 0.0 => Ok(RateArg::PerSec(r)),
            _ => Err(format!("{s:?} is not a rate (a number >= 0, or auto)")),
        }
    }
}

impl fmt::Display for RateArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateArg::PerSec(r) => write!(f, "{r}"),
            RateArg::Auto => f.write_str("auto"),
        }
    }
}

/// The run's plan from `--stages`, `--rate` and `--auto-p99`, and its device count (the
/// largest ramp's). A broken spec, or a `--fail-on` naming no phase, is a usage error.
///
/// # Errors
///
/// [`UsageError`] naming the bad part.
pub fn plan_of(args: &RunArgs) -> Result<(Plan, u32), UsageError> {
    if !(args.auto_p99.is_finite() && args.auto_p99 > 0.0) {
        return Err(UsageError(format!(
            "--auto-p99 {}: a target in ms above 0",
            args.auto_p99
        )));
    }
    let auto = AutoConfig {
        p99_target_ms: args.auto_p99,
        ..AutoConfig::default()
    };
    let mut plan = match &args.stages {
        Some(spec) => Plan {
            stages: plan::parse(spec).map_err(|e| UsageError(e.to_string()))?,
            auto,
            stop_when_done: true,
        },
        None if args.rate == RateArg::Auto => Plan::auto_ramp(auto),
        None => Plan::default(),
    };
    if args.rate == RateArg::Auto {
        // `--rate auto` with stages: every ramp without a rate of its own searches.
        for s in &mut plan.stages {
            if let StageKind::Ramp { rate, .. } = &mut s.kind {
                if *rate == RampRate::Default {
                    *rate = RampRate::Auto;
                }
            }
        }
    }
    let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    super::fail_on::check_phases(&args.fail_on, &names).map_err(UsageError)?;
    let devices = plan::devices(&plan.stages, args.devices);
    Ok((plan, devices))
}

/// One phase in the `--report` JSON.
#[derive(Debug, Serialize)]
pub struct PhaseReport {
    /// Its name.
    pub name: String,
    /// Its spec.
    pub spec: String,
    /// Whether it began.
    pub ran: bool,
    /// Whether it ended by its own rule (not cut short by the end of the run).
    pub completed: bool,
    /// Seconds it ran.
    pub duration_secs: f64,
    /// Its counts (connects, handshakes, fast connects, failures, timeouts, ...).
    #[serde(flatten)]
    pub counts: crate::stages::PhaseCounts,
    /// Devices online when it ended.
    pub online_at_end: i64,
    /// Handshake latency over the phase.
    pub handshake: Summary,
    /// Fast-connect latency over the phase.
    pub fast_connect: Summary,
}

/// Every phase of a run, in order.
pub fn phase_reports(st: &StageStats) -> Vec<PhaseReport> {
    st.phases
        .iter()
        .map(|p| PhaseReport {
            name: p.name.clone(),
            spec: p.spec.clone(),
            ran: p.ran,
            completed: p.completed,
            duration_secs: p.duration_ms as f64 / 1000.0,
            counts: p.counts,
            online_at_end: p.online_at_end,
            handshake: Summary::of(&p.handshake),
            fast_connect: Summary::of(&p.fast_connect),
        })
        .collect()
}

/// The status line's part: the running phase, and the search's rate and findings.
pub fn status(stats: &ShardStats) -> String {
    let st = &stats.stages;
    let mut s = String::new();
    if let Some(name) = st.current_name() {
        s.push_str(&format!(" phase {name}"));
    } else if st.done() {
        s.push_str(" phases done");
    }
    if let Some(c) = &st.capacity {
        if c.rate_now > 0.0 {
            s.push_str(&format!(" auto-rate {:.0}/s", c.rate_now));
        }
        for (what, f) in [
            ("handshakes", c.handshake),
            ("fast-connects", c.fast_connect),
        ] {
            if let Some(f) = f {
                let floor = if f.saturated { "" } else { ">=" };
                s.push_str(&format!(
                    " capacity-{what} {floor}{:.0}/s@p99 {:.0}ms",
                    f.per_sec, f.p99_ms
                ));
            }
        }
    }
    s
}

/// The summary table's rows: the capacity found, then one line per phase.
pub(crate) fn render(t: &mut Table, report: &RunReport) {
    if let Some(c) = &report.capacity {
        for (what, f) in [
            ("handshakes", c.handshake),
            ("fast connects", c.fast_connect),
        ] {
            if let Some(f) = f {
                let note = if f.saturated {
                    String::new()
                } else {
                    " (at least: the server never saturated)".into()
                };
                t.row(
                    &format!("capacity, {what}"),
                    format!("{:.1}/s at p99 {}{note}", f.per_sec, fmt_ms(f.p99_ms)),
                );
            }
        }
    }
    if report.stages.is_empty() {
        return;
    }
    t.line(&format!(
        "  {:<12} {:>7} {:>7} {:>6} {:>6} {:>6} {:>7} {:>9} {:>9}",
        "phase", "secs", "connects", "hs", "fast", "t/o", "online", "hs p99", "fast p99"
    ));
    for p in &report.stages {
        let mark = if !p.ran {
            " (not run)"
        } else if !p.completed {
            " (cut short)"
        } else {
            ""
        };
        let p99 = |s: &Summary| {
            if s.count == 0 {
                "-".to_string()
            } else {
                fmt_ms(s.p99_ms)
            }
        };
        t.line(&format!(
            "    {:<10} {:>7.1} {:>7} {:>6} {:>6} {:>6} {:>7} {:>9} {:>9}{mark}",
            p.name,
            p.duration_secs,
            p.counts.connects,
            p.counts.handshakes,
            p.counts.fast_connects,
            p.counts.timeouts + p.counts.failures,
            p.online_at_end,
            p99(&p.handshake),
            p99(&p.fast_connect),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_shows_the_capacity_and_a_row_per_phase_and_the_status_the_phase() {
        use crate::stages::{Capacity, Found, PhaseStats};
        let mut s = ShardStats::default();
        s.counters.ever_online = 10;
        let mut ramp = PhaseStats::new("ramp", "ramp@auto");
        ramp.ran = true;
        ramp.completed = true;
        ramp.duration_ms = 4_000;
        ramp.counts.connects = 10;
        ramp.counts.handshakes = 10;
        ramp.online_at_end = 10;
        ramp.handshake.record(12_000).unwrap();
        let storm = PhaseStats::new("storm", "storm");
        s.stages.phases = vec![ramp, storm];
        s.stages.current = 1;
        s.stages.capacity = Some(Capacity {
            p99_target_ms: 500.0,
            handshake: Some(Found {
                per_sec: 48.5,
                p99_ms: 310.0,
                saturated: true,
            }),
            fast_connect: None,
            rate_now: 0.0,
        });
        let report = RunReport::new(10, &s, std::time::Duration::from_secs(5));
        let text = super::super::summary::render(&report, &[]);
        for want in [
            "capacity, handshakes ......... 48.5/s at p99 310.0ms",
            "  phase           secs connects     hs   fast    t/o  online    hs p99  fast p99",
            "    ramp           4.0      10     10      0      0      10    12.0ms         -",
            "    storm          0.0       0      0      0      0       0         -         - (not run)",
        ] {
            assert!(text.contains(want), "no {want:?} in:\n{text}");
        }
        assert_eq!(
            status(&s),
            " phase storm capacity-handshakes 48/s@p99 310ms"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["stages"][0]["handshakes"], 10);
        assert_eq!(json["capacity"]["handshake"]["per_sec"], 48.5);
        // Without stages or a search, the report and the table are as they were.
        let plain = RunReport::new(1, &ShardStats::default(), std::time::Duration::ZERO);
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("stages").is_none() && json.get("capacity").is_none());
    }

    #[test]
    fn rates_parse() {
        assert_eq!("auto".parse(), Ok(RateArg::Auto));
        assert_eq!("250".parse(), Ok(RateArg::PerSec(250.0)));
        assert!("-1".parse::<RateArg>().is_err());
        assert!("fast".parse::<RateArg>().is_err());
        assert_eq!(RateArg::Auto.to_string(), "auto");
    }
}
