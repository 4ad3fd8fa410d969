//! The embedded reference server of `mpush-fleet run` without `--server`.
//!
//! A loopback session costs a descriptor on each side. While both sides fit in this process's
//! descriptor limit, the server runs in-process (cheapest, and its sessions outlive a fleet
//! run, so a second run fast-connects). Past that, it runs as a child `mpush-fleet serve`
//! process with a descriptor allowance of its own, so `run --devices 10000` works on a machine
//! whose hard limit is 20,000.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::server::{Server, ServerConfig, ServerHandle};
use crate::tickets::RedisSessions;

/// Descriptors kept free for everything that is not a session (runtime, ring, logs, Redis).
pub const SPARE_DESCRIPTORS: u64 = 128;

/// A running embedded server.
pub enum Embedded {
    /// In this process.
    InProcess(ServerHandle),
    /// A child `mpush-fleet serve`.
    Child {
        /// The child process.
        child: Child,
        /// Where it listens.
        addr: SocketAddr,
        /// Its gateway port, if it has one.
        gateway: Option<SocketAddr>,
    },
}

impl Embedded {
    /// Starts a server for `devices` sessions with the given heartbeat, in-process if both
    /// sides fit in `limit` descriptors, as a child process otherwise.
    ///
    /// # Errors
    ///
    /// If the server cannot start or the child does not come up within 30 s.
    /// With `redis`, its reusable sessions live there too (`mp:rs:`), so fleet processes that
    /// share tickets in Redis resume by fast connect across runs, and so do its users' routes
    /// (`mp:ur:`). With `gateway`, it opens a gateway port on loopback (`run --push-rate`).
    pub fn start(
        devices: u32,
        heartbeat_ms: i32,
        limit: u64,
        redis: Option<&str>,
        gateway: bool,
    ) -> anyhow::Result<Embedded> {
        if 2 * u64::from(devices) + SPARE_DESCRIPTORS <= limit {
            let mut cfg = ServerConfig::new();
            cfg.session.min_heartbeat_ms = heartbeat_ms;
            cfg.session.max_heartbeat_ms = heartbeat_ms;
            cfg.gateway = gateway.then(|| SocketAddr::from(([127, 0, 0, 1], 0)));
            cfg.routes_redis = redis.map(str::to_owned);
            let handle = match redis {
                Some(url) => {
                    let sessions = RedisSessions::new(url).context("--redis")?;
                    Server::start_with_store(cfg, Arc::new(sessions))
                }
                None => Server::start(cfg),
            }
            .context("starting the embedded server")?;
            tracing::info!(addr = %handle.local_addr(), "embedded reference server in-process");
            return Ok(Embedded::InProcess(handle));
        }
        // A free loopback port: bind, read it, release it for the child.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let gateway_addr = if gateway {
            Some(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
        } else {
            None
        };
        let exe = std::env::current_exe().context("locating mpush-fleet for the child server")?;
        let hb = heartbeat_ms.to_string();
        let mut cmd = Command::new(exe);
        cmd.args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--min-heartbeat",
            &hb,
        ])
        .args(["--max-heartbeat", &hb])
        .args(
            gateway_addr
                .iter()
                .flat_map(|g| ["--gateway".to_string(), g.to_string()]),
        )
        .args(redis.iter().flat_map(|r| ["--redis", *r]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its own process group: a terminal's Ctrl-C reaches the fleet only, which stops
        // gracefully first and ends the server last (`stop`). Were the server in the fleet's
        // group, it would die first and the graceful stop would turn into a reconnect storm.
        .process_group(0);
        // SAFETY: runs in the forked child before exec and only calls prctl(2), which is
        // async-signal-safe and touches no memory of the parent. If the fleet dies without
        // stopping it (a crash, SIGKILL), the server gets SIGTERM instead of living on.
        unsafe {
            cmd.pre_exec(|| {
                let term = rustix::process::Signal::TERM;
                rustix::process::set_parent_process_death_signal(Some(term))
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .context("starting the embedded server as a child process")?;
        let mut embedded = Embedded::Child {
            child,
            addr,
            gateway: gateway_addr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up =
                |a: &SocketAddr| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok();
            if up(&addr) && gateway_addr.as_ref().map_or(true, up) {
                tracing::info!(%addr, "embedded reference server as a child process");
                return Ok(embedded);
            }
            if let Embedded::Child { child, .. } = &mut embedded {
                if let Some(status) = child.try_wait()? {
                    bail!("the embedded server exited at start ({status})");
                }
            }
            if Instant::now() >= deadline {
                embedded.stop();
                bail!("the embedded server did not listen on {addr} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Embedded::InProcess(h) => h.local_addr(),
            Embedded::Child { addr, .. } => *addr,
        }
    }

    /// Its gateway port, if it has one.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        match self {
            Embedded::InProcess(h) => h.gateway_addr(),
            Embedded::Child { gateway, .. } => *gateway,
        }
    }

    /// Stops it.
    pub fn stop(self) {
        match self {
            Embedded::InProcess(h) => h.shutdown(),
            Embedded::Child { mut child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
