//! `mpush-fleet run` (its flags are in [`super::args`]): the embedded server, status
//! lines (a progress bar while ramping on a terminal), the push sink, the metrics endpoint,
//! the summary and the exit code (0: every device reached online and no `--fail-on` threshold
//! held; 1: otherwise; 2: bad usage; 3: with `--processes`, a worker died or never started).
//! `--processes` hands the run to [`super::supervisor`].

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::embedded::Embedded;
use super::fail_on;
use super::push_load::PushRun;
use super::report::{status_line, ProcessCost, RunReport};
use super::summary;
use super::{memory_stores, Fleet, FleetConfig};
use crate::discovery::{ServerSource, StartError};
use crate::http::metrics::serve_metrics;
use crate::sink::{Sink, SinkSpec};
use crate::stats::{Counters, ShardStats};
use crate::tickets::{RedisConfig, RedisTickets};

pub use super::args::{
    expand_sources, merge_config, parse_duration, parse_run, RunArgs, UsageError,
};
use super::setup::{check_descriptors, fleet_config, push_config, with_push};

/// Runs `mpush-fleet run`; returns the process exit code.
///
/// # Errors
///
/// [`UsageError`] for bad usage (exit 2); anything else is a failure to run.
pub fn run_main(args: RunArgs) -> anyhow::Result<u8> {
    let argv: Vec<String> = std::env::args().collect();
    let mut args = merge_config(args, &argv).map_err(|e| UsageError(format!("{e:#}")))?;
    // Usage first: a name that does not resolve is one.
    let spec = args.discover.spec(&args.servers).map_err(UsageError)?;
    let metrics_addr = match &args.metrics {
        Some(a) if !args.worker => Some(a.resolve("--metrics").map_err(UsageError)?),
        _ => None,
    };
    if args.worker {
        // The supervisor shows, serves, judges and writes for all its workers.
        (args.metrics, args.report, args.fail_on) = (None, None, Vec::new());
    }
    if let Some(addr) = args.control {
        // Before anything binds: nothing listens off loopback without a token, even briefly.
        crate::http::auth::check_exposure(addr, args.control_token.as_deref(), "--control")
            .map_err(|e| UsageError(e.to_string()))?;
    }
    let listed = match &args.devices_file {
        Some(path) => Some(super::devices_file::load(path).map_err(UsageError)?),
        None => None,
    };
    if let Some(list) = &listed {
        let total = list.len() as u32;
        if args.first_device >= total {
            return Err(UsageError(format!(
                "--first-device {} is past the {total} devices of --devices-file",
                args.first_device
            ))
            .into());
        }
        if !args.worker {
            args.devices = total - args.first_device;
        } else if u64::from(args.first_device) + u64::from(args.devices) > u64::from(total) {
            return Err(UsageError(format!(
                "devices {}..{} are past the {total} of --devices-file",
                args.first_device,
                u64::from(args.first_device) + u64::from(args.devices)
            ))
            .into());
        }
    }
    if !args.worker && args.processes.is_some() {
        if args.push_rate.is_some() {
            return Err(UsageError(
                "--processes with --push-rate is not supported yet: run one fleet process \
                 per range with --first-device and merge the reports (`report merge` adds \
                 the push figures exactly)"
                    .into(),
            )
            .into());
        }
        if args.control.is_some() {
            return Err(UsageError(
                "--control with --processes is not supported yet: the control API runs in \
                 one fleet process (split the fleet with --first-device and give each \
                 process its own --control address)"
                    .into(),
            )
            .into());
        }
        if args.stages.is_some() || args.rate == super::phases::RateArg::Auto {
            return Err(UsageError(
                "--processes with --stages or --rate auto is not supported yet: the phases \
                 and the capacity search run per process (give each process its own range \
                 with --first-device)"
                    .into(),
            )
            .into());
        }
        return super::supervisor::run(args, &argv);
    }
    let mut link = args.worker.then(super::worker::Link::new);
    let (plan, devices) = super::phases::plan_of(&args)?;
    args.devices = devices;
    let embedded = spec.is_none();
    let mut source = match spec {
        Some(spec) => Some(ServerSource::start(spec).map_err(|e| match e {
            StartError::Unresolvable { .. } => anyhow::Error::from(UsageError(e.to_string())),
            StartError::Discovery(_) => e.into(),
        })?),
        None => None,
    };
    crate::shard::io_uring_available().map_err(|e| {
        anyhow::anyhow!(
            "io_uring is unavailable here ({e}); mpush-fleet's shards need it. \
             Containers often forbid it (seccomp, kernel.io_uring_disabled): run on a host or \
             a container that allows io_uring_setup"
        )
    })?;
    let limit = check_descriptors(args.devices)?;
    let server = if embedded {
        let redis = args.redis.as_deref();
        Some(Embedded::start(
            args.devices,
            args.embedded_heartbeat,
            limit,
            redis,
            args.push_rate.is_some(),
        )?)
    } else {
        None
    };
    let servers = match (&server, &source) {
        (Some(embedded), _) => vec![embedded.addr()],
        (None, Some(source)) => source.rotation(),
        (None, None) => Vec::new(),
    };
    let cfg = fleet_config(&args, servers)?;
    if let Some(list) = listed {
        let range = args.first_device as usize..(args.first_device + args.devices) as usize;
        for (i, identity) in list.into_iter().enumerate() {
            if range.contains(&i) {
                cfg.device.identities.insert(i as u32, identity);
            }
        }
    }
    let devices = cfg.devices;
    // The devices that bind: all (or none) of a template fleet, those with a user of a list.
    let binding = if cfg.device.identities.is_empty() {
        if cfg.device.bind {
            u64::from(devices)
        } else {
            0
        }
    } else {
        (cfg.first_device..cfg.first_device + devices)
            .filter(|&i| cfg.device.binds(i))
            .count() as u64
    };
    let sink = match &args.sink {
        Some(spec) => {
            Some(Sink::start(spec.clone(), args.sink_capacity).context("starting the sink")?)
        }
        None => None,
    };
    let cfg = FleetConfig {
        sink: sink.as_ref().map(Sink::sender),
        plan,
        ..cfg
    };
    let stop_when_done = cfg.plan.stop_when_done;
    let to_stderr = args.worker || matches!(args.sink, Some(SinkSpec::Stdout));
    let mut out = Progress::new(devices, to_stderr);
    let stores = match &args.redis {
        Some(url) => {
            let redis = RedisConfig {
                prefix: args.redis_prefix.clone(),
                ticket_ttl: args.ticket_ttl,
                ..RedisConfig::new(url.clone())
            };
            RedisTickets::fleet_named(
                redis,
                cfg.device.device_id.clone(),
                cfg.device.identities.clone(),
                cfg.shards,
            )
            .map_err(|e| UsageError(format!("--redis: {e}")))?
        }
        None => memory_stores(cfg.shards),
    };
    let push_cfg = push_config(&args, &cfg, server.as_ref())?;
    let stop = stop_signal()?;
    let mut fleet = Fleet::start(cfg, stores)?;
    let mut push_run = match push_cfg {
        Some(p) => Some(PushRun::start(p, args.push_grace)?),
        None => None,
    };
    if let Some(sink) = sink
        .as_ref()
        .filter(|s| matches!(s.spec(), SinkSpec::Unix(_)))
    {
        // The consumer that holds the socket may send the control API's commands on it.
        sink.serve_lines(super::api::lines::handler(fleet.control_plane())?);
    }
    let control = match args.control {
        Some(addr) => {
            let token = args.control_token.as_deref();
            let server = super::api::http::serve_control(addr, token, fleet.control_plane())?;
            // On stderr, so a script (or a test) that bound port 0 learns the port.
            eprintln!("control API on http://{}", server.local_addr());
            Some(server)
        }
        None => None,
    };
    if let Some(link) = &mut link {
        link.started();
    }
    // The scrape thread reads the latest merge; the lock is the control plane's, never a
    // shard's, and is held only to swap or clone a snapshot.
    let latest = Arc::new(Mutex::new(ShardStats::default()));
    let metrics = match metrics_addr {
        Some(addr) => {
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
    let status_every = Duration::from_secs_f64(args.status_every.max(0.1));
    let mut next_status = Instant::now() + status_every;
    let deadline = args.duration.map(|d| Instant::now() + d);
    loop {
        fleet.poll(Duration::from_millis(100));
        if let Some(source) = &mut source {
            source.connects_failed(fleet.counters().connect_failures);
            if let Some(servers) = source.poll() {
                fleet.set_servers(&servers);
                tracing::info!(
                    "servers now: {}",
                    crate::discovery::spread::describe(&servers)
                );
            }
        }
        let receipts = fleet.take_push_receipts();
        if let Some(p) = &mut push_run {
            let c = fleet.counters();
            p.set_active(c.ever_online >= u64::from(devices) && c.bound >= binding);
            p.pump(receipts);
            if p.all_settled() {
                break;
            }
        }
        if metrics.is_some() {
            *latest.lock().unwrap_or_else(PoisonError::into_inner) =
                with_push(fleet.stats(), push_run.as_ref());
        }
        out.update(&fleet.counters());
        if link.as_mut().is_some_and(|l| !l.tick(&fleet)) {
            break;
        }
        if stop.try_recv().is_ok() {
            eprintln!("stopping (signal)");
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if args.stop_when_online && !args.worker && push_run.is_none() {
            let c = fleet.counters();
            let all = u64::from(devices);
            if c.ever_online >= all && c.bound >= binding {
                break;
            }
        }
        if stop_when_done && fleet.stages_done() {
            break;
        }
        if Instant::now() >= next_status && !args.worker {
            let stats = with_push(fleet.stats(), push_run.as_ref());
            out.line(&status_line(devices, fleet.elapsed(), &stats));
            next_status += status_every;
        }
    }
    // The fleet still holds its users while the last pushes arrive (or their grace ends).
    let push_figures = push_run.map(|mut p| {
        p.stop_sending();
        while !p.may_end() {
            fleet.poll(Duration::from_millis(50));
            p.pump(fleet.take_push_receipts());
            if stop.try_recv().is_ok() {
                break;
            }
        }
        fleet.poll(Duration::ZERO);
        let figures = p.finish(fleet.take_push_receipts());
        let exit = figures.exit;
        if exit.connect_failures + exit.bad_frames + exit.unmatched > 0 {
            out.line(&format!(
                "push gateway: connect failures {}, bad frames {}, unmatched replies {}",
                exit.connect_failures, exit.bad_frames, exit.unmatched
            ));
        }
        figures
    });
    fleet.poll(Duration::ZERO);
    let online_before_stop = fleet.counters().online;
    let servers_before_stop = fleet.stats().servers.by_name();
    let rss_online = ProcessCost::now().map(|p| p.rss_bytes_online);
    let mut result = fleet.stop()?;
    if let Some(p) = &push_figures {
        result.stats.merge(&p.stats);
    }
    out.finish();
    if let Some(sink) = sink {
        let spec = sink.spec().to_string();
        let d = sink.close(SINK_DRAIN_TIMEOUT);
        out.line(&format!(
            "sink {spec}: written {} acked {} left unacked {}",
            d.written, d.acked, d.left
        ));
    }
    let mut report = RunReport::new(devices, &result.stats, result.elapsed);
    report.first_device = args.first_device;
    if let Some(p) = &push_figures {
        report.push_sending_secs = Some(p.sending_secs);
        report.push_rate_achieved =
            Some(p.stats.counters.push_sent as f64 / p.sending_secs.max(1e-9));
    }
    // Stopping takes every session down: report how many were online when the stop began.
    report.online = online_before_stop;
    for (name, f) in &mut report.servers {
        f.online = servers_before_stop.get(name).map_or(0, |b| b.online);
    }
    report.process = ProcessCost::now().map(|p| ProcessCost {
        rss_bytes_online: rss_online.unwrap_or(p.rss_bytes_online),
        ..p
    });
    if let Some(link) = &mut link {
        link.report(&report);
        if let Some(server) = server {
            server.stop();
        }
        return Ok(u8::from(!summary::passed(&report, &[])));
    }
    out.line(&status_line(devices, result.elapsed, &result.stats));
    let mut judged = result.stats;
    judged.counters.online = online_before_stop;
    let verdicts = fail_on::judge(&args.fail_on, devices, &judged);
    // A person at a terminal gets the table; scripts (a pipe, a file, or --json) the JSON.
    let table = out.tty && !args.json;
    if table {
        out.line(summary::render(&report, &verdicts).trim_end());
    } else {
        out.line(&serde_json::to_string_pretty(&report)?);
    }
    // The table marks failed thresholds already; the lines still go to a stderr that is a
    // log or a pipe.
    if !(table && std::io::stderr().is_terminal()) {
        for v in fail_on::evaluate(&args.fail_on, devices, &judged) {
            eprintln!("{v}");
        }
    }
    drop(metrics);
    drop(control);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(server) = server {
        server.stop();
    }
    Ok(if summary::passed(&report, &verdicts) {
        0
    } else {
        1
    })
}

/// A channel that receives once on SIGINT or SIGTERM.
pub(crate) fn stop_signal() -> anyhow::Result<crossbeam_channel::Receiver<()>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    ctrlc::set_handler(move || {
        let _ = tx.try_send(());
    })
    .context("installing the signal handler")?;
    Ok(rx)
}

/// How long the sink may take at exit to write what is queued and collect its acks.
const SINK_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where status goes: a progress bar while the fleet ramps when the output is a terminal,
/// plain lines otherwise (CI, logs); stderr instead of stdout when stdout carries the sink's
/// JSON lines.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    to_stderr: bool,
    /// Whether the stream is a terminal (a person reads it).
    pub(crate) tty: bool,
    devices: u64,
}

impl Progress {
    pub(crate) fn new(devices: u32, to_stderr: bool) -> Progress {
        let tty = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        let bar = tty.then(|| {
            let target = if to_stderr {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::stdout()
            };
            let bar = ProgressBar::with_draw_target(Some(u64::from(devices)), target);
            let template = "{elapsed_precise} [{wide_bar}] {pos}/{len} came online  {msg}";
            // The template is a constant; the fallback keeps a bad one from costing the run.
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            to_stderr,
            tty,
            devices: u64::from(devices),
        }
    }

    /// Moves the bar; once every device came online the ramp is over and plain lines resume.
    pub(crate) fn update(&mut self, c: &Counters) {
        let Some(bar) = &self.bar else { return };
        bar.set_position(c.ever_online.min(self.devices));
        bar.set_message(format!("online {} reconnects {}", c.online, c.reconnects));
        if c.ever_online >= self.devices {
            self.finish();
        }
    }

    pub(crate) fn line(&self, s: &str) {
        match &self.bar {
            Some(bar) => bar.println(s),
            None if self.to_stderr => eprintln!("{s}"),
            None => println!("{s}"),
        }
    }

    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
