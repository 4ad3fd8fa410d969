//! `mpush-fleet run --processes N|auto`: one fleet in several processes, for fleets larger
//! than one process's descriptor limit.
//!
//! The supervisor splits the device range ([`plan`]), starts itself once per part as a
//! worker (`run --worker --first-device F --devices N ...`, [`children`]), and reads the
//! workers' JSON lines ([`crate::control::worker`]). It shows one status line and one
//! progress bar for all, serves one `--metrics` endpoint, forwards SIGINT/SIGTERM once (the
//! workers drain gracefully; a second signal kills them), and ends with one summary and
//! `--report`: the workers' reports merged exactly as `report merge` does, each worker's own
//! report written beside it (`r.json` gives `r.worker-0.json`, ...).
//!
//! It fails loudly: a worker that dies, never starts, stops reporting, or sends a line that
//! is not of the protocol is named in an `error:` line, the others are stopped gracefully, and
//! the exit code is [`WORKER_FAILED`].

pub mod children;
pub mod plan;
pub mod usage;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use self::children::{describe, Event, Worker};
use super::cli::{stop_signal, Progress, RunArgs, UsageError};
use super::merge::{self, Part};
use super::report::status_line;
use super::worker::WorkerMsg;
use crate::http::metrics::serve_metrics;
use crate::sink::SinkSpec;
use crate::stats::{Latencies, ShardStats};

/// Exit code when a worker died, never started or lied.
pub const WORKER_FAILED: u8 = 3;
/// How long a worker may take to start its fleet, or stay silent while it runs.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long workers may take to stop after SIGTERM before they are killed (their drain takes
/// up to 10 s by default).
const STOP_GRACE: Duration = Duration::from_secs(60);

/// What the supervisor knows of one worker.
struct Slot {
    worker: Worker,
    spawned: Instant,
    last_heard: Instant,
    started: bool,
    stats: ShardStats,
    report: Option<serde_json::Value>,
    exit: Option<(ExitStatus, Instant)>,
    eof: bool,
    failed: bool,
}

