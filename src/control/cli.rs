//! `mpush-fleet run`: flags (mirrored by a TOML `--config` file), the embedded server, status
//! lines (a progress bar while ramping on a terminal), the push sink, the metrics endpoint,
//! the summary and the exit code (0: every device reached online and no `--fail-on` threshold
//! held; 1: otherwise; 2: bad usage; 3: with `--processes`, a worker died or never started).
//! `--processes` hands the run to [`super::supervisor`].

use std::io::IsTerminal as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Parser};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::embedded::{Embedded, SPARE_DESCRIPTORS};
use super::fail_on::{self, Threshold};
use super::push_load::{Gateways, PushRun, PusherConfig};
use super::report::{status_line, ProcessCost, RunReport};
use super::summary;
use super::{memory_stores, Fleet, FleetConfig};
use crate::crypto::RsaEncryptor;
use crate::device::{DeviceConfig, Template};
use crate::discovery::{DiscoverArgs, Endpoint, ServerSource, StartError};
use crate::http::metrics::serve_metrics;
use crate::sink::{Sink, SinkSpec};
use crate::stats::{Counters, ShardStats};
use crate::tickets::{RedisConfig, RedisTickets};

/// `mpush-fleet run` flags. Every flag has a TOML key of the same name (`--devices` is
/// `devices = 10000`, `--server` is `server = ["127.0.0.1:3000"]`); flags on the command line
/// win over the file.
#[derive(Args, Debug, Clone)]
#[command(args_override_self = true)]
pub struct RunArgs {
    /// TOML file with any of these flags as keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Server endpoint (repeatable, used round-robin; a name is resolved to all its addresses
    /// at start and again when connects fail). Without it or --zookeeper, `run` starts the
    /// reference server in-process on loopback and runs against it.
    #[arg(
        long = "server",
        value_name = "HOST:PORT",
        conflicts_with = "zookeeper"
    )]
    pub servers: Vec<Endpoint>,
    /// Finding the servers in ZooKeeper instead (`--zookeeper`, ...).
    #[command(flatten)]
    pub discover: DiscoverArgs,
    /// How many devices this process runs.
    #[arg(long, default_value_t = 1000)]
    pub devices: u32,
    /// New sessions per second across the fleet (0: as fast as possible), or `auto`: search
    /// for the server's capacity (see `--auto-p99`).
    #[arg(long, default_value = "1000")]
    pub rate: super::phases::RateArg,
    /// `--rate auto`'s target: the handshake and fast-connect p99 it keeps to, ms.
    #[arg(long, default_value_t = 500.0, value_name = "MS")]
    pub auto_p99: f64,
    /// The run as phases, k6-style, e.g. `ramp:10000@1000,hold:60s,churn:5%/s:30s,storm,
    /// ramp-down:20s` (TOML: `[[stage]]` tables); the run ends after the last. See README.
    #[arg(long, value_name = "SPEC")]
    pub stages: Option<String>,
    /// Run this long, then stop gracefully (`30s`, `5m`, `2h`, or seconds); without it,
    /// until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Shard threads (default: one per core).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Stop (gracefully, as at the end of --duration) as soon as every device has been online
    /// and bound: a smoke test of a server that ends on the condition, not on a clock.
    #[arg(long)]
    pub stop_when_online: bool,
    /// Do not pin shard threads to cores (for several fleet processes on one machine).
    #[arg(long)]
    pub no_pin: bool,
    /// io_uring submission-queue entries per shard (the completion queue is twice as large).
    #[arg(long, default_value_t = 4096)]
    pub ring_entries: u32,
    /// The shards' runtime: `uring` (raw io_uring, one ring per shard) or `tokio-uring`.
    #[arg(long, value_enum, env = "MPUSH_FLEET_DRIVER", default_value_t = Default::default())]
    pub driver: crate::shard::DriverKind,
    /// Index of this process's first device, so several processes split one fleet.
    #[arg(long, default_value_t = 0)]
    pub first_device: u32,
    /// Run the fleet as this many worker processes under one supervisor (one status line,
    /// summary, --report and --metrics for all); `auto`: as many as this machine's
    /// per-process descriptor limit needs, embedded servers included.
    #[arg(long, value_name = "N|auto")]
    pub processes: Option<super::supervisor::plan::Processes>,
    /// Internal: run as a supervisor's worker (JSON lines on stdout, see `control::worker`).
    #[arg(long, hide = true)]
    pub worker: bool,
    /// Local source address or IPv4 CIDR to bind before connecting (repeatable).
    #[arg(long = "source", value_name = "ADDR|CIDR")]
    pub sources: Vec<String>,
    /// The server's RSA public key (base64 X.509 SubjectPublicKeyInfo); default MPUSH's.
    #[arg(long)]
    pub public_key: Option<String>,
    /// The devices by their real identities, one a line: JSON lines
    /// (`{"deviceId":"d1","userId":"u1","tags":"a,b","osName":"ios"}`) or CSV
    /// (`deviceId,userId,tags,osName,osVersion,clientVersion`), told by the extension or the
    /// first line. The fleet is the file's devices from --first-device on (--devices is taken
    /// only from a supervisor, to split the list).
    #[arg(long, value_name = "FILE")]
    pub devices_file: Option<PathBuf>,
    /// Serve the control API (add / remove / bind / kick / close / inspect devices) at
    /// http://ADDR (default 127.0.0.1:9200); any address but loopback needs --control-token.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9200")]
    pub control: Option<SocketAddr>,
    /// The bearer token every control request must carry (compared in constant time).
    #[arg(long, env = "MPUSH_CONTROL_TOKEN", hide_env_values = true)]
    pub control_token: Option<String>,
    /// Device id template; `{i}` is the device index.
    #[arg(long, default_value = "device-{i}")]
    pub device_id: String,
    /// User id template; `{i}` is the device index.
    #[arg(long, default_value = "user-{i}")]
    pub user_id: String,
    /// Handshake osName.
    #[arg(long, default_value = "android")]
    pub os_name: String,
    /// Handshake osVersion.
    #[arg(long, default_value = "1.0.1")]
    pub os_version: String,
    /// Handshake clientVersion.
    #[arg(long, default_value = "1.0.0")]
    pub client_version: String,
    /// Bind tags.
    #[arg(long, default_value = "")]
    pub tags: String,
    /// Heartbeat the devices ask for (min and max), ms.
    #[arg(long, default_value_t = 180_000)]
    pub heartbeat: i32,
    /// Request timeout (handshake, fast connect, bind), ms. A server answers in order on a
    /// connection, so a late answer is still taken up to this limit; 10 s is what mobile HTTP
    /// stacks default to (OkHttp's read timeout) and outlasts a loaded server's queue.
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout: u32,
    /// Most devices of the fleet between connect and bound at once (the admission window;
    /// split over the shards); 0 = unlimited. Starts and reconnects wait for room.
    #[arg(long, default_value_t = 256)]
    pub max_pending: u32,
    /// Retry budget: tokens a session that came up earns for later reconnects.
    #[arg(long, default_value_t = 0.2)]
    pub retry_budget: f64,
    /// Retry budget floor: reconnect tokens per second that accrue regardless (fleet-wide).
    #[arg(long, default_value_t = 10.0)]
    pub retry_floor: f64,
    /// Connect timeout, ms.
    #[arg(long, default_value_t = 3_000)]
    pub connect_timeout: u32,
    /// Reconnect after a kick.
    #[arg(long)]
    pub reconnect_on_kick: bool,
    /// Write the JSON summary here at exit.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the JSON summary at exit even on a terminal (where a table is shown otherwise;
    /// when the output is not a terminal, the JSON is printed anyway).
    #[arg(long)]
    pub json: bool,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 5.0)]
    pub status_every: f64,
    /// RNG seed for replayable runs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Heartbeat of the embedded server, ms (min and max).
    #[arg(long, default_value_t = 180_000)]
    pub embedded_heartbeat: i32,
    /// Push sink: `stdout`, `file:PATH` or `unix:PATH` (JSON lines),
    /// `redis-stream:redis://HOST:PORT/DB[?stream=KEY&maxlen=N]` (XADD) or
    /// `webhook:http://HOST:PORT/PATH[#inflight=N]` (POST). BIZ_ACK pushes are acked upstream
    /// only once the sink took them. With `stdout`, status goes to stderr.
    #[arg(long, value_name = "SPEC")]
    pub sink: Option<SinkSpec>,
    /// Records the sink may queue (and, unix, await acks for) before reading slows down.
    #[arg(long, default_value_t = 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub sink_capacity: usize,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (`127.0.0.1:9100`; a host name
    /// is resolved at start, to its first IPv4 address if it has one).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<crate::discovery::BindAddr>,
    /// Exit 1 when a threshold holds at the end: `online<99.9%`, `handshake.p99>500ms`,
    /// `errors>0`, `reconnects>10` (repeatable or comma-separated; see `control::fail_on`).
    #[arg(long = "fail-on", value_name = "EXPR", value_delimiter = ',')]
    pub fail_on: Vec<Threshold>,
    /// Keep tickets in Redis instead of memory, shared with other processes and later runs:
    /// `redis://HOST:PORT/DB`, `redis-cluster://HOST:PORT?node=HOST:PORT`, or
    /// `redis-sentinel://HOST:PORT/DB?sentinelServiceName=NAME`.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Key prefix of tickets in Redis.
    #[arg(long, default_value = crate::tickets::format::CLIENT_TICKET_PREFIX)]
    pub redis_prefix: String,
    /// Longest a ticket lives in Redis (never beyond its session's expireTime).
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    pub ticket_ttl: Duration,
    /// End-to-end pushes: once every device has bound, push to the fleet's own users at R per
    /// second through the gateway (`--gateway`; or each user's route in `--redis`; or the
    /// embedded server's gateway), and account for every push (status line, report,
    /// Prometheus, `--fail-on push.lost>0,push.e2e.p99>200ms`).
    #[arg(long, value_name = "R")]
    pub push_rate: Option<f64>,
    /// Send this many pushes, then end the run once each is accounted for (received, or
    /// explained, or lost after --push-grace).
    #[arg(long, value_name = "N", requires = "push_rate")]
    pub push_count: Option<u64>,
    /// The pushes' ack mode: none (flags 0), auto (AUTO_ACK) or biz (BIZ_ACK).
    #[arg(long, default_value = "none", requires = "push_rate")]
    pub push_ack: String,
    /// Content bytes per push (at least the 37-byte probe header).
    #[arg(long, default_value_t = 64, requires = "push_rate")]
    pub push_size: usize,
    /// The push client's own timeout: no gateway reply by then is "no reply" (the wire
    /// timeout is 500 ms less, as upstream sends it).
    #[arg(long, value_parser = parse_duration, default_value = "3s", requires = "push_rate")]
    pub push_timeout: Duration,
    /// How long after its send a push the gateway took (OK or no reply) may still arrive
    /// before it counts as lost (at least --push-timeout).
    #[arg(long, value_parser = parse_duration, default_value = "5s", requires = "push_rate")]
    pub push_grace: Duration,
    /// Connections to each gateway.
    #[arg(long, default_value_t = 1, requires = "push_rate")]
    pub push_connections: usize,
    /// The gateway --push-rate sends to, HOST:PORT (a name resolves to all its addresses).
    /// Without it: each user's route in --redis (`mp:ur:`), or the embedded server's gateway.
    #[arg(long, value_name = "HOST:PORT", requires = "push_rate")]
    pub gateway: Option<Endpoint>,
    /// Device-originated traffic: `--device-push-rate`, `--http-proxy-rate`, ...
    #[command(flatten)]
    pub upstream: super::upstream::UpstreamArgs,
}

