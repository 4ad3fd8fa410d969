//! `report merge`: two fleets over disjoint device ranges (`--first-device`), merged, give the
//! report the same fleet gives as one run, in everything deterministic (devices, online,
//! connects, handshakes, histogram sample counts; not timings). Real binary, real sockets.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_mpush-fleet");

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("mpush-fleet-merge-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fleet of `devices` from `first` against its own embedded server, ending once all are
/// online (the duration is only a bound); its report is written to `report`.
fn fleet(first: u32, devices: u32, report: &Path) {
    let out = Command::new(EXE)
        .args(["run", "--rate", "0", "--shards", "1", "--no-pin"])
        .args(["--stop-when-online", "--duration", "120s", "--json"])
        .args(["--devices", &devices.to_string()])
        .args(["--first-device", &first.to_string()])
        .arg("--report")
        .arg(report)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn merge(files: &[&Path], extra: &[&str]) -> Output {
    Command::new(EXE)
        .args(["report", "merge"])
        .args(files)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn read(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// What must be equal: counts, not timings.
fn deterministic(r: &Value) -> Value {
    let c = &r["counters"];
    let count = |l: &str| r["latency"][l]["count"].clone();
    serde_json::json!({
        "devices": r["devices"], "online": r["online"], "ever_online": r["ever_online"],
        "handshakes": r["handshakes"], "bound": r["bound"], "reconnects": r["reconnects"],
        "connects": c["connects"], "connected": c["connected"],
        "devices_started": c["devices_started"], "errors": r["errors"],
        "connect_samples": count("connect"), "handshake_samples": count("handshake"),
        "bind_samples": count("bind"),
    })
}

#[test]
fn a_merge_of_two_ranges_is_the_run_of_both() {
    if !common::io_uring_or_skip("a_merge_of_two_ranges_is_the_run_of_both") {
        return;
    }
    let d = dir();
    let (a, b, whole) = (d.join("a.json"), d.join("b.json"), d.join("whole.json"));
    fleet(0, 30, &a);
    fleet(30, 50, &b);
    fleet(0, 80, &whole);
    let out = merge(&[&a, &b], &["--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged: Value = serde_json::from_slice(&out.stdout).expect("JSON on a pipe");
    let whole = read(&whole);
    assert_eq!(deterministic(&merged), deterministic(&whole));
    assert_eq!(merged["devices"], 80);
    assert_eq!(merged["online"], 80);
    assert_eq!(merged["latency"]["handshake"]["count"], 80);
    // The merge is itself a report that merges again.
    let again = d.join("merged.json");
    std::fs::write(&again, &out.stdout).unwrap();
    assert!(merged["histograms"]["handshake"].is_string(), "{merged}");

    // --fail-on judges the merged run as a single one.
    let out = merge(&[&a, &b], &["--fail-on", "handshakes<81,reconnects>0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--fail-on handshakes<81: handshakes was 80"),
        "{err}"
    );
    assert!(!err.contains("reconnects>0"), "{err}");

    // The same report twice counts devices twice: a usage error naming both, exit 2.
    let out = merge(&[&a, &again], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("overlap"), "{err}");
    let broken = d.join("broken.json");
    std::fs::write(&broken, "{\"devices\": 3").unwrap();
    let out = merge(&[&a, &broken], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.json"));
    let _ = std::fs::remove_dir_all(&d);
}
