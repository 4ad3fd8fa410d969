//! `mpush-fleet run` as a process, against its embedded server on loopback: `--fail-on` turns
//! a violated threshold into exit code 1 with a readable line, and `--sink` and `--metrics`
//! start and drain with the run.

mod common;

use std::process::Command;

#[test]
fn fail_on_threshold_fails_the_run_and_the_sink_drains() {
    if !common::io_uring_or_skip("fail_on_threshold_fails_the_run_and_the_sink_drains") {
        return;
    }
    let sink = std::env::temp_dir().join(format!("mpush-cli-sink-{}.jsonl", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_mpush-fleet"))
        .args([
            "run",
            "--devices",
            "3",
            "--rate",
            "0",
            "--shards",
            "1",
            "--duration",
            "1s",
        ])
        .args(["--metrics", "127.0.0.1:0", "--sink"])
        .arg(format!("file:{}", sink.display()))
        // `errors>=0` always holds and `reconnects<0` never does, whatever the run's timing.
        .args([
            "--fail-on",
            "errors>=0,reconnects<0",
            "--fail-on",
            "handshake.p99>3600s",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains("--fail-on errors>=0: errors was 0"),
        "{stderr}"
    );
    assert!(!stderr.contains("--fail-on reconnects<0"), "{stderr}");
    assert!(!stderr.contains("--fail-on handshake.p99"), "{stderr}");
    assert!(
        stdout.contains(&format!("sink file:{}: written 0", sink.display())),
        "{stdout}"
    );
    assert!(sink.exists(), "the sink file is created at start");
    let _ = std::fs::remove_file(&sink);
}

#[test]
fn bad_fail_on_and_sink_values_are_usage_errors() {
    for args in [
        ["--fail-on", "online<lots"],
        ["--sink", "tcp:1.2.3.4:5"],
        ["--sink-capacity", "0"],
        ["--retry-floor", "NaN"],
        ["--retry-budget", "inf"],
        ["--max-pending", "lots"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mpush-fleet"))
            .args(["run", "--devices", "1", "--duration", "0s"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(args[1]), "{args:?}: {stderr}");
    }
}
