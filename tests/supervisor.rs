//! `run --processes`: one fleet in several worker processes under a supervisor. Its report
//! is the exact merge of the workers' (counters and histogram counts are their sums); a worker
//! that dies (SIGKILL, found among the supervisor's children) or never starts makes the
//! supervisor exit 3 with a message naming it; a bad flag is one usage error (exit 2) before
//! any worker starts. Real binary, real `serve` processes, loopback;
//! every wait is a condition with a deadline.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_mpush-fleet");
/// A deadline for conditions, never a wait in itself.
const PATIENCE: Duration = Duration::from_secs(120);

/// A `serve` process on a free loopback port; killed when dropped.
struct Serve(Child, String);

impl Serve {
    fn start() -> Serve {
        let mut child = Command::new(EXE)
            .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve starts");
        let lines = lines_of(child.stdout.take().unwrap());
        let line = wait_line(&lines, "the listening line", |l| {
            l.contains("listening on ")
        });
        let addr = line.rsplit(' ').next().unwrap().trim().to_string();
        Serve(child, addr)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if want(&l) => return l,
            Ok(l) => seen.push(l),
            Err(e) => panic!("no {what} ({e}); seen:\n{}", seen.join("\n")),
        }
    }
}

/// Waits for `child` to exit, with a deadline.
fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "the supervisor did not exit");
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// `GET /metrics` over a plain socket.
fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

fn read(p: &Path) -> Value {
    let text = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&text).unwrap()
}

#[test]
fn three_workers_merge_into_one_report_of_their_sums() {
    if !common::io_uring_or_skip("three_workers_merge_into_one_report_of_their_sums") {
        return;
    }
    let servers: Vec<Serve> = (0..3).map(|_| Serve::start()).collect();
    let dir = std::env::temp_dir().join(format!("mpush-fleet-sup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("r.json");
    let mut cmd = Command::new(EXE);
    cmd.args(["run", "--processes", "3", "--devices", "90", "--rate", "0"])
        .args([
            "--stop-when-online",
            "--duration",
            "120s",
            "--status-every",
            "0.5",
        ])
        .arg("--report")
        .arg(&report);
    for s in &servers {
        cmd.args(["--server", &s.1]);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("all 90 devices came online in "),
        "{stdout}"
    );
    let merged = read(&report);
    let workers: Vec<Value> = (0..3)
        .map(|k| read(&dir.join(format!("r.worker-{k}.json"))))
        .collect();
    let ranges: Vec<(u64, u64)> = workers
        .iter()
        .map(|w| {
            (
                w["first_device"].as_u64().unwrap(),
                w["devices"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ranges, [(0, 30), (30, 30), (60, 30)]);
    assert_eq!(
        (merged["devices"].as_u64(), merged["online"].as_u64()),
        (Some(90), Some(90))
    );
    let sum = |f: &dyn Fn(&Value) -> &Value| -> u64 {
        workers.iter().map(|w| f(w).as_u64().unwrap_or(0)).sum()
    };
    for (name, value) in merged["counters"].as_object().unwrap() {
        if let Some(n) = value.as_u64() {
            assert_eq!(n, sum(&|w| &w["counters"][name]), "counter {name}");
        }
    }
    for (name, s) in merged["latency"].as_object().unwrap() {
        let n = s["count"].as_u64().unwrap();
        assert_eq!(n, sum(&|w| &w["latency"][name]["count"]), "{name} samples");
    }
    assert_eq!(merged["handshakes"], 90);
    assert_eq!(merged["latency"]["handshake"]["count"], 90);
    assert_eq!(merged["counters"]["connects"], 90);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_worker_fails_the_supervisor_by_name() {
    if !common::io_uring_or_skip("a_killed_worker_fails_the_supervisor_by_name") {
        return;
    }
    let mut sup = Command::new(EXE)
        .args(["run", "--processes", "2", "--devices", "40", "--rate", "0"])
        .args([
            "--duration",
            "120s",
            "--status-every",
            "0.2",
            "--shards",
            "1",
        ])
        .args(["--metrics", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines_of(sup.stdout.take().unwrap());
    let stderr = lines_of(sup.stderr.take().unwrap());
    wait_line(&stdout, "40 online", |l| l.contains(" online 40 "));
    // One endpoint for all workers: the merged figures of the status line.
    let line = wait_line(&stderr, "the metrics address", |l| {
        l.contains("metrics at /metrics")
    });
    let addr = line.rsplit("addr=").next().unwrap().trim().to_string();
    let body = scrape(&addr);
    assert!(body.lines().any(|l| l == "mpush_fleet_online 40"), "{body}");
    let pid = sup.id();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let workers: Vec<i32> = children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(workers.len(), 2, "{children}");
    // SAFETY: kill(2) on a child of the supervisor this test started, still running.
    assert_eq!(unsafe { libc::kill(workers[1], libc::SIGKILL) }, 0);
    let status = wait_exit(&mut sup);
    assert_eq!(status.code(), Some(3), "{status:?}");
    let err: Vec<String> = stderr.iter().collect();
    let named = format!(
        "(pid {}, devices 20..40) died (killed by signal 9 (SIGKILL))",
        workers[1]
    );
    assert!(
        err.iter()
            .any(|l| l.starts_with("error: worker 1 ") && l.contains(&named)),
        "{}",
        err.join("\n")
    );
}

#[test]
fn a_worker_that_never_starts_is_named() {
    if !common::io_uring_or_skip("a_worker_that_never_starts_is_named") {
        return;
    }
    // Flags that pass the usage check but fail at the worker's start: no consumer listens on
    // the sink's socket.
    let sink = format!(
        "unix:{}",
        std::env::temp_dir()
            .join(format!(
                "mpush-fleet-no-consumer-{}.sock",
                std::process::id()
            ))
            .display()
    );
    let out = Command::new(EXE)
        .args(["run", "--processes", "2", "--devices", "4", "--sink", &sink])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: worker 0 (pid "), "{err}");
    assert!(err.contains("never started (exit code 1)"), "{err}");
    assert!(
        err.contains("connecting to the sink consumer"),
        "the worker's own words: {err}"
    );
}

/// A bad value that only a worker's start would find is checked by the supervisor first:
/// one usage error, exit 2, and no worker started.
#[test]
fn a_bad_flag_is_one_usage_error_not_dead_workers() {
    let bad: [(&[&str], &str); 5] = [
        (&["--public-key", "nope"], "--public-key"),
        (&["--source", "nope"], "bad source address nope"),
        (&["--shards", "0"], "--shards must be at least 1"),
        (&["--retry-budget=-1"], "--retry-budget"),
        (
            &["--server", "no-such-host.invalid:3000"],
            "--server no-such-host.invalid:3000",
        ),
    ];
    for (flags, says) in bad {
        let out = Command::new(EXE)
            .args(["run", "--processes", "3", "--devices", "30"])
            .args(flags)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert_eq!(err.matches(says).count(), 1, "{flags:?}: said once: {err}");
        assert!(
            !err.contains("worker"),
            "{flags:?}: no worker started: {err}"
        );
        assert!(
            !err.contains("supervisor:"),
            "{flags:?}: refused before the split: {err}"
        );
    }
}
