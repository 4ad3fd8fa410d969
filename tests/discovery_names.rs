//! Host names for `--server`: a name that resolves (localhost) runs end to end against a
//! `serve` process; a name that does not (the reserved `.invalid` TLD) is a usage error at
//! start (exit 2, a message naming it), as are malformed endpoints and ZooKeeper flags.

mod common;
#[path = "common/serve.rs"]
mod serve_harness;

use serve_harness::{Proc, Serve};

fn report_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("names-{}-{tag}.json", std::process::id()))
}

#[test]
fn server_by_host_name_runs_end_to_end() {
    let name = "server_by_host_name_runs_end_to_end";
    if !common::io_uring_or_skip(name) {
        return;
    }
    let serve = Serve::start(&[]);
    let server = format!("localhost:{}", serve.addr.port());
    let report = report_path("localhost");
    let mut run = Proc::spawn(&[
        "run",
        "--server",
        &server,
        "--devices",
        "20",
        "--rate",
        "0",
        "--shards",
        "1",
        "--duration",
        "60s",
        "--stop-when-online",
        "--report",
        report.to_str().unwrap(),
    ]);
    let code = run.wait_exit();
    let text = std::fs::read_to_string(&report).expect("report written");
    let _ = std::fs::remove_file(&report);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(code, Some(0), "{:?}", run.err_lines);
    assert_eq!(json["online"], 20, "{json}");
    assert_eq!(json["handshakes"], 20, "{json}");
}

#[test]
fn unresolvable_name_is_a_usage_error_at_start() {
    let mut run = Proc::spawn(&[
        "run",
        "--server",
        "no-such-host.invalid:3000",
        "--devices",
        "5",
    ]);
    assert_eq!(run.wait_exit(), Some(2));
    let all = run.err_lines.join("\n");
    assert!(all.contains("no-such-host.invalid:3000"), "{all}");
    assert!(!all.contains("panicked"), "{all}");
}

#[test]
fn malformed_endpoints_and_zookeeper_flags_are_usage_errors() {
    for args in [
        &["run", "--server", "localhost"][..],
        &["run", "--server", "localhost:0"],
        &["run", "--server", "bad host:3000"],
        &["run", "--zookeeper", "zk"],
        &["run", "--zookeeper", ","],
        &[
            "run",
            "--zookeeper",
            "127.0.0.1:2181",
            "--zk-namespace",
            "a/b",
        ],
        &[
            "run",
            "--zookeeper",
            "127.0.0.1:2181",
            "--server",
            "127.0.0.1:3000",
        ],
        &["run", "--zk-public-ip"],
    ] {
        let mut run = Proc::spawn(args);
        assert_eq!(run.wait_exit(), Some(2), "{args:?}: {:?}", run.err_lines);
        assert!(!run.err_lines.is_empty(), "{args:?}: a message");
    }
}

#[test]
fn serve_and_metrics_listen_on_host_names() {
    let mut serve = Proc::spawn(&[
        "serve",
        "--listen",
        "localhost:0",
        "--admin",
        "localhost:0",
        "--gateway",
        "localhost:0",
        "--quiet",
    ]);
    for start in [
        "mpush server listening on ",
        "admin API on http://",
        "gateway on ",
    ] {
        let addr: std::net::SocketAddr = serve.wait_out(start).parse().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{start}{addr}");
        // Something listens there.
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{start}{addr}: {e}"));
    }
    assert_eq!(serve.terminate(), Some(0), "{:?}", serve.err_lines);

    for (flag, extra) in [
        ("--listen", &["serve"][..]),
        ("--admin", &["serve"]),
        ("--gateway", &["serve"]),
        (
            "--metrics",
            &["run", "--server", "127.0.0.1:1", "--devices", "1"],
        ),
    ] {
        let mut args = extra.to_vec();
        args.extend([flag, "no-such-host.invalid:3000"]);
        let mut p = Proc::spawn(&args);
        assert_eq!(p.wait_exit(), Some(2), "{args:?}: {:?}", p.err_lines);
        let all = p.err_lines.join("\n");
        assert!(
            all.contains(&format!("{flag} no-such-host.invalid:3000")),
            "{args:?}: {all}"
        );
    }

    if !common::io_uring_or_skip("serve_and_metrics_listen_on_host_names") {
        return;
    }
    let mut run = Proc::spawn(&[
        "run",
        "--devices",
        "2",
        "--shards",
        "1",
        "--metrics",
        "localhost:0",
        "--duration",
        "60s",
        "--stop-when-online",
    ]);
    let line = run.wait_err(&["metrics at /metrics"]);
    assert!(line.contains("127.0.0.1:"), "{line}");
    assert_eq!(run.wait_exit(), Some(0), "{:?}", run.err_lines);
}
