//! `mpush-fleet report merge A.json B.json ... > all.json`: the reports of fleets that ran
//! side by side (processes, machines, Kubernetes pods) as one run's report, exactly: counters
//! summed, HDR histograms added (never percentiles averaged), with the same summary table and
//! `--fail-on` checks as a single run. The supervisor (`run --processes`) merges its workers'
//! reports with the same [`merge`].
//!
//! Reports of disjoint device ranges add up; two reports whose ranges overlap are an error
//! (the same devices counted twice). The merged run lasted as long as its longest part (the
//! parts ran at the same time), and its process figures are the parts' sums.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Deserialize;

use super::cli::UsageError;
use super::fail_on::{self, Threshold};
use super::report::{ProcessCost, RunReport};
use super::summary;
use crate::stats::{Counters, Latencies, ShardStats};

/// `mpush-fleet report ...`.
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// What to do with reports.
    #[command(subcommand)]
    pub cmd: ReportCmd,
}

/// The `report` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum ReportCmd {
    /// Merge `--report` files of fleets over disjoint device ranges into one report (JSON on
    /// stdout when it is not a terminal or with --json; a summary table on a terminal). Exit
    /// code as `run`'s: 0 when every device came online and no --fail-on threshold held.
    Merge {
        /// The reports.
        #[arg(required = true, value_name = "REPORT.json")]
        files: Vec<PathBuf>,
        /// Exit 1 when a threshold holds for the merged run (as `run --fail-on`).
        #[arg(long = "fail-on", value_name = "EXPR", value_delimiter = ',')]
        fail_on: Vec<Threshold>,
        /// JSON on stdout even on a terminal.
        #[arg(long)]
        json: bool,
    },
}

/// What `merge` needs of a report: the deterministic parts and the encoded histograms (the
/// percentiles and rates are derived again from those).
#[derive(Debug, Deserialize)]
pub struct Part {
    /// Devices in its range.
    pub devices: u32,
    /// Its range's first device.
    #[serde(default)]
    pub first_device: u32,
    /// Online when its stop began.
    pub online: i64,
    /// How long it ran.
    pub duration_secs: f64,
    /// Its counters.
    pub counters: Counters,
    /// Its process cost, if measured.
    #[serde(default)]
    pub process: Option<ProcessCost>,
    /// Its histograms (absent in reports of builds before histograms were serialised).
    #[serde(default)]
    pub histograms: Option<BTreeMap<String, String>>,
}

impl Part {
    /// Reads a report from JSON text; `name` names it in errors.
    ///
    /// # Errors
    ///
    /// Not a report, or a report without histograms.
    pub fn parse(name: &str, text: &str) -> anyhow::Result<Part> {
        let part: Part =
            serde_json::from_str(text).with_context(|| format!("{name}: not a run report"))?;
        if part.histograms.is_none() {
            anyhow::bail!(
                "{name}: the report has no histograms (an mpush-fleet older than report \
                 merge wrote it), so it cannot be merged exactly"
            );
        }
        if !(part.duration_secs.is_finite() && part.duration_secs >= 0.0) {
            anyhow::bail!(
                "{name}: duration_secs {} is not a duration",
                part.duration_secs
            );
        }
        Ok(part)
    }

    fn range(&self) -> std::ops::Range<u64> {
        let lo = u64::from(self.first_device);
        lo..lo + u64::from(self.devices)
    }
}

/// A merged run: its report, and the statistics its `--fail-on` thresholds are judged on
/// (`online` as at the start of the stop, as for a single run).
#[derive(Debug)]
pub struct Merged {
    /// The report.
    pub report: RunReport,
    /// What thresholds are judged on.
    pub judged: ShardStats,
}

/// Merges reports (each with a name for errors).
///
/// # Errors
///
/// No report, overlapping device ranges, more than `u32::MAX` devices, or a histogram that
/// does not decode.
pub fn merge(parts: &[(String, Part)]) -> anyhow::Result<Merged> {
    anyhow::ensure!(!parts.is_empty(), "no report to merge");
    for (i, (a, pa)) in parts.iter().enumerate() {
        for (b, pb) in &parts[i + 1..] {
            let (ra, rb) = (pa.range(), pb.range());
            if ra.start < rb.end && rb.start < ra.end {
                anyhow::bail!(
                    "{a} (devices {ra:?}) and {b} (devices {rb:?}) overlap: merging would count \
                     the same devices twice"
                );
            }
        }
    }
    let mut stats = ShardStats::default();
    let mut devices: u32 = 0;
    let mut online: i64 = 0;
    let mut secs: f64 = 0.0;
    let mut process = Some(ProcessCost::default());
    for (name, p) in parts {
        devices = devices
            .checked_add(p.devices)
            .with_context(|| format!("{name}: more than {} devices in all", u32::MAX))?;
        online = online.saturating_add(p.online);
        secs = secs.max(p.duration_secs);
        stats.counters.merge(&p.counters);
        let hists = p.histograms.iter().flatten();
        let latencies = Latencies::decode(hists.map(|(k, v)| (k.as_str(), v.as_str())))
            .with_context(|| name.clone())?;
        stats.latencies.merge(&latencies);
        process = match (process, p.process) {
            (Some(sum), Some(p)) => Some(ProcessCost {
                cpu_user_secs: sum.cpu_user_secs + p.cpu_user_secs,
                cpu_system_secs: sum.cpu_system_secs + p.cpu_system_secs,
                rss_bytes_online: sum.rss_bytes_online + p.rss_bytes_online,
                rss_peak_bytes: sum.rss_peak_bytes + p.rss_peak_bytes,
            }),
            _ => None,
        };
    }
    let mut report = RunReport::new(devices, &stats, Duration::from_secs_f64(secs));
    report.first_device = parts.iter().map(|(_, p)| p.first_device).min().unwrap_or(0);
    report.online = online;
    report.process = process;
    let mut judged = stats;
    judged.counters.online = online;
    Ok(Merged { report, judged })
}