/// Parses `30s`, `5m`, `2h`, `250ms` or plain seconds.
///
/// # Errors
///
/// A message for clap when the text is none of those.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {s} (use ms, s, m, h)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("not a duration: {s}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Expands `--source` values: addresses, or IPv4 CIDRs (every host address of the block).
///
/// # Errors
///
/// Malformed values, or a CIDR larger than /16.
pub fn expand_sources(values: &[String]) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for v in values {
        if let Some((addr, bits)) = v.split_once('/') {
            let addr: std::net::Ipv4Addr = addr.parse().with_context(|| format!("bad CIDR {v}"))?;
            let bits: u32 = bits.parse().with_context(|| format!("bad CIDR {v}"))?;
            if !(16..=32).contains(&bits) {
                bail!("CIDR {v}: use a prefix of /16 to /32");
            }
            let base = u32::from(addr) & (u32::MAX.checked_shl(32 - bits).unwrap_or(0));
            let size = 1u32 << (32 - bits);
            let hosts = if size > 2 { 1..size - 1 } else { 0..size };
            out.extend(hosts.map(|i| IpAddr::from(std::net::Ipv4Addr::from(base + i))));
        } else {
            out.push(
                v.parse()
                    .with_context(|| format!("bad source address {v}"))?,
            );
        }
    }
    Ok(out)
}

