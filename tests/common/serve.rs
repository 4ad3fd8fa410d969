//! `mpush-fleet serve` and `run` as child processes: started with port 0 (the kernel picks),
//! their addresses read from their start lines, stderr lines kept for the test to wait on,
//! killed on drop. Included with `#[path = "common/serve.rs"] mod serve_harness;`.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// How long a child may take to print its start lines or to exit after SIGTERM.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The binary under test.
pub fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_mpush-fleet")
}

/// A child whose stdout and stderr lines arrive on channels; killed on drop.
pub struct Proc {
    child: Option<Child>,
    out: Receiver<String>,
    err: Receiver<String>,
    /// Every stdout line seen so far.
    pub out_lines: Vec<String>,
    /// Every stderr line seen so far.
    pub err_lines: Vec<String>,
}

fn lines(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Proc {
    /// Spawns `mpush-fleet ARGS`.
    pub fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(exe())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mpush-fleet");
        let out = lines(child.stdout.take().unwrap());
        let err = lines(child.stderr.take().unwrap());
        Proc {
            child: Some(child),
            out,
            err,
            out_lines: Vec::new(),
            err_lines: Vec::new(),
        }
    }

    /// Waits (up to `PATIENCE`) for a stdout line starting with `prefix`; returns its rest.
    pub fn wait_out(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        if let Some(l) = self.out_lines.iter().find(|l| l.starts_with(prefix)) {
            return l[prefix.len()..].to_string();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.out.recv_timeout(left) else {
                let err = self.drain_err();
                panic!(
                    "no line {prefix:?}; stdout {:?}, stderr {err:?}",
                    self.out_lines
                );
            };
            self.out_lines.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    }

    /// Waits (up to `PATIENCE`) for a stderr line containing every one of `parts`.
    pub fn wait_err(&mut self, parts: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        let matches = |l: &str| parts.iter().all(|p| l.contains(p));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.err.recv_timeout(left) else {
                panic!("no stderr line with {parts:?}; stderr {:?}", self.err_lines);
            };
            self.err_lines.push(line.clone());
            if matches(&line) {
                return line;
            }
        }
    }

    fn drain_err(&mut self) -> Vec<String> {
        while let Ok(l) = self.err.try_recv() {
            self.err_lines.push(l);
        }
        self.err_lines.clone()
    }

    /// Sends SIGTERM and waits (up to `PATIENCE`) for the exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        self.wait_exit()
    }

    /// Waits (up to `PATIENCE`) for the child to exit by itself; returns the exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                // What is left of its output: both readers run until the pipes close, so
                // wait for them (a line may still be on its way), not just take what came.
                while let Ok(l) = self.out.recv_timeout(Duration::from_secs(5)) {
                    self.out_lines.push(l);
                }
                while let Ok(l) = self.err.recv_timeout(Duration::from_secs(5)) {
                    self.err_lines.push(l);
                }
                return status.code();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child did not exit; stderr {:?}", self.drain_err());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `serve` child on loopback with its admin API.
pub struct Serve {
    /// The process.
    pub proc: Proc,
    /// Its MPUSH listener.
    pub addr: SocketAddr,
    /// Its admin API.
    pub admin: SocketAddr,
}

impl Serve {
    /// `serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --quiet EXTRA...`, once it listens.
    pub fn start(extra: &[&str]) -> Serve {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
        args.push("--quiet");
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(&args);
        let addr = proc.wait_out("mpush server listening on ").parse().unwrap();
        let admin = proc.wait_out("admin API on http://").parse().unwrap();
        Serve { proc, addr, admin }
    }
}