/// Runs `mpush-fleet report`; returns the exit code.
///
/// # Errors
///
/// [`UsageError`] for a file that cannot be read or merged (exit 2).
pub fn report_main(args: ReportArgs) -> anyhow::Result<u8> {
    let ReportCmd::Merge {
        files,
        fail_on,
        json,
    } = args.cmd;
    let mut parts = Vec::with_capacity(files.len());
    for f in &files {
        let name = f.display().to_string();
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading {name}"))
            .map_err(|e| UsageError(format!("{e:#}")))?;
        let part = Part::parse(&name, &text).map_err(|e| UsageError(format!("{e:#}")))?;
        parts.push((name, part));
    }
    let merged = merge(&parts).map_err(|e| UsageError(format!("{e:#}")))?;
    Ok(print_outcome(&merged, &fail_on, json))
}

/// Prints a merged run as `run` prints a single one (a table on a terminal, JSON otherwise;
/// failed thresholds on stderr) and returns its exit code.
pub fn print_outcome(merged: &Merged, thresholds: &[Threshold], json: bool) -> u8 {
    let report = &merged.report;
    let verdicts = fail_on::judge(thresholds, report.devices, &merged.judged);
    let table = std::io::stdout().is_terminal() && !json;
    if table {
        println!("{}", summary::render(report, &verdicts).trim_end());
    } else {
        match serde_json::to_string_pretty(report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: the merged report does not serialise: {e}"),
        }
    }
    if !(table && std::io::stderr().is_terminal()) {
        for v in fail_on::evaluate(thresholds, report.devices, &merged.judged) {
            eprintln!("{v}");
        }
    }
    u8::from(!summary::passed(report, &verdicts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Latency;

    fn stats(n: u64, base_us: u64) -> ShardStats {
        let mut s = ShardStats::default();
        s.counters.handshakes = n;
        s.counters.ever_online = n;
        s.counters.error(103);
        for i in 0..n {
            s.latencies.record(Latency::Handshake, base_us + i * 37);
        }
        s
    }

    fn part(first: u32, devices: u32, s: &ShardStats, secs: u64) -> (String, Part) {
        let mut r = RunReport::new(devices, s, Duration::from_secs(secs));
        r.first_device = first;
        r.online = i64::from(devices);
        let text = serde_json::to_string(&r).unwrap();
        let name = format!("r{first}.json");
        let p = Part::parse(&name, &text).unwrap();
        (name, p)
    }

    #[test]
    fn a_merge_is_the_report_of_the_whole() {
        let (a, b) = (stats(40, 1_000), stats(60, 90_000));
        let merged = merge(&[part(0, 40, &a, 9), part(40, 60, &b, 10)]).unwrap();
        let mut whole = a.clone();
        whole.merge(&b);
        let mut expect = RunReport::new(100, &whole, Duration::from_secs(10));
        expect.online = 100;
        let r = &merged.report;
        assert_eq!(r.counters, expect.counters);
        assert_eq!(
            r.latency, expect.latency,
            "percentiles of the added histograms"
        );
        assert_eq!(r.histograms, expect.histograms, "the histograms, exactly");
        assert_eq!((r.devices, r.online, r.duration_secs), (100, 100, 10.0));
        assert_eq!(r.errors.values().sum::<u64>(), 2);
        assert_eq!(merged.judged.counters.online, 100);
    }

    #[test]
    fn overlaps_and_broken_reports_are_errors() {
        let s = stats(3, 1_000);
        let e = merge(&[part(0, 50, &s, 1), part(49, 10, &s, 1)]).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        assert!(merge(&[]).is_err());
        for bad in [
            "",
            "{}",
            "[1,2]",
            r#"{"devices":1,"online":1,"duration_secs":1,"counters":{}}"#,
            r#"{"devices":-1,"online":1,"duration_secs":1,"counters":{},"histograms":{}}"#,
        ] {
            assert!(Part::parse("x", bad).is_err(), "{bad:?} parsed");
        }
        let lying = r#"{"devices":1,"online":1,"duration_secs":1,"counters":{},
                        "histograms":{"connect":"AAAA"}}"#;
        let p = Part::parse("x", lying).unwrap();
        assert!(merge(&[("x".into(), p)]).is_err());
        let huge = r#"{"devices":4294967295,"online":1,"duration_secs":1,"counters":{},
                       "histograms":{}}"#;
        let mut second = Part::parse("y", huge).unwrap();
        second.first_device = 0;
        let mut first = Part::parse("x", huge).unwrap();
        first.devices = 1;
        first.first_device = u32::MAX;
        assert!(merge(&[("x".into(), first), ("y".into(), second)]).is_err());
    }
}
