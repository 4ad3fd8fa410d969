//! A real ZooKeeper for the tests: [`ZkProcess`] starts Debian's `zookeeper` package (its
//! jars in /usr/share/java) as a standalone server on a free loopback port with a temporary
//! dataDir, waits until `srvr` says it serves (a deadline, no fixed sleeps), and kills
//! it and removes the dataDir on drop. Included with
//! `#[path = "common/zookeeper.rs"] mod zk_harness;`.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the JVM may take to serve.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// Where Debian puts the jars.
const JARS: &str = "/usr/share/java";
/// The jars a standalone server needs (Debian's unversioned names).
const CLASSPATH: &[&str] = &[
    "zookeeper.jar",
    "zookeeper-jute.jar",
    "slf4j-api.jar",
    "slf4j-nop.jar",
    "netty-handler.jar",
    "netty-common.jar",
    "netty-buffer.jar",
    "netty-transport.jar",
    "netty-codec.jar",
    "netty-resolver.jar",
    "netty-transport-native-epoll.jar",
    "netty-transport-native-unix-common.jar",
    "metrics-core.jar",
    "commons-cli.jar",
    "snappy-java.jar",
];

/// A running ZooKeeper child on 127.0.0.1.
pub struct ZkProcess {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Why ZooKeeper cannot run here, if it cannot.
fn missing() -> Option<String> {
    if Command::new("java")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        return Some("java is not installed".into());
    }
    let absent: Vec<&str> = CLASSPATH
        .iter()
        .copied()
        .filter(|j| !Path::new(JARS).join(j).exists())
        .collect();
    (!absent.is_empty()).then(|| {
        format!(
            "ZooKeeper's jars are missing from {JARS} ({}): apt-get install -y zookeeper \
             (tests/run.sh does it)",
            absent.join(", ")
        )
    })
}

impl ZkProcess {
    /// Starts ZooKeeper on a free loopback port, or returns `None` after a loud skip line
    /// when it is not installed and `MPUSH_ALLOW_NO_ZOOKEEPER=1`.
    ///
    /// # Panics
    /// When it is not installed (tests/run.sh installs it), unless
    /// `MPUSH_ALLOW_NO_ZOOKEEPER=1`; or when it does not come up.
    pub fn start(test: &str) -> Option<ZkProcess> {
        if let Some(why) = missing() {
            if std::env::var("MPUSH_ALLOW_NO_ZOOKEEPER").is_ok_and(|v| v == "1") {
                eprintln!("\n!!!!!!!! SKIPPED {test}: {why} !!!!!!!!\n");
                return None;
            }
            panic!("{why}; needed by {test}. Set MPUSH_ALLOW_NO_ZOOKEEPER=1 to skip instead.");
        }
        // Another process may take the port between our probe and the JVM's bind.
        for attempt in 0..3 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("zk-{}-{port}-{attempt}", std::process::id()));
            let mut zk = ZkProcess {
                port,
                dir,
                child: None,
            };
            if zk.spawn_and_wait() {
                return Some(zk);
            }
        }
        panic!("ZooKeeper did not start on any of 3 free ports");
    }

    /// `127.0.0.1:PORT`.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn_and_wait(&mut self) -> bool {
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).expect("ZooKeeper dataDir");
        let cfg = self.dir.join("zoo.cfg");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=500\ndataDir={}\nclientPort={}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr\nmaxSessionTimeout=60000\n",
                data.display(),
                self.port
            ),
        )
        .expect("write zoo.cfg");
        let classpath: Vec<String> = CLASSPATH.iter().map(|j| format!("{JARS}/{j}")).collect();
        let log = std::fs::File::create(self.dir.join("zk.log")).expect("zk.log");
        let child = Command::new("java")
            .args(["-Xmx128m", "-XX:+UseSerialGC", "-cp", &classpath.join(":")])
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("zk.log"))
            .stderr(log)
            .spawn()
            .expect("spawn java");
        self.child = Some(child);
        let deadline = Instant::now() + START_PATIENCE;
        while Instant::now() < deadline {
            if self.serving() {
                return true;
            }
            if let Some(c) = self.child.as_mut() {
                if c.try_wait().ok().flatten().is_some() {
                    return false; // exited: port taken, most likely
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "ZooKeeper did not serve within {START_PATIENCE:?}; its log: {}",
            std::fs::read_to_string(self.dir.join("zk.log")).unwrap_or_default()
        );
    }

    fn serving(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut answer = String::new();
        // `srvr` names the mode only once the server serves requests (`ruok` answers
        // `imok` before that).
        s.write_all(b"srvr").is_ok()
            && s.read_to_string(&mut answer).is_ok()
            && answer.contains("Mode: standalone")
    }
}

impl Drop for ZkProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
