//! `mpush-fleet serve`: the reference server as a command that runs until Ctrl-C.

use anyhow::Context as _;

use super::capacity::{CapacityChange, CapacityLimits, DEFAULT_BURST};
use super::{
    status, Server, ServerConfig, SessionConfig, DEFAULT_HEARTBEAT_MS, DEFAULT_SESSION_EXPIRE_SECS,
};
use crate::crypto::RsaDecryptor;
use crate::discovery::BindAddr;
use crate::proto::{BodyLimits, DEFAULT_COMPRESS_THRESHOLD, DEFAULT_MAX_BODY};

/// Flags of `mpush-fleet serve`. Defaults are the real server's (`conf/reference.conf`).
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// MPUSH listener address, `HOST:PORT` (a host name is resolved at start, to its first
    /// IPv4 address if it has one; port 0: any free port).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:3000")]
    pub listen: BindAddr,
    /// Admin HTTP+JSON API address (loopback recommended); none if absent. Any other address
    /// needs `--admin-token`. A name is resolved at start, as --listen's.
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Option<BindAddr>,
    /// Bearer token every admin request must carry (`Authorization: Bearer TOKEN`; 401
    /// otherwise); required when `--admin` is not a loopback address.
    #[arg(long, env = "MPUSH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// RSA private key, base64 PKCS#8. Default: MPUSH's default key, so clients configured
    /// with MPUSH's default public key connect.
    #[arg(
        long,
        env = "MPUSH_PRIVATE_KEY",
        hide_env_values = true,
        conflicts_with = "generate_key"
    )]
    pub private_key: Option<String>,
    /// Generate a fresh 1024-bit key pair at start and print its public key.
    #[arg(long)]
    pub generate_key: bool,
    /// `min-heartbeat`, ms.
    #[arg(long, default_value_t = DEFAULT_HEARTBEAT_MS)]
    pub min_heartbeat: i32,
    /// `max-heartbeat`, ms.
    #[arg(long, default_value_t = DEFAULT_HEARTBEAT_MS)]
    pub max_heartbeat: i32,
    /// `session-expired-time`: how long a reusable session lives, seconds.
    #[arg(long, default_value_t = DEFAULT_SESSION_EXPIRE_SECS)]
    pub session_expire: u32,
    /// `max-packet-size`: the largest body accepted, bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY)]
    pub max_packet_size: usize,
    /// `compress-threshold`: bodies longer than this are deflated, bytes.
    #[arg(long, default_value_t = DEFAULT_COMPRESS_THRESHOLD)]
    pub compress_threshold: usize,
    /// Reproduce the real server's sessionId quirk (MD5 of "null" + ms: ids collide within
    /// a millisecond).
    #[arg(long)]
    pub sessionid_quirk: bool,
    /// Forward HTTP_PROXY requests for HOST to these backends (`mp.http.dns-mapping`; one
    /// picked at random per request); repeatable; turns the proxy on. Without it (and without
    /// `--http-proxy-enabled`) HTTP_PROXY gets ERROR 101 and a close, the real default.
    #[arg(long, value_name = "HOST=IP:PORT[,IP:PORT...]")]
    pub http_proxy: Vec<String>,
    /// Forward HTTP_PROXY requests to the URL's own host (unmapped hosts are always so).
    #[arg(long)]
    pub http_proxy_enabled: bool,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Capacity model: handshakes (RSA decryptions) per second; more wait, in order, and are
    /// answered late, never refused. 0 = unlimited. Live: `POST /capacity`.
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    pub max_handshakes_per_sec: f64,
    /// Capacity model: fast connects (session lookups) per second, as above.
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    pub max_fast_connects_per_sec: f64,
    /// Capacity model: requests of each kind that may run at once (1: a single queue, as a
    /// CPU-bound server answers simultaneous requests one after another).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BURST)]
    pub capacity_burst: u32,
    /// Seconds between status lines (connections, handshakes/s, fast connects/s, pushes,
    /// acks, errors) on stdout.
    #[arg(long, default_value_t = 5.0)]
    pub status_every: f64,
    /// No status lines and no summary: only the start lines.
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as JSON even on a terminal (where a table is shown otherwise).
    #[arg(long)]
    pub json: bool,
    /// Gateway port (PROTOCOL.md 8; the real server's is 3001): GATEWAY_PUSH from app servers
    /// and `mpush-fleet push`. None if absent. A name is resolved at start, as --listen's.
    #[arg(long, value_name = "HOST:PORT")]
    pub gateway: Option<BindAddr>,
    /// Fault: reproduce the real server's gateway ack race (PROTOCOL.md 8.6) on every ack
    /// push: the device's ACK finds no wait and the app server gets no reply.
    #[arg(long, requires = "gateway")]
    pub gateway_ack_race: bool,
    /// Keep reusable sessions in Redis (`mp:rs:<sessionId>`, as the real server does) instead
    /// of memory: `redis://HOST:PORT/DB`, `redis-cluster://...` or `redis-sentinel://...`.
    /// With `--gateway`, users' routes go there too (`mp:ur:<userId>`, written at bind,
    /// marked offline at unbind and close), and a push for a user held by another server
    /// gets ROUTER_CHANGE.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Registering in ZooKeeper as the real server does (`--zookeeper`, ...).
    #[command(flatten)]
    pub register: crate::discovery::RegisterArgs,
}

