//! `mpush-fleet run`'s flags (mirrored by a TOML `--config` file), their parsers, and the
//! usage error (exit 2).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser};

use super::fail_on::Threshold;
use crate::discovery::{DiscoverArgs, Endpoint};
use crate::sink::SinkSpec;

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
    /// First reconnect delay ceiling, ms: a device whose connection ends waits a time uniform
    /// in 0..ceiling before it reconnects, the ceiling doubling with each failed attempt up
    /// to --backoff-cap (full jitter: a server's mass close spreads out instead of coming
    /// back at once). 0 = reconnect at once (the retry budget still bounds the rate).
    #[arg(long, default_value_t = 500)]
    pub backoff: u32,
    /// Highest reconnect delay ceiling, ms.
    #[arg(long, default_value_t = 30_000)]
    pub backoff_cap: u32,
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
    fn reconnect_backoff_flags_reach_the_devices() {
        let args = parsed(&[
            "mpush-fleet",
            "run",
            "--backoff",
            "50",
            "--backoff-cap",
            "200",
        ]);
        let cfg = super::super::setup::fleet_config(&args, Vec::new()).unwrap();
        assert_eq!(
            (cfg.device.backoff_base_ms, cfg.device.backoff_cap_ms),
            (50, 200)
        );
        let args = parsed(&["mpush-fleet", "run"]);
        let cfg = super::super::setup::fleet_config(&args, Vec::new()).unwrap();
        let default = crate::device::DeviceConfig::default();
        assert_eq!(
            (cfg.device.backoff_base_ms, cfg.device.backoff_cap_ms),
            (default.backoff_base_ms, default.backoff_cap_ms)
        );
        for bad in [
            ["--backoff", "-5"],
            ["--backoff", "1s"],
            ["--backoff-cap", "x"],
        ] {
            let argv = ["mpush-fleet", "run", bad[0], bad[1]];
            assert!(TestCli::try_parse_from(argv).is_err(), "{bad:?} is refused");
        }
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
