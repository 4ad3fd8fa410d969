//! What a person sees at the end of `mpush-fleet run`: on a terminal (a pseudo-terminal
//! here), a short table with the `--fail-on` thresholds marked; with stdout piped, or with
//! `--json`, the JSON summary that scripts read; `--report` writes that JSON either way.

mod common;
#[path = "common/serve.rs"]
mod serve_harness;
mod tty;

use std::process::{Command, Stdio};

const EXE: &str = env!("CARGO_BIN_EXE_mpush-fleet");

/// A small fleet against the embedded server that ends as soon as every device is online
/// (the duration is only a bound).
const SMOKE: [&str; 11] = [
    "run",
    "--devices",
    "50",
    "--rate",
    "0",
    "--shards",
    "1",
    "--stop-when-online",
    "--duration",
    "120s",
    "--no-pin",
];

/// The lines from the table's title to the end of the output.
fn table(out: &str) -> Vec<&str> {
    let lines: Vec<&str> = out.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == "mpush-fleet run summary")
        .unwrap_or_else(|| panic!("no summary table in:\n{out}"));
    lines[start..].to_vec()
}

#[test]
fn a_terminal_gets_a_table_with_the_thresholds_marked() {
    if !common::io_uring_or_skip("a_terminal_gets_a_table_with_the_thresholds_marked") {
        return;
    }
    let mut argv = vec![EXE];
    argv.extend(SMOKE);
    // `errors>=0` always holds (fails the run) and `reconnects<0` never does.
    argv.extend(["--fail-on", "errors>=0,reconnects<0"]);
    let out = tty::under_pty(&argv).output().unwrap();
    let text = tty::plain(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let rows = table(&text);
    assert!(rows.len() <= 30, "{} lines:\n{text}", rows.len());
    let has = |s: &str| rows.iter().any(|r| r.contains(s));
    for want in [
        "result ....................... FAIL (1 threshold failed)",
        "devices ...................... 50",
        "online at stop ............... 50 (100.0%)",
        "handshakes ................... 50",
        "sessions/s",
        "CPU per session",
        "memory per session",
        "✗ FAILED errors>=0",
        "✓ ok     reconnects<0",
    ] {
        assert!(has(want), "no {want:?} in:\n{text}");
    }
    let has_latency = |name: &str| rows.iter().any(|r| r.trim_start().starts_with(name));
    assert!(has_latency("handshake "), "{text}");
    assert!(has_latency("connect "), "{text}");
    // Zero rows are left out, and no JSON.
    assert!(!has("fast connects"), "{text}");
    assert!(!has("reconnects ...."), "{text}");
    assert!(!text.contains("\"counters\""), "{text}");
}

#[test]
fn json_when_asked_on_a_terminal() {
    if !common::io_uring_or_skip("json_when_asked_on_a_terminal") {
        return;
    }
    let mut argv = vec![EXE];
    argv.extend(SMOKE);
    argv.push("--json");
    let out = tty::under_pty(&argv).output().unwrap();
    let text = tty::plain(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("\"counters\""), "{text}");
    assert!(!text.contains("mpush-fleet run summary"), "{text}");
}

#[test]
fn a_pipe_gets_the_json_and_the_report_file_is_the_same() {
    if !common::io_uring_or_skip("a_pipe_gets_the_json_and_the_report_file_is_the_same") {
        return;
    }
    let report = std::env::temp_dir().join(format!("mpush-summary-{}.json", std::process::id()));
    let out = Command::new(EXE)
        .args(SMOKE)
        .arg("--report")
        .arg(&report)
        .args(["--fail-on", "errors>=0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stdout.contains("mpush-fleet run summary"), "{stdout}");
    // The JSON object starts on a line of its own after the status lines.
    let start = stdout.find("\n{\n").expect("a JSON object on stdout") + 1;
    let printed: serde_json::Value = serde_json::from_str(&stdout[start..]).expect("JSON");
    assert_eq!(printed["devices"], 50);
    assert_eq!(printed["ever_online"], 50);
    assert!(printed["latency"]["handshake"]["p999_ms"].is_number());
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("--report written")).unwrap();
    let _ = std::fs::remove_file(&report);
    let keys = |v: &serde_json::Value| v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>());
    assert_eq!(keys(&file), keys(&printed));
    assert_eq!(file["handshakes"], printed["handshakes"]);
    // Scripts read violations on stderr, as before.
    assert!(
        stderr.contains("--fail-on errors>=0: errors was 0"),
        "{stderr}"
    );
}

#[test]
fn the_table_has_a_row_per_server() {
    if !common::io_uring_or_skip("the_table_has_a_row_per_server") {
        return;
    }
    let a = serve_harness::Serve::start(&[]);
    let b = serve_harness::Serve::start(&[]);
    let (sa, sb) = (a.addr.to_string(), b.addr.to_string());
    let mut argv = vec![EXE];
    argv.extend(SMOKE);
    argv.extend(["--server", &sa, "--server", &sb]);
    let out = tty::under_pty(&argv).output().unwrap();
    let text = tty::plain(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let rows = table(&text);
    let header = rows
        .iter()
        .position(|r| {
            r.split_whitespace().collect::<Vec<_>>()
                == ["server", "connects", "failed", "online", "errors"]
        })
        .unwrap_or_else(|| panic!("no server header in:\n{text}"));
    // Both servers, in order, each with its connects and online devices; the online
    // column adds up to the fleet's (50 devices spread over both by round-robin).
    let mut online = 0;
    // The rows follow the header in the table's own order (by address), so find each.
    for addr in [&sa, &sb] {
        let row = rows[header + 1..header + 3]
            .iter()
            .find(|r| r.split_whitespace().next() == Some(addr.as_str()))
            .unwrap_or_else(|| panic!("no row for {addr}: {text}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        let n = |k: usize| cols[k].parse::<u64>().unwrap();
        assert!(n(1) > 0 && n(3) > 0, "{addr} took connects: {text}");
        assert_eq!(n(2), 0, "{text}");
        online += n(3);
    }
    assert_eq!(online, 50, "{text}");
    drop((a, b));
}
