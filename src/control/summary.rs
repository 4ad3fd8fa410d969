//! The end-of-run table a person reads on a terminal (the `--report` JSON is for programs):
//! what k6 prints, in about 30 lines. Rows whose value is zero are left out, except the few a
//! reader looks for first (result, duration, devices, online), so what is shown is what
//! happened.

use std::fmt::Write as _;

use super::fail_on::Verdict;
use super::report::RunReport;
use crate::stats::servers::ServerFigures;
use crate::stats::{Latency, Summary};

/// Width of the dotted label column.
const LABEL: usize = 30;

/// A dotted two-column table (`  label ........ value`) with section lines; shared with the
/// `serve` summary so both read alike.
#[derive(Debug, Default)]
pub(crate) struct Table {
    out: String,
}

impl Table {
    /// A table under a title line.
    pub(crate) fn new(title: &str) -> Table {
        Table {
            out: format!("{title}\n"),
        }
    }

    /// `  label ........ value`.
    pub(crate) fn row(&mut self, label: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "  {:.<LABEL$} {value}", format!("{label} "));
    }

    /// A row only when `n` is not zero.
    pub(crate) fn count(&mut self, label: &str, n: u64) {
        if n != 0 {
            self.row(label, n);
        }
    }

    /// A line as given (section headers, sub-tables).
    pub(crate) fn line(&mut self, s: &str) {
        let _ = writeln!(self.out, "{s}");
    }

    /// The table's text, ending in a newline.
    pub(crate) fn finish(self) -> String {
        self.out
    }
}

/// Milliseconds as a person reads them: `850us`, `12.3ms`, `1.25s`.
pub(crate) fn fmt_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0}us", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

/// Bytes in binary units: `512 B`, `2.1 KiB`, `35.0 MiB`.
fn fmt_bytes(b: f64) -> String {
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    }
}

/// Whether the run passed: every device came online and no `--fail-on` threshold failed
/// (the exit code's rule, in one place).
pub fn passed(report: &RunReport, verdicts: &[Verdict]) -> bool {
    report.ever_online >= u64::from(report.devices) && verdicts.iter().all(|v| !v.failed)
}

/// The summary table of a run, thresholds marked `✓` (held: the run may pass) or `✗`
/// (failed the run).
pub fn render(report: &RunReport, verdicts: &[Verdict]) -> String {
    let mut t = Table::new("mpush-fleet run summary");
    let missing = u64::from(report.devices).saturating_sub(report.ever_online);
    let failed = verdicts.iter().filter(|v| v.failed).count();
    let mut why = Vec::new();
    if missing > 0 {
        why.push(format!(
            "{missing} of {} devices never came online",
            report.devices
        ));
    }
    if failed > 0 {
        let s = if failed == 1 { "" } else { "s" };
        why.push(format!("{failed} threshold{s} failed"));
    }
    if why.is_empty() {
        t.row("result", "PASS");
    } else {
        t.row("result", format!("FAIL ({})", why.join("; ")));
    }
    t.row("duration", format!("{:.1}s", report.duration_secs));
    t.row("devices", report.devices);
    let pct = if report.devices == 0 {
        100.0
    } else {
        100.0 * report.online as f64 / f64::from(report.devices)
    };
    t.row("online at stop", format!("{} ({pct:.1}%)", report.online));
    if report.ever_online != u64::try_from(report.online).unwrap_or(0) {
        t.row("came online", report.ever_online);
    }
    let c = &report.counters;
    t.count("handshakes", report.handshakes);
    t.count("fast connects", report.fast_connects);
    t.count("fast connects refused", c.fast_connect_rejected);
    t.count("bound", report.bound);
    t.count("pushes received", report.pushes_received);
    t.count("acks sent", report.acks_sent);
    t.count("reconnects", report.reconnects);
    t.count("kicks", c.kicks);
    t.count("connect failures", c.connect_failures);
    t.count("request timeouts", c.request_timeouts);
    t.count("read timeouts", c.read_timeouts);
    t.count("decode errors", c.decode_errors);
    t.count("ticket store errors", c.ticket_errors);
    if c.push_sent > 0 {
        // `run --push-rate`: where every push ended up.
        t.row(
            "pushes sent",
            format!(
                "{} = {} received + {} explained + {} lost",
                c.push_sent, c.push_received, c.push_explained, c.push_lost
            ),
        );
        t.count("  gateway OK", c.push_gateway_ok);
        for (code, n) in &c.push_gateway_errors {
            let name = crate::proto::message::ErrorCode(*code).name();
            t.count(&format!("  gateway {name}"), *n);
        }
        t.count("  no reply", c.push_no_reply);
        t.count("  no reply, received", c.push_no_reply_received);
        t.count("  no route", c.push_no_route);
        t.count("  received twice", c.push_received_twice);
        if let Some(rate) = report.push_rate_achieved {
            t.row("  push rate", format!("{rate:.0}/s"));
        }
    }
    for (name, n) in &report.errors {
        t.count(&format!("errors {name}"), *n);
    }
    if report.sessions_per_sec > 0.0 {
        t.row("sessions/s", format!("{:.1}", report.sessions_per_sec));
    }
    let sessions = report.handshakes + report.fast_connects;
    if let Some(p) = &report.process {
        let cpu = p.cpu_user_secs + p.cpu_system_secs;
        if sessions > 0 && cpu > 0.0 {
            t.row(
                "CPU per session",
                fmt_ms(cpu * 1000.0 / sessions as f64) + " (process CPU / sessions)",
            );
        }
        if report.online > 0 && p.rss_bytes_online > 0 {
            t.row(
                "memory per session",
                fmt_bytes(p.rss_bytes_online as f64 / report.online as f64) + " (RSS / online)",
            );
        }
    }
    server_rows(&mut t, report);
    latency_rows(&mut t, report);
    super::phases::render(&mut t, report);
    if !verdicts.is_empty() {
        t.line("  thresholds (--fail-on: the run fails when one holds)");
        for v in verdicts {
            let mark = if v.failed { "✗ FAILED" } else { "✓ ok    " };
            t.line(&format!("    {mark} {:<24} {}", v.threshold, v.actual));
        }
    }
    t.finish()
}

