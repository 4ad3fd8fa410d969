//! What `serve` shows a person while it runs and when it stops: a status line every few
//! seconds (with rates over the last interval) and an end-of-run table like `run`'s; the
//! JSON of the same figures when the output is not a terminal (or with `--json`).

use std::future::Future;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::ServerStats;
use crate::control::summary::Table;
use crate::proto::message::ErrorCode;

/// `CODE_NAME_n=count,...`, or `0` when there were none.
fn errors(s: &ServerStats) -> String {
    if s.errors_by_code.is_empty() {
        return "0".into();
    }
    let list: Vec<String> = s
        .errors_by_code
        .iter()
        .map(|(&code, n)| format!("{}_{code}={n}", error_name(code)))
        .collect();
    list.join(",")
}

/// Code 0 is the server's reason-only ERROR ("Param invalid" and the like).
fn error_name(code: u8) -> &'static str {
    if code == 0 {
        "REASON"
    } else {
        ErrorCode(code).name()
    }
}

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    now.saturating_sub(before) as f64 / secs.max(1e-9)
}

/// One status line: totals, and handshakes and fast connects per second since `before`
/// (taken `interval` ago).
pub fn status_line(
    elapsed: Duration,
    now: &ServerStats,
    before: &ServerStats,
    interval: Duration,
) -> String {
    let secs = interval.as_secs_f64();
    format!(
        "[{:>6.1}s] connections {} handshakes {} ({:.1}/s) fast connects {} ({:.1}/s) binds {} \
         pushes {} acks {} errors {}",
        elapsed.as_secs_f64(),
        now.connections,
        now.handshakes,
        rate(now.handshakes, before.handshakes, secs),
        now.fast_connects,
        rate(now.fast_connects, before.fast_connects, secs),
        now.binds,
        now.pushes_sent,
        now.acks_received,
        errors(now),
    )
}

/// The JSON printed at the end when the output is not a terminal: `GET /stats` and how long
/// the server ran.
#[derive(Debug, Serialize)]
pub struct ServeReport<'a> {
    /// Seconds the server ran.
    pub duration_secs: f64,
    /// The counters.
    #[serde(flatten)]
    pub stats: &'a ServerStats,
}

/// The end-of-run table; counters that stayed zero are left out.
pub fn summary(stats: &ServerStats, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let per_sec = |n: u64| format!("{n} ({:.1}/s)", rate(n, 0, secs));
    let mut t = Table::new("mpush-fleet serve summary");
    t.row("duration", format!("{secs:.1}s"));
    t.row("connections open", stats.connections);
    t.count("connections accepted", stats.connections_total);
    if stats.handshakes > 0 {
        t.row("handshakes", per_sec(stats.handshakes));
    }
    if stats.fast_connects > 0 {
        t.row("fast connects", per_sec(stats.fast_connects));
    }
    t.count("binds", stats.binds);
    t.count("unbinds", stats.unbinds);
    t.count("heartbeats", stats.heartbeats);
    t.count("kicks", stats.kicks);
    t.count("pushes sent", stats.pushes_sent);
    t.count("acks received", stats.acks_received);
    t.count("client pushes", stats.client_pushes);
    t.count("http proxy requests", stats.http_proxy);
    for (&code, &n) in &stats.errors_by_code {
        t.count(&format!("errors {}_{code}", error_name(code)), n);
    }
    for (reason, &n) in &stats.closes_by_reason {
        t.count(&format!("closed: {reason}"), n);
    }
    t.finish()
}

/// Prints a status line to stdout every `every` until `stop` completes (nothing when
/// `quiet`), and returns what `stop` returned.
pub async fn lines_until<F: Future>(
    stats: impl Fn() -> ServerStats,
    every: Duration,
    quiet: bool,
    stop: F,
) -> F::Output {
    let started = Instant::now();
    let mut tick = tokio::time::interval_at((started + every).into(), every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before = (started, stats());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            out = &mut stop => return out,
            _ = tick.tick(), if !quiet => {
                let now = (Instant::now(), stats());
                println!("{}", status_line(now.0 - started, &now.1, &before.1, now.0 - before.0));
                before = now;
            }
        }
    }
}

/// Prints the end-of-run summary to stdout: the table on a terminal, else (or with `json`)
/// the JSON.
pub fn print_summary(stats: &ServerStats, elapsed: Duration, json: bool) {
    if !json && std::io::stdout().is_terminal() {
        print!("{}", summary(stats, elapsed));
        return;
    }
    let report = ServeReport {
        duration_secs: elapsed.as_secs_f64(),
        stats,
    };
    match serde_json::to_string_pretty(&report) {
        Ok(text) => println!("{text}"),
        Err(e) => tracing::warn!("serve summary: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> ServerStats {
        let mut s = ServerStats {
            connections: 3,
            connections_total: 5,
            handshakes: 40,
            fast_connects: 10,
            binds: 4,
            pushes_sent: 2,
            acks_received: 1,
            ..ServerStats::default()
        };
        s.errors_by_code.insert(103, 2);
        s.closes_by_reason.insert("peer", 2);
        s
    }

    #[test]
    fn the_status_line_has_rates_over_the_interval() {
        let before = ServerStats {
            handshakes: 30,
            ..ServerStats::default()
        };
        let line = status_line(
            Duration::from_secs(10),
            &stats(),
            &before,
            Duration::from_secs(5),
        );
        assert_eq!(
            line,
            "[  10.0s] connections 3 handshakes 40 (2.0/s) fast connects 10 (2.0/s) binds 4 \
             pushes 2 acks 1 errors SESSION_EXPIRED_103=2"
        );
        let idle = status_line(
            Duration::ZERO,
            &ServerStats::default(),
            &ServerStats::default(),
            Duration::ZERO,
        );
        assert!(idle.ends_with("errors 0"), "{idle}");
    }

    #[test]
    fn the_summary_leaves_zeros_out() {
        let text = summary(&stats(), Duration::from_secs(10));
        assert_eq!(
            text,
            "mpush-fleet serve summary
  duration ..................... 10.0s
  connections open ............. 3
  connections accepted ......... 5
  handshakes ................... 40 (4.0/s)
  fast connects ................ 10 (1.0/s)
  binds ........................ 4
  pushes sent .................. 2
  acks received ................ 1
  errors SESSION_EXPIRED_103 ... 2
  closed: peer ................. 2
"
        );
        let json = serde_json::to_value(ServeReport {
            duration_secs: 10.0,
            stats: &stats(),
        })
        .unwrap();
        assert_eq!(json["handshakes"], 40);
        assert_eq!(json["duration_secs"], 10.0);
    }
}