impl ServeArgs {
    /// The server configuration these flags describe. With `--generate-key`, the new public
    /// key is printed to stdout.
    ///
    /// # Errors
    ///
    /// A private key that does not parse, key generation failure, or inconsistent limits.
    pub fn to_config(&self) -> anyhow::Result<ServerConfig> {
        let rsa = if self.generate_key {
            let key = RsaDecryptor::generate(&mut rand::rngs::OsRng, 1024)
                .context("generating an RSA key")?;
            println!("public key: {}", key.public_key_spki_base64());
            key
        } else if let Some(b64) = &self.private_key {
            RsaDecryptor::from_pkcs8_base64(b64).context("reading --private-key")?
        } else {
            RsaDecryptor::mpush_default()
        };
        anyhow::ensure!(self.min_heartbeat > 0, "--min-heartbeat must be positive");
        anyhow::ensure!(
            self.max_heartbeat >= self.min_heartbeat,
            "--max-heartbeat must be at least --min-heartbeat"
        );
        anyhow::ensure!(
            self.max_packet_size > 0,
            "--max-packet-size must be positive"
        );
        CapacityChange {
            handshakes_per_sec: Some(self.max_handshakes_per_sec),
            fast_connects_per_sec: Some(self.max_fast_connects_per_sec),
        }
        .validate()
        .map_err(|e| anyhow::anyhow!("--max-{}", e.replace('_', "-")))?;
        anyhow::ensure!(self.capacity_burst > 0, "--capacity-burst must be positive");
        let limits = BodyLimits {
            max_body: self.max_packet_size,
            compress_threshold: self.compress_threshold,
            ..BodyLimits::default()
        };
        let usage = crate::control::cli::UsageError;
        let listen = self.listen.resolve("--listen").map_err(usage)?;
        let admin = self
            .admin
            .as_ref()
            .map(|a| a.resolve("--admin"))
            .transpose()
            .map_err(usage)?;
        let gateway = self
            .gateway
            .as_ref()
            .map(|a| a.resolve("--gateway"))
            .transpose()
            .map_err(usage)?;
        if let Some(addr) = admin {
            crate::http::auth::check_exposure(addr, self.admin_token.as_deref(), "--admin")
                .map_err(|e| usage(e.to_string()))?;
        }
        Ok(ServerConfig {
            listen,
            admin,
            admin_token: self.admin_token.clone().map(crate::http::auth::Token),
            session: SessionConfig {
                rsa,
                min_heartbeat_ms: self.min_heartbeat,
                max_heartbeat_ms: self.max_heartbeat,
                session_expire_secs: self.session_expire,
                limits,
                sessionid_quirk: self.sessionid_quirk,
                http_proxy: self.http_proxy_config()?,
                ..SessionConfig::default()
            },
            workers: self.workers,
            capacity: CapacityLimits {
                handshakes_per_sec: self.max_handshakes_per_sec,
                fast_connects_per_sec: self.max_fast_connects_per_sec,
                burst: self.capacity_burst,
            },
            gateway,
            gateway_ack_race: self.gateway_ack_race,
            routes_redis: self.redis.clone(),
        })
    }
}