/// Most servers with a row of their own; the rest share one `N others` row, so a fleet that
/// saw many servers keeps a table a person can read.
const SERVER_ROWS: usize = 8;

/// One row per server (connects, failed connects, online at the stop, session errors), with
/// two servers or more (with one, the totals above say it all).
fn server_rows(t: &mut Table, report: &RunReport) {
    if report.servers.len() < 2 {
        return;
    }
    t.line(&format!(
        "  {:<24} {:>9} {:>9} {:>9} {:>9}",
        "server", "connects", "failed", "online", "errors"
    ));
    let row = |t: &mut Table, name: &str, f: &ServerFigures| {
        t.line(&format!(
            "    {name:<22} {:>9} {:>9} {:>9} {:>9}",
            f.connects, f.connect_failures, f.online, f.errors
        ));
    };
    let mut rest = ServerFigures::default();
    for (i, (name, f)) in report.servers.iter().enumerate() {
        if i < SERVER_ROWS || report.servers.len() == SERVER_ROWS + 1 {
            row(t, name, f);
        } else {
            rest.connects += f.connects;
            rest.connect_failures += f.connect_failures;
            rest.online += f.online;
            rest.errors += f.errors;
        }
    }
    if report.servers.len() > SERVER_ROWS + 1 {
        let others = format!("{} others", report.servers.len() - SERVER_ROWS);
        row(t, &others, &rest);
    }
}