/// Runs the supervisor; returns the exit code.
///
/// # Errors
///
/// [`UsageError`] for a split that cannot work here; anything else is a failure to start.
pub fn run(args: RunArgs, argv: &[String]) -> anyhow::Result<u8> {
    let processes = args.processes.unwrap_or(plan::Processes::Auto);
    if matches!(args.sink, Some(SinkSpec::Stdout | SinkSpec::File(_))) {
        return Err(UsageError(
            "--processes takes --sink unix:PATH only (one consumer for every worker); stdout \
             and file: would interleave several processes' lines"
                .into(),
        )
        .into());
    }
    let limit = crate::server::raise_nofile_limit().unwrap_or(1024);
    let n = plan::count(processes, args.devices, limit);
    let slices = plan::split(args.first_device, args.devices, n);
    let most = slices
        .iter()
        .map(|s| u64::from(s.devices))
        .max()
        .unwrap_or(0);
    let max = plan::per_worker_max(limit);
    if most > max {
        let need = plan::count(plan::Processes::Auto, args.devices, limit);
        return Err(UsageError(format!(
            "--processes {processes}: workers of {most} devices, but a process may hold {max} \
             here ({limit} descriptors each); use --processes {need} or auto"
        ))
        .into());
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let shards = args.shards.unwrap_or((cores / n).max(1));
    let run_args: Vec<String> = argv
        .iter()
        .skip_while(|a| *a != "run")
        .skip(1)
        .cloned()
        .collect();
    // The workers' argument sets differ only in the numbers the supervisor gives them, so
    // checking the first checks all: a bad flag is one usage error, not N dead workers.
    if let Some(first) = slices.first() {
        let wargs = plan::worker_args(&run_args, first, args.rate.per_sec() / n as f64, shards);
        usage::check(&wargs)?;
    }
    let exe = std::env::current_exe().context("locating mpush-fleet for the workers")?;
    eprintln!(
        "supervisor: {n} workers of up to {most} devices, {shards} shard(s) each \
         ({limit} descriptors per process)"
    );
    let stop = stop_signal()?;
    let (tx, events) = crossbeam_channel::unbounded();
    let mut slots: Vec<Slot> = Vec::with_capacity(n);
    for s in &slices {
        let mut wargs = plan::worker_args(&run_args, s, args.rate.per_sec() / n as f64, shards);
        wargs.extend(args.upstream.worker_rates(n));
        match Worker::spawn(&exe, &wargs, *s, tx.clone()) {
            Ok(worker) => {
                let now = Instant::now();
                slots.push(Slot {
                    worker,
                    spawned: now,
                    last_heard: now,
                    started: false,
                    stats: ShardStats::default(),
                    report: None,
                    exit: None,
                    eof: false,
                    failed: false,
                });
            }
            Err(e) => {
                slots.iter().for_each(|s| s.worker.terminate());
                return Err(e);
            }
        }
    }
    drop(tx);
    let latest = Arc::new(Mutex::new(ShardStats::default()));
    let metrics = match &args.metrics {
        Some(addr) => {
            let addr = addr
                .resolve("--metrics")
                .map_err(crate::control::cli::UsageError)?;
            let latest = latest.clone();
            let source = move || {
                latest
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            };
            let server = serve_metrics(addr, Arc::new(source))?;
            tracing::info!(addr = %server.local_addr(), "metrics at /metrics");
            Some(server)
        }
        None => None,
    };
    let started = Instant::now();
    let mut out = Progress::new(args.devices, false);
    let status_every = Duration::from_secs_f64(args.status_every.max(0.1));
    let mut next_status = started + status_every;
    let mut failures: Vec<String> = Vec::new();
    let mut stopping: Option<Instant> = None;
    let mut all_online = false;
    let all = u64::from(args.devices);
    while !slots.iter().all(|s| s.exit.is_some() && s.eof) {
        if let Ok(ev) = events.recv_timeout(Duration::from_millis(100)) {
            take(&mut slots, ev, &mut failures);
            while let Ok(ev) = events.try_recv() {
                take(&mut slots, ev, &mut failures);
            }
        }
        let now = Instant::now();
        for s in &mut slots {
            check(s, now, stopping.is_some(), &mut failures);
        }
        let mut total = ShardStats::default();
        slots.iter().for_each(|s| total.merge(&s.stats));
        out.update(&total.counters);
        if metrics.is_some() {
            *latest.lock().unwrap_or_else(PoisonError::into_inner) = total.clone();
        }
        let c = &total.counters;
        if !all_online && c.ever_online >= all {
            all_online = true;
            out.line(&format!(
                "all {all} devices came online in {:.1}s",
                started.elapsed().as_secs_f64()
            ));
        }
        let mut stop_now = !failures.is_empty();
        if stop.try_recv().is_ok() {
            if stopping.is_some() {
                eprintln!("second signal: killing the workers");
                slots.iter_mut().for_each(|s| s.worker.kill());
            }
            eprintln!("stopping (signal): asking {} workers to stop", slots.len());
            stop_now = true;
        }
        if args.stop_when_online && c.ever_online >= all && c.bound >= all {
            stop_now = true;
        }
        if stop_now && stopping.is_none() {
            stopping = Some(now);
            slots.iter().for_each(|s| s.worker.terminate());
        }
        if stopping.is_some_and(|t| now.duration_since(t) > STOP_GRACE) {
            for s in slots.iter_mut().filter(|s| s.exit.is_none()) {
                fail(
                    s,
                    &mut failures,
                    format!("did not stop within {STOP_GRACE:?}"),
                );
            }
        }
        if now >= next_status {
            out.line(&status_line(args.devices, started.elapsed(), &total));
            next_status += status_every;
        }
    }
    out.finish();
    drop(metrics);
    let outcome = finish(&args, &slots, &mut failures, &out, started.elapsed());
    for f in &failures {
        eprintln!("error: {f}");
    }
    let code = outcome?;
    Ok(if failures.is_empty() {
        code
    } else {
        WORKER_FAILED
    })
}

/// Takes one reader event into the worker's slot.
fn take(slots: &mut [Slot], ev: Event, failures: &mut Vec<String>) {
    let k = match &ev {
        Event::Msg(k, _) | Event::Lie(k, _) | Event::Eof(k) => *k,
    };
    let Some(s) = slots.get_mut(k) else { return };
    s.last_heard = Instant::now();
    match ev {
        Event::Eof(_) => s.eof = true,
        Event::Lie(_, why) => fail(
            s,
            failures,
            format!("sent a line that is not a message: {why}"),
        ),
        Event::Msg(_, WorkerMsg::Started { .. }) => s.started = true,
        Event::Msg(
            _,
            WorkerMsg::Stats {
                counters,
                histograms,
            },
        ) => match Latencies::decode(histograms.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            Ok(latencies) => {
                // No phases: `--processes` refuses `--stages` and `--rate auto`.
                s.stats = ShardStats {
                    counters: *counters,
                    latencies,
                    stages: Default::default(),
                    servers: Default::default(),
                }
            }
            Err(e) => fail(
                s,
                failures,
                format!("sent statistics that do not decode: {e}"),
            ),
        },
        Event::Msg(_, WorkerMsg::Report { report }) => match Part::parse("", &report.to_string()) {
            Ok(_) => s.report = Some(report),
            Err(e) => fail(
                s,
                failures,
                format!("sent a report that does not merge: {e:#}"),
            ),
        },
    }
}

/// Notices a worker that ended, never started, or went silent. A stopping worker is silent
/// while it drains (it sends its report at the end): `STOP_GRACE` bounds it instead.
fn check(s: &mut Slot, now: Instant, stopping: bool, failures: &mut Vec<String>) {
    if s.exit.is_none() {
        if let Some(status) = s.worker.try_wait() {
            s.exit = Some((status, now));
        }
    }
    if let Some((status, at)) = s.exit {
        // Its last lines may still be in the pipe: judge at end of file (or 5 s after exit,
        // should a grandchild hold the pipe open).
        if !s.eof && now.duration_since(at) > Duration::from_secs(5) {
            s.eof = true;
        }
        if s.eof && s.report.is_none() && !s.failed {
            let how = describe(status);
            let what = if s.started {
                format!("died ({how}) before its report")
            } else {
                format!("never started ({how})")
            };
            fail(s, failures, what);
        }
        return;
    }
    if !s.started && now.duration_since(s.spawned) > PATIENCE {
        fail(s, failures, format!("never started within {PATIENCE:?}"));
    } else if !stopping && s.report.is_none() && now.duration_since(s.last_heard) > PATIENCE {
        fail(s, failures, format!("stopped reporting for {PATIENCE:?}"));
    }
}

/// Records a worker's failure once, with its last stderr lines, and kills it if it runs.
fn fail(s: &mut Slot, failures: &mut Vec<String>, what: String) {
    if s.failed {
        return;
    }
    s.failed = true;
    let words = s.worker.last_words();
    let mut msg = format!("{} {what}", s.worker.name());
    if !words.is_empty() {
        msg.push_str(&format!("; its last lines:\n{words}"));
    }
    failures.push(msg);
    if s.exit.is_none() {
        s.worker.kill();
    }
}

/// Merges the reports that arrived, prints the summary, writes `--report`; the exit code of
/// the merged run.
fn finish(
    args: &RunArgs,
    slots: &[Slot],
    failures: &mut Vec<String>,
    out: &Progress,
    elapsed: Duration,
) -> anyhow::Result<u8> {
    let mut parts = Vec::new();
    for s in slots {
        if let Some(r) = &s.report {
            parts.push((s.worker.name(), serde_json::from_value::<Part>(r.clone())?));
        }
    }
    if parts.is_empty() {
        failures.push("no worker reported: no summary".into());
        return Ok(WORKER_FAILED);
    }
    let mut merged = merge::merge(&parts)?;
    // Devices of a worker that failed count as devices that never came online.
    merged.report.devices = args.devices;
    merged.report.first_device = args.first_device;
    out.line(&status_line(args.devices, elapsed, &merged.judged));
    let code = merge::print_outcome(&merged, &args.fail_on, args.json);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&merged.report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        for s in slots {
            if let Some(r) = &s.report {
                let p = worker_path(path, s.worker.slice.index);
                std::fs::write(&p, serde_json::to_vec_pretty(r)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
        }
    }
    Ok(code)
}

/// `r.json` and worker 2 give `r.worker-2.json`.
fn worker_path(report: &Path, k: usize) -> PathBuf {
    let stem = report
        .file_stem()
        .map_or_else(Default::default, |s| s.to_string_lossy());
    let name = match report.extension() {
        Some(ext) => format!("{stem}.worker-{k}.{}", ext.to_string_lossy()),
        None => format!("{stem}.worker-{k}"),
    };
    report.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_reports_sit_beside_the_merged_one() {
        assert_eq!(
            worker_path(Path::new("/tmp/r.json"), 2),
            Path::new("/tmp/r.worker-2.json")
        );
        assert_eq!(worker_path(Path::new("out"), 0), Path::new("out.worker-0"));
    }
}
