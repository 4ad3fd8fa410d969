//! Ctrl-C on the README's own command: SIGINT to the whole process group of `run` with an
//! embedded server in a child process. The server lives in its own group, so the fleet stops
//! first (drain, close) and the server last: no session drops under the fleet, no reconnect
//! after the signal. Real binary, real sockets; waits on output with a deadline.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_mpush-fleet");

#[test]
fn ctrl_c_on_run_with_a_child_server_stops_with_no_reconnect() {
    if !common::io_uring_or_skip("ctrl_c_on_run_with_a_child_server_stops_with_no_reconnect") {
        return;
    }
    // 10,000 devices and their server need more descriptors than one process may have (the
    // limit is set to 20,000, this machine's, for any machine): the embedded server runs as
    // a child process, as in the README's command.
    let mut cmd = Command::new(EXE);
    cmd.args(["run", "--devices", "10000", "--no-pin", "--rate", "5000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: runs in the forked child before exec and only calls setrlimit(2), which is
    // async-signal-safe; lowering a limit is always allowed.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 20_000,
                rlim_max: 20_000,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = cmd.spawn().expect("run starts");
    let pid = i32::try_from(child.id()).expect("pid fits");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            lines.push(line);
        }
        lines
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the fleet never reached 10000 online:\n{seen}"
        );
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("online 10000 ") => break,
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(e) => {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                panic!("run ended early ({e}):\n{seen}\n{err}");
            }
        }
    }
    // The server is a child process in a group of its own, which the signal below misses.
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let serve: Vec<&str> = kids
        .split_whitespace()
        .filter(|k| {
            std::fs::read(format!("/proc/{k}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"serve"))
        })
        .collect();
    assert_eq!(serve.len(), 1, "one child `serve`: {kids}");
    let group = std::fs::read_to_string(format!("/proc/{}/stat", serve[0])).unwrap();
    let pgrp: i32 = group
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(pgrp, pid, "the server is not in the fleet's process group");
    // What a terminal's Ctrl-C does: SIGINT to every process of the foreground group.
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
    let rc = unsafe { libc::kill(-pid, libc::SIGINT) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let status = child.wait().expect("run ends");
    let lines = reader.join().expect("reader");
    let start = lines.iter().position(|l| l == "{").expect("a JSON summary");
    let json: serde_json::Value =
        serde_json::from_str(&lines[start..].join("\n")).expect("the summary parses");
    assert_eq!(
        json["reconnects"], 0,
        "no reconnect after the signal: {json}"
    );
    assert_eq!(json["counters"]["connects"], 10_000, "{json}");
    assert_eq!(
        json["online"], 10_000,
        "the summary's online is the last status line's"
    );
    assert!(status.success(), "{status:?}");
}