/// Reads `--config` and turns its keys into flags placed before the command line's, so the
/// command line wins (and the file can hold nothing a flag cannot).
///
/// # Errors
///
/// An unreadable file, bad TOML, or a value of an unsupported type.
pub fn merge_config(args: RunArgs, argv: &[String]) -> anyhow::Result<RunArgs> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    let mut merged: Vec<String> = vec!["run".into()];
    for (key, value) in &table {
        if key == "stage" {
            let spec = crate::stages::plan::from_toml(value).map_err(|e| anyhow::anyhow!(e))?;
            merged.extend(["--stages".into(), spec]);
            continue;
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let mut push = |v: &toml::Value| -> anyhow::Result<()> {
            match v {
                toml::Value::String(s) => merged.extend([flag.clone(), s.clone()]),
                toml::Value::Integer(i) => merged.extend([flag.clone(), i.to_string()]),
                toml::Value::Float(f) => merged.extend([flag.clone(), f.to_string()]),
                toml::Value::Boolean(true) => merged.push(flag.clone()),
                toml::Value::Boolean(false) => {}
                other => bail!(
                    "{}: key {key} has an unsupported value {other}",
                    path.display()
                ),
            }
            Ok(())
        };
        match value {
            toml::Value::Array(items) => items.iter().try_for_each(&mut push)?,
            v => push(v)?,
        }
    }
    merged.extend(argv.iter().skip_while(|a| *a != "run").skip(1).cloned());
    Ok(parse_run(
        &std::iter::once("mpush-fleet".to_string())
            .chain(merged)
            .collect::<Vec<_>>(),
    )?)
}