/// One row per latency that has samples: p50, p99, max and the sample count.
fn latency_rows(t: &mut Table, report: &RunReport) {
    // The report's map is sorted by name; the table keeps the protocol's order.
    let rows: Vec<(&str, &Summary)> = Latency::ALL
        .iter()
        .filter_map(|l| report.latency.get(l.name()).map(|s| (l.name(), s)))
        .filter(|(_, s)| s.count > 0)
        .collect();
    if rows.is_empty() {
        return;
    }
    t.line(&format!(
        "  {:<16} {:>9} {:>9} {:>9} {:>9}",
        "latency", "p50", "p99", "max", "samples"
    ));
    for (name, s) in rows {
        t.line(&format!(
            "    {name:<14} {:>9} {:>9} {:>9} {:>9}",
            fmt_ms(s.p50_ms),
            fmt_ms(s.p99_ms),
            fmt_ms(s.max_ms),
            s.count
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::control::fail_on::{judge, parse_list};
    use crate::control::report::ProcessCost;
    use crate::stats::ShardStats;

    fn stats() -> ShardStats {
        let mut s = ShardStats::default();
        let c = &mut s.counters;
        c.online = 48;
        c.ever_online = 49;
        c.handshakes = 45;
        c.fast_connects = 5;
        c.bound = 49;
        c.reconnects = 2;
        c.request_timeouts = 1;
        c.error(103);
        c.error(103);
        for us in [800, 1_200, 1_500, 2_000] {
            s.latencies.record(Latency::Connect, us);
        }
        for ms in [10, 20, 30, 600] {
            s.latencies.record(Latency::Handshake, ms * 1000);
        }
        s
    }

    fn report(s: &ShardStats) -> RunReport {
        let mut r = RunReport::new(50, s, Duration::from_secs(10));
        r.process = Some(ProcessCost {
            cpu_user_secs: 0.4,
            cpu_system_secs: 0.1,
            rss_bytes_online: 48 * 3 * 1024,
            rss_peak_bytes: 0,
        });
        r
    }

    #[test]
    fn the_table_leaves_zeros_out_and_marks_thresholds() {
        let s = stats();
        let verdicts = judge(
            &parse_list("errors>0,reconnects>10,handshake.p99>500ms").unwrap(),
            50,
            &s,
        );
        let text = render(&report(&s), &verdicts);
        let golden = "\
mpush-fleet run summary
  result ....................... FAIL (1 of 50 devices never came online; 2 thresholds failed)
  duration ..................... 10.0s
  devices ...................... 50
  online at stop ............... 48 (96.0%)
  came online .................. 49
  handshakes ................... 45
  fast connects ................ 5
  bound ........................ 49
  reconnects ................... 2
  request timeouts ............. 1
  errors SESSION_EXPIRED_103 ... 2
  sessions/s ................... 5.0
  CPU per session .............. 10.0ms (process CPU / sessions)
  memory per session ........... 3.0 KiB (RSS / online)
  latency                p50       p99       max   samples
    connect            1.2ms     2.0ms     2.0ms         4
    handshake         20.0ms   600.1ms   600.1ms         4
  thresholds (--fail-on: the run fails when one holds)
    ✗ FAILED errors>0                 errors was 2
    ✓ ok     reconnects>10            reconnects was 2
    ✗ FAILED handshake.p99>500ms      was 600.063ms over 4 samples
";
        assert_eq!(text, golden, "got:\n{text}");
        assert!(text.lines().count() <= 30);
        assert!(!passed(&report(&s), &verdicts));
    }

    #[test]
    fn a_clean_run_passes_and_shows_only_what_happened() {
        let mut s = ShardStats::default();
        s.counters.online = 3;
        s.counters.ever_online = 3;
        s.counters.handshakes = 3;
        let r = RunReport::new(3, &s, Duration::from_secs(1));
        let text = render(&r, &[]);
        assert_eq!(
            text,
            "mpush-fleet run summary\n  \
             result ....................... PASS\n  \
             duration ..................... 1.0s\n  \
             devices ...................... 3\n  \
             online at stop ............... 3 (100.0%)\n  \
             handshakes ................... 3\n  \
             sessions/s ................... 3.0\n"
        );
        assert!(passed(&r, &[]));
        // An empty run renders too (no division by zero, no panic).
        let empty = RunReport::new(0, &ShardStats::default(), Duration::ZERO);
        assert!(render(&empty, &[]).contains("PASS"));
    }

    #[test]
    fn judge_fails_exactly_what_evaluate_lists() {
        let s = stats();
        let list = parse_list(
            "online<99.9%,ever_online<100%,errors>0,errors.103>=2,errors.104>1,reconnects>10,\
             read_timeouts>=1,handshake.max>500ms,handshake.p50>100ms,connect.p99>1ms",
        )
        .unwrap();
        let failed: Vec<String> = judge(&list, 50, &s)
            .into_iter()
            .filter(|v| v.failed)
            .map(|v| format!("--fail-on {}: {}", v.threshold, v.actual))
            .collect();
        assert_eq!(failed, crate::control::fail_on::evaluate(&list, 50, &s));
    }

    #[test]
    fn servers_get_rows_bounded() {
        let mut s = ShardStats::default();
        s.counters.online = 3;
        s.counters.ever_online = 3;
        let a: std::net::SocketAddr = "127.0.0.1:3000".parse().unwrap();
        s.servers.entry(a).connects = 2;
        s.servers.entry(a).online = 2;
        let one = render(&RunReport::new(3, &s, Duration::from_secs(1)), &[]);
        assert!(!one.contains("server "), "one server, no rows:\n{one}");
        let b: std::net::SocketAddr = "127.0.0.1:3001".parse().unwrap();
        s.servers.entry(b).connects = 3;
        s.servers.entry(b).connect_failures = 1;
        s.servers.entry(b).online = 1;
        s.servers.entry(b).errors = 4;
        let two = render(&RunReport::new(3, &s, Duration::from_secs(1)), &[]);
        assert!(
            two.contains(
                "  server                    connects    failed    online    errors\n    \
                 127.0.0.1:3000                 2         0         2         0\n    \
                 127.0.0.1:3001                 3         1         1         4\n"
            ),
            "{two}"
        );
        for port in 4000..4020 {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            s.servers.entry(addr).connects = 1;
        }
        let many = render(&RunReport::new(3, &s, Duration::from_secs(1)), &[]);
        let rows = many.lines().filter(|l| l.starts_with("    127.")).count();
        assert_eq!(rows, SERVER_ROWS, "{many}");
        assert!(
            many.contains("    14 others                     14         0         0         0"),
            "{many}"
        );
    }

    #[test]
    fn units_read_well() {
        assert_eq!(fmt_ms(0.25), "250us");
        assert_eq!(fmt_ms(12.34), "12.3ms");
        assert_eq!(fmt_ms(1250.0), "1.25s");
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_bytes(2150.0), "2.1 KiB");
        assert_eq!(fmt_bytes(35.0 * 1024.0 * 1024.0), "35.0 MiB");
    }
}