impl ServeArgs {
    fn http_proxy_config(
        &self,
    ) -> anyhow::Result<Option<std::sync::Arc<super::http_proxy::HttpProxyConfig>>> {
        if self.http_proxy.is_empty() && !self.http_proxy_enabled {
            return Ok(None);
        }
        let mut cfg = super::http_proxy::HttpProxyConfig::default();
        for entry in &self.http_proxy {
            cfg.add_mapping(entry).map_err(anyhow::Error::msg)?;
        }
        Ok(Some(std::sync::Arc::new(cfg)))
    }
}

/// Runs `serve` until Ctrl-C (SIGINT) or SIGTERM, then shuts the server down.
///
/// # Errors
///
/// Bad flags, an address that cannot be bound, or a signal handler that cannot be installed.
pub fn serve_main(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let server = match &args.redis {
        Some(url) => {
            let sessions = crate::tickets::RedisSessions::new(url).context("--redis")?;
            Server::start_with_store(config, std::sync::Arc::new(sessions))
        }
        None => Server::start(config),
    }
    .context("starting the server")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Installed before the start line is printed, so a Ctrl-C sent after it is never lost.
    let stop = {
        let _in_rt = rt.enter();
        stop_signal()?
    };
    println!("mpush server listening on {}", server.local_addr());
    if let Some(admin) = server.admin_addr() {
        println!("admin API on http://{admin}");
    }
    if let Some(gateway) = server.gateway_addr() {
        println!("gateway on {gateway}");
    }
    let cap = server.capacity();
    if cap.handshakes_per_sec > 0.0 || cap.fast_connects_per_sec > 0.0 {
        // Only when limited: an unlimited server's start lines stay as they were.
        println!(
            "capacity: {} handshakes/s, {} fast connects/s, burst {} (0 = unlimited)",
            cap.handshakes_per_sec, cap.fast_connects_per_sec, cap.burst
        );
    }
    let plan = args
        .register
        .plan(server.local_addr())
        .map_err(|e| anyhow::anyhow!(e))?;
    // The connection server in /cluster/cs; with a gateway port, that too in /cluster/gs
    // (same host and attributes, the gateway's port), as the real server registers both.
    let mut registrations = Vec::new();
    if let Some((zk, node)) = plan {
        use crate::discovery::zk::Cluster;
        let mut nodes = vec![(Cluster::Connection, node.clone())];
        if let Some(g) = server.gateway_addr() {
            nodes.push((
                Cluster::Gateway,
                crate::discovery::ServerNode {
                    port: g.port(),
                    ..node
                },
            ));
        }
        for (cluster, node) in nodes {
            let namespace = zk.namespace.clone();
            let r = rt
                .block_on(crate::discovery::Registration::start(
                    zk.clone(),
                    node,
                    cluster,
                ))
                .context("registering in ZooKeeper")?;
            println!("registered in ZooKeeper as /{namespace}{}", r.path());
            registrations.push(r);
        }
    }
    let started = std::time::Instant::now();
    let every = std::time::Duration::from_secs_f64(args.status_every.max(0.1));
    rt.block_on(status::lines_until(
        || server.stats(),
        every,
        args.quiet,
        stop,
    ));
    println!("shutting down");
    // Deregistered first, so fleets stop sending connects before the listener closes.
    for r in registrations {
        rt.block_on(r.stop());
        println!("deregistered from ZooKeeper");
    }
    let stats = server.stats();
    server.shutdown();
    if !args.quiet {
        status::print_summary(&stats, started.elapsed(), args.json);
    }
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM; the handlers are installed by this call (inside
/// a tokio runtime).
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(flags: &[&str]) -> anyhow::Result<ServerConfig> {
        let args = std::iter::once("serve").chain(flags.iter().copied());
        Cli::try_parse_from(args)?.serve.to_config()
    }

    #[test]
    fn capacity_flags() {
        let c = config(&[]).expect("defaults");
        assert_eq!(c.capacity, CapacityLimits::default(), "unlimited, burst 1");
        let c = config(&[
            "--max-handshakes-per-sec",
            "5",
            "--max-fast-connects-per-sec",
            "0.5",
            "--capacity-burst",
            "3",
        ])
        .expect("limits");
        let want = CapacityLimits {
            handshakes_per_sec: 5.0,
            fast_connects_per_sec: 0.5,
            burst: 3,
        };
        assert_eq!(c.capacity, want);
        let e = config(&["--max-fast-connects-per-sec=-1"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("--max-fast-connects-per-sec must be"),
            "{e}"
        );
        assert!(config(&["--capacity-burst", "0"]).is_err());
    }
}
