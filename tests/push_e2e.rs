//! `run --push-rate`: the fleet pushes to its own users through the server's gateway and
//! accounts for every push (sent = received + explained + lost), through the embedded server
//! in each ack mode, and against `serve --gateway-ack-race`, where every AUTO_ACK push gets no
//! reply although its device received (and acked) it. Real binaries, loopback, io_uring
//! shards; every run ends by itself once its pushes are accounted for (`--push-count`).

mod common;
#[path = "common/serve.rs"]
mod serve_harness;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use serve_harness::Serve;

fn report_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mpush-push-e2e-{name}-{}.json", std::process::id()))
}

/// Runs `mpush-fleet run ARGS --report FILE`; returns the exit code and the report.
fn run(name: &str, args: &[&str]) -> (Option<i32>, Value) {
    let report = report_path(name);
    let out = Command::new(env!("CARGO_BIN_EXE_mpush-fleet"))
        .arg("run")
        .args(args)
        .args(["--shards", "1", "--no-pin", "--status-every", "1", "--json"])
        .arg("--report")
        .arg(&report)
        .output()
        .expect("run starts");
    let text = std::fs::read_to_string(&report).unwrap_or_else(|_| {
        panic!(
            "no report; stdout {}\nstderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_file(&report);
    let json: Value = serde_json::from_str(&text).expect("report JSON");
    (out.status.code(), json)
}

fn n(json: &Value, counter: &str) -> u64 {
    json["counters"][counter]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {counter}: {json}"))
}

/// sent = received + explained + lost, and the report's other views agree.
fn accounted(json: &Value) {
    let sent = n(json, "push_sent");
    assert_eq!(
        sent,
        n(json, "push_received") + n(json, "push_explained") + n(json, "push_lost"),
        "every push accounted for: {}",
        json["counters"]
    );
    assert_eq!(
        json["latency"]["push_e2e"]["count"].as_u64(),
        Some(n(json, "push_received")),
        "one end-to-end sample per push received"
    );
    assert!(
        json["histograms"]["push_e2e"].is_string(),
        "merged like the others"
    );
}

#[test]
fn every_push_through_the_embedded_server_is_received_in_each_ack_mode() {
    if !common::io_uring_or_skip("every_push_through_the_embedded_server") {
        return;
    }
    for ack in ["none", "auto", "biz"] {
        let (code, json) = run(
            ack,
            &[
                "--devices",
                "20",
                "--rate",
                "0",
                "--push-rate",
                "400",
                "--push-count",
                "300",
                "--push-ack",
                ack,
                "--fail-on",
                "push.lost>0,push.no_reply>0",
            ],
        );
        assert_eq!(code, Some(0), "{ack}: {}", json["counters"]);
        accounted(&json);
        let c = &json["counters"];
        assert_eq!(n(&json, "push_sent"), 300, "{ack}: {c}");
        assert_eq!(n(&json, "push_received"), 300, "{ack}: {c}");
        assert_eq!(n(&json, "push_gateway_ok"), 300, "{ack}: {c}");
        assert_eq!(n(&json, "push_received_twice"), 0, "{ack}: {c}");
        assert_eq!(n(&json, "push_lost"), 0, "{ack}: {c}");
        assert_eq!(n(&json, "push_foreign"), 0, "{ack}: {c}");
        assert_eq!(json["latency"]["push_reply"]["count"], 300, "{ack}");
        // Acked: every push in an ack mode, none without one.
        let acked = json["latency"]["push_acked"]["count"].as_u64().unwrap();
        assert_eq!(acked, if ack == "none" { 0 } else { 300 }, "{ack}");
        assert_eq!(
            n(&json, "pushes_received"),
            300,
            "the devices' own count agrees"
        );
    }
}

#[test]
fn the_ack_race_shows_as_no_reply_but_received() {
    if !common::io_uring_or_skip("the_ack_race_shows_as_no_reply_but_received") {
        return;
    }
    let mut serve = Serve::start(&["--gateway", "127.0.0.1:0", "--gateway-ack-race"]);
    let gateway = serve.proc.wait_out("gateway on ");
    let server = serve.addr.to_string();
    let (code, json) = run(
        "race",
        &[
            "--server",
            &server,
            "--gateway",
            &gateway,
            "--devices",
            "5",
            "--rate",
            "0",
            "--push-rate",
            "100",
            "--push-count",
            "20",
            "--push-ack",
            "auto",
            "--push-timeout",
            "1s",
            "--push-grace",
            "1s",
            "--fail-on",
            "push.no_reply>0",
        ],
    );
    assert_eq!(code, Some(1), "push.no_reply>0 fails the run");
    accounted(&json);
    let c = &json["counters"];
    assert_eq!(n(&json, "push_sent"), 20, "{c}");
    assert_eq!(n(&json, "push_no_reply"), 20, "{c}");
    assert_eq!(n(&json, "push_no_reply_received"), 20, "{c}");
    assert_eq!(n(&json, "push_received"), 20, "{c}");
    assert_eq!(n(&json, "push_lost"), 0, "{c}");
    assert_eq!(
        json["latency"]["push_acked"]["count"], 20,
        "the devices acked"
    );
    assert_eq!(json["latency"]["push_reply"]["count"], 0, "no reply came");
}

#[test]
fn push_rate_needs_a_gateway_with_an_external_server() {
    let out = Command::new(env!("CARGO_BIN_EXE_mpush-fleet"))
        .args(["run", "--server", "127.0.0.1:1", "--push-rate", "10"])
        .output()
        .expect("run starts");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--gateway"));
}
