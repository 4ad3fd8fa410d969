//! A real `redis-server` for the tests: [`RedisProcess`] starts one on a free loopback port
//! with persistence off, waits until it answers PING (a deadline, no fixed sleeps), and kills
//! it on drop. [`Resp`] is a tiny blocking RESP client for looking at what the code under test
//! stored. Included with `#[path = "common/redis.rs"] mod redis_harness;`.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long redis-server may take to answer its first PING.
const START_PATIENCE: Duration = Duration::from_secs(20);

/// A running redis-server child on 127.0.0.1.
pub struct RedisProcess {
    port: u16,
    child: Option<Child>,
}

impl RedisProcess {
    /// Starts redis-server on a free loopback port, or returns `None` after a loud skip line
    /// when it is not installed and `MPUSH_ALLOW_NO_REDIS=1`.
    ///
    /// # Panics
    /// When redis-server is not installed (CI installs it: `tests/run.sh`), unless
    /// `MPUSH_ALLOW_NO_REDIS=1`; or when it does not come up.
    pub fn start(test: &str) -> Option<RedisProcess> {
        if !installed() {
            let msg = format!(
                "redis-server is not installed (apt-get install -y redis-server redis-tools; \
                 tests/run.sh does it); needed by {test}"
            );
            if std::env::var("MPUSH_ALLOW_NO_REDIS").is_ok_and(|v| v == "1") {
                eprintln!("\n!!!!!!!! SKIPPED {test}: {msg} !!!!!!!!\n");
                return None;
            }
            panic!("{msg}. Set MPUSH_ALLOW_NO_REDIS=1 to skip the Redis tests instead.");
        }
        // Another process may take the port between our probe and redis-server's bind:
        // try a few ports.
        for _ in 0..5 {
            let port = free_port();
            let mut redis = RedisProcess { port, child: None };
            if redis.spawn_and_wait() {
                return Some(redis);
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// A free loopback port with nothing listening (for "Redis down at start").
    pub fn unused_port() -> u16 {
        free_port()
    }

    /// Starts redis-server on `port` (Redis was down and comes up).
    ///
    /// # Panics
    /// If it does not come up.
    pub fn start_on(port: u16) -> RedisProcess {
        let mut redis = RedisProcess { port, child: None };
        assert!(
            redis.spawn_and_wait(),
            "redis-server did not start on port {port}"
        );
        redis
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A fresh RESP connection.
    pub fn resp(&self) -> Resp {
        Resp::connect(self.port).expect("connect to redis-server")
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty (persistence is off).
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn_and_wait(),
            "redis-server did not restart on {}",
            self.port
        );
    }

    fn spawn_and_wait(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "yes", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            if let Ok(mut r) = Resp::connect(self.port) {
                if r.cmd(&["PING"]).ok() == Some(Reply::Simple("PONG".into())) {
                    return true;
                }
            }
            // Exited already (port taken): give up on this port.
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server never answered PING"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    /// The bulk string as text, if it is one.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Simple(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// The integer, if it is one.
    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => None,
        }
    }
}

/// A blocking RESP2 client, enough to look at and tamper with what the code stored.
pub struct Resp {
    stream: BufReader<TcpStream>,
}

impl Resp {
    /// Connects to 127.0.0.1:`port`.
    pub fn connect(port: u16) -> std::io::Result<Resp> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Resp {
            stream: BufReader::new(stream),
        })
    }

    /// Sends one command of text arguments.
    pub fn cmd(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd_bytes(&args)
    }

    /// Sends one command of byte arguments.
    pub fn cmd_bytes(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&out)?;
        self.read()
    }

    /// Sends a command and panics on an error reply.
    pub fn ok(&mut self, args: &[&str]) -> Reply {
        let r = self.cmd(args).expect("redis command");
        assert!(!matches!(r, Reply::Error(_)), "{args:?}: {r:?}");
        r
    }

    /// The keys matching `pattern` (KEYS: fine for a test's few thousand keys).
    pub fn keys(&mut self, pattern: &str) -> Vec<String> {
        match self.ok(&["KEYS", pattern]) {
            Reply::Array(items) => items.iter().filter_map(Reply::text).collect(),
            other => panic!("KEYS: {other:?}"),
        }
    }

    /// GET as text.
    pub fn get(&mut self, key: &str) -> Option<String> {
        self.ok(&["GET", key]).text()
    }

    /// PTTL in ms (-2: no key, -1: no TTL).
    pub fn pttl(&mut self, key: &str) -> i64 {
        self.ok(&["PTTL", key]).int().expect("PTTL is an integer")
    }

    fn read(&mut self) -> std::io::Result<Reply> {
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let line = line.trim_end_matches("\r\n");
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad RESP");
        let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
        Ok(match kind {
            "+" => Reply::Simple(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut buf = vec![0; n as usize + 2];
                    self.stream.read_exact(&mut buf)?;
                    buf.truncate(n as usize);
                    Reply::Bulk(Some(buf))
                }
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                let mut items = Vec::new();
                for _ in 0..n.max(0) {
                    items.push(self.read()?);
                }
                Reply::Array(items)
            }
            _ => return Err(bad()),
        })
    }
}