/// Parses `mpush-fleet run ...` (`argv[0]` is the program) with `run`'s own clap parser.
///
/// # Errors
///
/// clap's error for a bad flag or value.
pub fn parse_run(argv: &[String]) -> Result<RunArgs, clap::Error> {
    #[derive(Parser)]
    struct Wrap {
        #[command(subcommand)]
        cmd: Sub,
    }
    #[derive(clap::Subcommand)]
    enum Sub {
        Run(RunArgs),
    }
    let Wrap {
        cmd: Sub::Run(args),
    } = Wrap::try_parse_from(argv)?;
    Ok(args)
}

/// A usage error: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

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

/// The fleet's statistics with the push figures of `run --push-rate` merged in.
fn with_push(mut stats: ShardStats, push: Option<&PushRun>) -> ShardStats {
    if let Some(p) = push {
        stats.merge(p.stats());
    }
    stats
}

/// What `--push-rate` pushes and where; `None` without it.
fn push_config(
    args: &RunArgs,
    cfg: &FleetConfig,
    server: Option<&Embedded>,
) -> anyhow::Result<Option<PusherConfig>> {
    let Some(rate) = args.push_rate else {
        return Ok(None);
    };
    if !(rate.is_finite() && rate > 0.0) {
        return Err(UsageError(format!("--push-rate {rate}: give a rate above 0")).into());
    }
    let gateways = match (&args.gateway, server, &args.redis) {
        (Some(g), _, _) => Gateways::Fixed(
            g.resolve()
                .map_err(|e| UsageError(format!("--gateway {g}: {e}")))?,
        ),
        (None, _, Some(url)) => Gateways::Redis(url.clone()),
        (None, Some(embedded), None) => match embedded.gateway_addr() {
            Some(a) => Gateways::Fixed(vec![a]),
            None => bail!("the embedded server has no gateway port"),
        },
        (None, None, None) => {
            return Err(UsageError(
                "--push-rate with --server needs --gateway HOST:PORT or --redis URL (routes)"
                    .into(),
            )
            .into())
        }
    };
    let flags = match args.push_ack.as_str() {
        "none" => crate::proto::Flags::NONE,
        "auto" => crate::proto::Flags::AUTO_ACK,
        "biz" => crate::proto::Flags::BIZ_ACK,
        other => return Err(UsageError(format!("--push-ack {other}: none, auto or biz")).into()),
    };
    Ok(Some(PusherConfig {
        gateways,
        user_id: cfg.device.user_id.clone(),
        first_device: u64::from(cfg.first_device),
        devices: u64::from(cfg.devices),
        rate,
        count: args.push_count,
        flags,
        size: args.push_size,
        client_type: i32::from(crate::server::ClientType::from_os_name(&args.os_name).0),
        timeout: args.push_timeout,
        connections: args.push_connections.max(1),
    }))
}

