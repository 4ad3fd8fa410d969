//! The pipe between `run --processes` (the supervisor) and its workers: JSON lines on the
//! worker's stdout, one message per line.
//!
//! Why JSON lines on a pipe: the pipe needs no port or path (nothing to allocate, collide or
//! clean up), its end of file is the worker's death as the supervisor sees it, at once; the
//! messages are the types the reports already serialise (counters, HDR V2 histograms, the
//! `--report` JSON), so the supervisor merges with `report merge`'s code; and a person can
//! read them (`run --worker ... | head`). A line that does not parse is a worker that lies:
//! the supervisor fails it, it never guesses.
//!
//! A worker sends [`Started`](WorkerMsg::Started) once its fleet runs, [`Stats`] every
//! [`STATS_EVERY`], and [`Report`](WorkerMsg::Report) at the end; the supervisor shows, serves
//! and judges the merge of those.
//!
//! [`Stats`]: WorkerMsg::Stats

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::report::RunReport;
use super::Fleet;
use crate::stats::Counters;

/// How often a worker sends its statistics.
pub const STATS_EVERY: Duration = Duration::from_millis(250);

/// What a worker says, as the supervisor reads it.
#[derive(Debug, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerMsg {
    /// Its fleet started.
    Started {
        /// The worker's process id.
        pid: u32,
    },
    /// Its statistics now.
    Stats {
        /// Counters (boxed: the other messages are small).
        counters: Box<Counters>,
        /// Histograms, base64 HDR V2 by name.
        histograms: BTreeMap<String, String>,
    },
    /// Its final report (the `--report` JSON of its range, kept as sent so that the
    /// supervisor writes it as it came; it must parse as a
    /// [`Part`](super::merge::Part)).
    Report {
        /// The report.
        report: serde_json::Value,
    },
}

/// What a worker sends (the serialising twin of [`WorkerMsg`]).
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Out<'a> {
    Started {
        pid: u32,
    },
    Stats {
        counters: &'a Counters,
        histograms: BTreeMap<&'static str, String>,
    },
    Report {
        report: &'a RunReport,
    },
}

/// The worker's end: writes to stdout.
#[derive(Debug)]
pub struct Link {
    next_stats: Instant,
    /// False once a write failed: the supervisor is gone.
    alive: bool,
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

impl Link {
    /// A link on this process's stdout.
    pub fn new() -> Link {
        Link {
            next_stats: Instant::now(),
            alive: true,
        }
    }

    fn send(&mut self, msg: &Out<'_>) {
        let Ok(mut line) = serde_json::to_vec(msg) else {
            return;
        };
        line.push(b'\n');
        // One write per line; stdout is a pipe, so lines never interleave with a partial one
        // of ours. A failed write means the supervisor closed the pipe (it died).
        let mut out = std::io::stdout().lock();
        if out.write_all(&line).and_then(|()| out.flush()).is_err() {
            self.alive = false;
        }
    }

    /// Tells the supervisor the fleet runs.
    pub fn started(&mut self) {
        self.send(&Out::Started {
            pid: std::process::id(),
        });
    }

    /// Sends the fleet's statistics if [`STATS_EVERY`] has passed; returns false once the
    /// supervisor is gone (the worker then stops).
    pub fn tick(&mut self, fleet: &Fleet) -> bool {
        if Instant::now() >= self.next_stats {
            self.next_stats = Instant::now() + STATS_EVERY;
            let stats = fleet.stats();
            self.send(&Out::Stats {
                counters: &stats.counters,
                histograms: stats.latencies.encode(),
            });
        }
        self.alive
    }

    /// Sends the final report.
    pub fn report(&mut self, report: &RunReport) {
        self.send(&Out::Report { report });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Latency, ShardStats};

    #[test]
    fn what_a_worker_sends_the_supervisor_reads() {
        let mut s = ShardStats::default();
        s.counters.online = 7;
        s.latencies.record(Latency::Bind, 900);
        let report = RunReport::new(7, &s, Duration::from_secs(1));
        let lines = [
            serde_json::to_string(&Out::Started { pid: 42 }).unwrap(),
            serde_json::to_string(&Out::Stats {
                counters: &s.counters,
                histograms: s.latencies.encode(),
            })
            .unwrap(),
            serde_json::to_string(&Out::Report { report: &report }).unwrap(),
        ];
        let msgs: Vec<WorkerMsg> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(matches!(msgs[0], WorkerMsg::Started { pid: 42 }));
        assert!(matches!(&msgs[1], WorkerMsg::Stats { counters, .. } if counters.online == 7));
        assert!(matches!(&msgs[2], WorkerMsg::Report { report } if report["devices"] == 7));
        for lie in [
            "",
            "{}",
            "{\"event\":\"stats\"}",
            "[]",
            "{\"event\":\"nope\"}",
        ] {
            assert!(serde_json::from_str::<WorkerMsg>(lie).is_err(), "{lie:?}");
        }
    }
}
