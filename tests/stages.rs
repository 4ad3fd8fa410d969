//! Stages and `--rate auto` end to end on loopback, through the built binary: a short plan
//! against the embedded server reports each phase and a `--fail-on` naming a phase fails the
//! run; a broken spec is a usage error naming its bad part; `--rate auto` against a `serve`
//! limited to C handshakes/s reports a capacity bounded by C. Real processes, sockets and
//! io_uring; the counts decide, not the clock (the 20% figure is tested in simulated time).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const EXE: &str = env!("CARGO_BIN_EXE_mpush-fleet");

fn report_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("stages-{}-{tag}.json", std::process::id()))
}

fn read_report(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("report written");
    let _ = std::fs::remove_file(path);
    serde_json::from_str(&text).expect("report JSON")
}

#[test]
fn a_stages_run_reports_each_phase_and_fails_on_a_phase_threshold() {
    if !common::io_uring_or_skip("a_stages_run_reports_each_phase_and_fails_on_a_phase_threshold") {
        return;
    }
    let report = report_path("phases");
    let out = Command::new(EXE)
        .args(["run", "--shards", "2", "--no-pin", "--duration", "120s"])
        .args(["--stages", "ramp:40@0,hold:1s,storm,ramp-down:0s"])
        .args(["--fail-on", "storm.timeouts>0,storm.reconnects>0"])
        .args(["--report", report.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json = read_report(&report);
    // `storm.reconnects>0` holds (the storm closed all 40), `storm.timeouts>0` does not.
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{json:#}");
    assert!(
        stderr.contains("--fail-on storm.reconnects>0: storm.reconnects was 40"),
        "{stderr}"
    );
    assert!(!stderr.contains("storm.timeouts>0:"), "{stderr}");
    assert_eq!(json["devices"], 40, "the ramp's count is the fleet's");
    let phases = json["stages"].as_array().expect("stages in the report");
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ramp", "hold", "storm", "ramp-down"], "{json:#}");
    assert!(phases.iter().all(|p| p["completed"] == true), "{json:#}");
    let (ramp, storm, down) = (&phases[0], &phases[2], &phases[3]);
    assert_eq!(
        (&ramp["handshakes"], &ramp["online_at_end"]),
        (&40.into(), &40.into())
    );
    assert_eq!(storm["reconnects"], 40, "{storm:#}");
    assert_eq!(
        storm["fast_connects"], 40,
        "the storm comes back by fast connect: {storm:#}"
    );
    assert_eq!(
        (&storm["handshakes"], &storm["timeouts"]),
        (&0.into(), &0.into())
    );
    assert_eq!(storm["online_at_end"], 40);
    assert_eq!(storm["fast_connect"]["count"], 40);
    assert_eq!(down["online_at_end"], 0);
}

#[test]
fn a_broken_stages_spec_or_an_unknown_phase_is_a_usage_error_naming_it() {
    for (args, names) in [
        (vec!["--stages", "ramp:10@5,hold:6x"], "\"hold:6x\""),
        (vec!["--stages", "ramp:10@5,jump"], "\"jump\""),
        (
            vec![
                "--stages",
                "ramp:10@5,hold:1s",
                "--fail-on",
                "storm.timeouts>0",
            ],
            "no phase named \"storm\"",
        ),
        (vec!["--rate", "fast"], "\"fast\""),
        // Not yet split over worker processes: refused, not run wrongly.
        (
            vec!["--processes", "2", "--stages", "ramp:10@5"],
            "--processes with --stages",
        ),
        (
            vec!["--processes", "2", "--rate", "auto"],
            "or --rate auto is not supported",
        ),
    ] {
        let out = Command::new(EXE)
            .arg("run")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
    }
}

/// Kills the `serve` child when the test ends, however it ends.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn rate_auto_against_a_limited_serve_reports_a_capacity_bounded_by_its_limit() {
    if !common::io_uring_or_skip(
        "rate_auto_against_a_limited_serve_reports_a_capacity_bounded_by_its_limit",
    ) {
        return;
    }
    let limit = 100.0;
    let mut child = Command::new(EXE)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--max-handshakes-per-sec", &limit.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("serve's stdout");
    let serve = Serve(child);
    // The first line names the port the kernel gave; serve prints it once listening.
    // The reader lives as long as serve does: serve's later lines need an open pipe.
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    lines.read_line(&mut line).expect("serve's start line");
    let addr = line
        .trim()
        .strip_prefix("mpush server listening on ")
        .unwrap_or_else(|| panic!("unexpected start line {line:?}"))
        .to_string();
    let report = report_path("auto");
    let out = Command::new(EXE)
        .args([
            "run",
            "--server",
            &addr,
            "--devices",
            "400",
            "--rate",
            "auto",
        ])
        .args([
            "--shards",
            "1",
            "--no-pin",
            "--stop-when-online",
            "--duration",
            "120s",
        ])
        .args(["--report", report.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    drop(serve);
    drop(lines);
    let json = read_report(&report);
    assert_eq!(out.status.code(), Some(0), "{json:#}");
    assert_eq!(json["ever_online"], 400);
    let cap = &json["capacity"];
    assert_eq!(cap["p99_target_ms"], 500.0, "{json:#}");
    let hs = cap["handshake"]["per_sec"]
        .as_f64()
        .expect("a handshake capacity");
    // The server's bucket lets at most its rate (and a small burst) through a second: a
    // generous bound, since a 1 s epoch on a shared machine is not a precise clock.
    assert!(hs > 0.0 && hs <= 2.0 * limit, "{cap:#}");
    assert!(cap["handshake"]["p99_ms"].as_f64().is_some(), "{cap:#}");
}