/// The fleet's configuration from `run`'s flags (the supervisor's usage check calls it too).
pub(crate) fn fleet_config(
    args: &RunArgs,
    servers: Vec<SocketAddr>,
) -> anyhow::Result<FleetConfig> {
    let rsa = match &args.public_key {
        Some(b64) => RsaEncryptor::from_spki_base64(b64)
            .map_err(|e| UsageError(format!("--public-key: {e}")))?,
        None => RsaEncryptor::mpush_default(),
    };
    let sources = expand_sources(&args.sources).map_err(|e| UsageError(format!("{e:#}")))?;
    let mut cfg = FleetConfig {
        devices: args.devices,
        first_device: args.first_device,
        rate: args.rate.per_sec(),
        servers,
        sources,
        seed: args.seed,
        pin: !args.no_pin,
        ring_entries: args.ring_entries,
        driver: args.driver,
        admission: crate::shard::core::Admission {
            max_pending: args.max_pending,
            retry_ratio: args.retry_budget,
            retry_floor_per_sec: args.retry_floor,
        },
        upstream: args.upstream.load().map_err(UsageError)?,
        ..FleetConfig::default()
    };
    let non_negative = |x: f64| x.is_finite() && x >= 0.0;
    if !non_negative(args.retry_budget) || !non_negative(args.retry_floor) {
        return Err(UsageError(format!(
            "--retry-budget ({}) and --retry-floor ({}) must be numbers >= 0",
            args.retry_budget, args.retry_floor
        ))
        .into());
    }
    if let Some(n) = args.shards {
        if n == 0 {
            return Err(UsageError("--shards must be at least 1".into()).into());
        }
        cfg.shards = n;
    }
    cfg.shards = cfg.shards.min(args.devices.max(1) as usize);
    cfg.device = DeviceConfig {
        device_id: Template::new(&args.device_id),
        user_id: Template::new(&args.user_id),
        os_name: args.os_name.clone(),
        os_version: args.os_version.clone(),
        client_version: args.client_version.clone(),
        tags: args.tags.clone(),
        min_heartbeat: args.heartbeat,
        max_heartbeat: args.heartbeat,
        request_timeout_ms: args.request_timeout,
        connect_timeout_ms: args.connect_timeout,
        reconnect_on_kick: args.reconnect_on_kick,
        rsa,
        ..DeviceConfig::default()
    };
    Ok(cfg)
}

