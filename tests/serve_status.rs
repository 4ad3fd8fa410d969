//! What a person running `mpush-fleet serve` by hand sees: a status line every
//! `--status-every`, and at Ctrl-C a summary (a table on a terminal, JSON through a pipe);
//! `--quiet` silences both.

mod common;
mod tty;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_mpush-fleet");
/// Generous: a deadline for conditions, never a wait in itself.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running `serve` (under `script` or not) whose stdout lines arrive on a channel.
struct Serve {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    pid: Option<i32>,
}

impl Serve {
    fn start(mut cmd: Command) -> Serve {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(tty::plain(line.as_bytes())).is_err() {
                    break;
                }
            }
        });
        let pid = Some(child.id() as i32);
        Serve {
            child,
            lines,
            seen: Vec::new(),
            pid,
        }
    }

    /// Waits (up to [`PATIENCE`]) for a line satisfying `want`; returns it.
    fn wait_for(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {what} within {PATIENCE:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// SIGINT (Ctrl-C) to the server process, then everything it printed until it exited.
    fn interrupt(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.pid.expect("the server's pid");
        // SAFETY: kill(2) with a pid this test started and a valid signal number.
        let rc = unsafe { libc::kill(pid, libc::SIGINT) };
        assert_eq!(rc, 0, "kill({pid}, SIGINT)");
        let status = self.child.wait().unwrap();
        // The reader ends at EOF, once the process (and script) closed the pipe.
        self.seen.extend(self.lines.iter());
        (status, self.seen.join("\n"))
    }

    fn listen_addr(&mut self) -> String {
        let line = self.wait_for("listening line", |l| l.contains("listening on "));
        line.rsplit(' ').next().unwrap().trim().to_string()
    }
}

fn serve_args(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [EXE, "serve", "--listen", "127.0.0.1:0", "--workers", "1"]
        .iter()
        .map(ToString::to_string)
        .collect();
    v.extend(extra.iter().map(ToString::to_string));
    v
}

/// A handful of devices through `serve`, ending once they are online.
fn small_fleet(addr: &str) {
    let out = Command::new(EXE)
        .args(["run", "--server", addr, "--devices", "5", "--rate", "0"])
        .args([
            "--shards",
            "1",
            "--no-pin",
            "--stop-when-online",
            "--duration",
            "60s",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn on_a_terminal_serve_prints_status_lines_and_a_table() {
    if !common::io_uring_or_skip("on_a_terminal_serve_prints_status_lines_and_a_table") {
        return;
    }
    let argv = serve_args(&["--status-every", "0.2"]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut serve = Serve::start(tty::under_pty(&argv));
    // Under script, the pid to signal is the one the wrapper printed (the server's own).
    let line = serve.wait_for("pid line", |l| l.starts_with("pid="));
    serve.pid = Some(line["pid=".len()..].trim().parse().unwrap());
    let addr = serve.listen_addr();
    small_fleet(&addr);
    let status = serve.wait_for("status line with 5 handshakes", |l| {
        l.contains("] connections ") && l.contains(" handshakes 5 ")
    });
    assert!(status.contains(" binds 5 "), "{status}");
    let (exit, out) = serve.interrupt();
    assert!(exit.success(), "{exit}: {out}");
    let table = &out[out
        .find("mpush-fleet serve summary")
        .unwrap_or_else(|| panic!("{out}"))..];
    assert!(table.contains("handshakes ..................."), "{table}");
    assert!(
        table.contains("binds ........................ 5"),
        "{table}"
    );
    assert!(
        !table.contains("fast connects"),
        "zero rows are left out:\n{table}"
    );
    assert!(table.lines().count() <= 30, "{table}");
}

#[test]
fn through_a_pipe_the_summary_is_json_and_quiet_silences_both() {
    if !common::io_uring_or_skip("through_a_pipe_the_summary_is_json_and_quiet_silences_both") {
        return;
    }
    let argv = serve_args(&["--status-every", "0.2"]);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null());
    let mut serve = Serve::start(cmd);
    let addr = serve.listen_addr();
    small_fleet(&addr);
    serve.wait_for("status line with 5 binds", |l| l.contains(" binds 5 "));
    let (exit, out) = serve.interrupt();
    assert!(exit.success(), "{exit}: {out}");
    let start = out
        .find("\n{\n")
        .unwrap_or_else(|| panic!("no JSON in:\n{out}"))
        + 1;
    let json: serde_json::Value = serde_json::from_str(&out[start..]).expect("JSON summary");
    assert_eq!(json["handshakes"], 5);
    assert_eq!(json["binds"], 5);
    assert!(json["duration_secs"].is_number());

    let argv = serve_args(&["--status-every", "0.1", "--quiet"]);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null());
    let mut serve = Serve::start(cmd);
    let addr = serve.listen_addr();
    // A fleet that comes and goes: work that would show in status lines, were they on.
    small_fleet(&addr);
    let (exit, out) = serve.interrupt();
    assert!(exit.success(), "{exit}: {out}");
    assert!(!out.contains("] connections "), "{out}");
    assert!(!out.contains('{'), "{out}");
}
