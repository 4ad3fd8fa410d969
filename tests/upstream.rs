//! Device-originated traffic end to end, with the real binaries: `run --device-push-rate` and
//! `run --http-proxy-rate` against `serve` (PROTOCOL.md 9), and the proxy's backend an axum
//! server of the test's own. Each run is bounded (`--duration`); what is asserted is counts
//! and the accounting of every request, never a time.

mod common;
#[path = "common/http_backend.rs"]
mod http_backend;
#[path = "common/serve.rs"]
mod serve_harness;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;
use serve_harness::{exe, Serve};

/// A fleet of 10 devices against `serve` for 3 s with `extra` flags; its report.
fn run(test: &str, server: &Serve, extra: &[&str]) -> Value {
    let dir = std::env::temp_dir().join(format!("mpush-up-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report: PathBuf = dir.join("r.json");
    let addr = server.addr.to_string();
    let out = Command::new(exe())
        .args(["run", "--server", &addr, "--devices", "10", "--rate", "0"])
        .args(["--duration", "3s", "--status-every", "0.5", "--shards", "1"])
        .args(extra)
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let text = std::fs::read(&report).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    serde_json::from_slice(&text).unwrap()
}

fn n(r: &Value, name: &str) -> u64 {
    r["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

#[test]
fn an_auto_ack_device_push_gets_the_servers_ack() {
    if !common::io_uring_or_skip("an_auto_ack_device_push_gets_the_servers_ack") {
        return;
    }
    let serve = Serve::start(&[]);
    let r = run(
        "auto",
        &serve,
        &["--device-push-rate", "40", "--device-push-ack", "auto"],
    );
    let sent = n(&r, "device_pushes_sent");
    assert!(sent > 0, "{r}");
    assert!(n(&r, "device_push_acked") > 0, "{r}");
    // Every push ended: acked, or lost with its connection at the stop.
    assert_eq!(
        sent,
        n(&r, "device_push_acked") + n(&r, "device_push_failed")
    );
    assert_eq!(n(&r, "device_push_timeouts"), 0);
    assert_eq!(
        r["latency"]["device_push_ack"]["count"].as_u64(),
        Some(n(&r, "device_push_acked"))
    );
}

#[test]
fn a_biz_ack_device_push_times_out_as_the_stock_server_never_acks() {
    if !common::io_uring_or_skip("a_biz_ack_device_push_times_out") {
        return;
    }
    let serve = Serve::start(&[]);
    let r = run(
        "biz",
        &serve,
        &[
            "--device-push-rate",
            "20",
            "--device-push-ack",
            "biz",
            "--upstream-timeout",
            "200",
        ],
    );
    assert!(n(&r, "device_push_timeouts") > 0, "{r}");
    assert_eq!(n(&r, "device_push_acked"), 0);
    assert_eq!(n(&r, "upstream_unmatched"), 0);
}

#[test]
fn http_proxy_round_trip_and_the_proxys_raw_failures() {
    if !common::io_uring_or_skip("http_proxy_round_trip_and_the_proxys_raw_failures") {
        return;
    }
    let app = axum::Router::new()
        .route(
            "/ok",
            axum::routing::post(|body: String| async move { body }),
        )
        .route(
            "/slow",
            axum::routing::get(|| async {
                // Longer than the read timeout below: the proxy answers 408.
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                "late"
            }),
        );
    let backend = http_backend::spawn(app);
    let mapping = format!("backend.test={backend}");
    let serve = Serve::start(&["--http-proxy", &mapping]);
    let r = run(
        "http-ok",
        &serve,
        &[
            "--http-proxy-rate",
            "20",
            "--http-proxy-uri",
            "http://backend.test/ok",
            "--http-proxy-method",
            "POST",
            "--http-proxy-body",
            "ping",
        ],
    );
    let sent = n(&r, "http_requests_sent");
    assert!(n(&r, "http_responses_2xx") > 0, "{r}");
    assert_eq!(sent, n(&r, "http_responses") + n(&r, "http_failed"));
    assert_eq!((n(&r, "http_raw_failures"), n(&r, "http_timeouts")), (0, 0));

    // A backend that does not listen (504), one too slow for the read timeout (408).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = closed.local_addr().unwrap();
    drop(closed);
    let slow = format!("http://{backend}/slow");
    let refused = format!("http://{gone}/x");
    let serve = Serve::start(&["--http-proxy-enabled"]);
    for (what, uri) in [("refused", &refused), ("slow", &slow)] {
        let r = run(
            what,
            &serve,
            &[
                "--http-proxy-rate",
                "10",
                "--http-proxy-uri",
                uri,
                "--http-proxy-read-timeout",
                "100",
            ],
        );
        assert!(n(&r, "http_raw_failures") > 0, "{what}: {r}");
        assert_eq!(n(&r, "http_responses_2xx"), 0, "{what}");
        assert_eq!(
            n(&r, "http_requests_sent"),
            n(&r, "http_responses") + n(&r, "http_failed"),
            "{what}"
        );
    }
}

#[test]
fn http_proxy_refused_by_default_is_an_error_and_the_fleet_reconnects() {
    if !common::io_uring_or_skip("http_proxy_refused_by_default") {
        return;
    }
    let serve = Serve::start(&[]);
    let r = run(
        "refused",
        &serve,
        &["--http-proxy-rate", "5", "--http-proxy-uri", "http://h/x"],
    );
    assert!(n(&r, "http_failed") > 0, "{r}");
    // ERROR 101 (unsupported command), counted by name.
    assert!(
        r["errors"].as_object().is_some_and(|m| !m.is_empty()),
        "{r}"
    );
    assert!(n(&r, "reconnects") > 0, "{r}");
}