/// Fails early, naming the limit, when this process cannot open a descriptor per device: a
/// clear error at start instead of a cascade of EMFILE failures. Returns the limit.
fn check_descriptors(devices: u32) -> anyhow::Result<u64> {
    let limit = crate::server::raise_nofile_limit().unwrap_or(1024);
    let needed = u64::from(devices) + SPARE_DESCRIPTORS;
    if needed > limit {
        return Err(UsageError(format!(
            "{devices} devices need about {needed} open files, but this process may open \
             {limit} (its RLIMIT_NOFILE hard limit). Raise the limit (tuning/apply.sh says \
             how), or split the fleet across processes with --first-device: at most {} \
             devices per process here, each against `mpush-fleet serve` processes of their own \
             (a serve process holds as many sessions as its own limit allows)",
            limit.saturating_sub(SPARE_DESCRIPTORS),
        ))
        .into());
    }
    Ok(limit)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser)]
    struct TestCli {
        #[command(subcommand)]
        cmd: TestSub,
    }

    #[derive(clap::Subcommand)]
    enum TestSub {
        Run(RunArgs),
    }

    fn parsed(argv: &[&str]) -> RunArgs {
        let argv: Vec<String> = argv.iter().map(ToString::to_string).collect();
        let TestCli {
            cmd: TestSub::Run(args),
        } = TestCli::try_parse_from(&argv).unwrap();
        merge_config(args, &argv).unwrap()
    }

    #[test]
    fn the_toml_file_mirrors_the_flags_and_the_command_line_wins() {
        let path = std::env::temp_dir().join(format!("mpush-fleet-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "server = [\"127.0.0.1:3000\", \"127.0.0.1:3001\"]\ndevices = 50\nrate = 7.5\n\
             duration = \"2m\"\ndevice-id = \"soak-{i}\"\nreconnect-on-kick = true\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let args = parsed(&["mpush-fleet", "run", "--config", file, "--devices", "9"]);
        assert_eq!(args.servers.len(), 2);
        assert_eq!(args.devices, 9, "the command line wins");
        assert_eq!(args.rate, super::super::phases::RateArg::PerSec(7.5));
        assert_eq!(args.duration, Some(Duration::from_secs(120)));
        assert_eq!(args.device_id, "soak-{i}");
        assert!(args.reconnect_on_kick);
        std::fs::write(&path, "no-such-flag = 1\n").unwrap();
        let argv: Vec<String> = ["mpush-fleet", "run", "--config", file]
            .iter()
            .map(ToString::to_string)
            .collect();
        let TestCli {
            cmd: TestSub::Run(args),
        } = TestCli::try_parse_from(&argv).unwrap();
        assert!(
            merge_config(args, &argv).is_err(),
            "unknown keys are usage errors"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn sources_expand_cidrs() {
        let v = expand_sources(&["127.0.0.2".into(), "127.0.1.0/30".into()]).unwrap();
        let s: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(s, ["127.0.0.2", "127.0.1.1", "127.0.1.2"]);
        assert!(expand_sources(&["10.0.0.0/8".into()]).is_err());
        assert!(expand_sources(&["nope".into()]).is_err());
    }
}
