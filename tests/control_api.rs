//! The proxy role through the real binaries: `run --devices-file --control` against a `serve`
//! process. Every control command, a devices file whose real ids reach the server, the sink
//! and the Redis ticket keys, a device added and one removed at run time, bad requests, and
//! the token rules (a non-loopback address refused without a token; 401 for a missing or
//! wrong one).

mod common;
mod harness;
#[path = "common/redis.rs"]
mod redis_harness;
#[path = "common/serve.rs"]
mod serve_harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};
use serve_harness::{Proc, Serve};

fn temp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("control-api-{}-{tag}", std::process::id()))
}

/// One request with an optional bearer token; the status and the JSON answer.
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect to the control API");
    s.set_read_timeout(Some(harness::client::READ_TIMEOUT))
        .unwrap();
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("a response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn api(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    call(addr, method, path, body, None)
}

/// `GET /devices/{id}` (expecting it to exist).
fn device(addr: SocketAddr, id: &str) -> Value {
    let (status, v) = api(addr, "GET", &format!("/devices/{id}"), None);
    assert_eq!(status, 200, "{id}: {v}");
    v
}

fn wait_bound(addr: SocketAddr, id: &str, bound: bool) {
    harness::wait_until(&format!("{id} bound={bound}"), || {
        let v = device(addr, id);
        v["phase"] == "online" && v["bound"] == bound
    });
}

/// How many sessions the server pushed to for `user`.
fn push_to(serve: &Serve, user: &str) -> u64 {
    let v = harness::http::post(
        serve.admin,
        "/push",
        json!({ "user_id": user, "content": format!("for {user}") }),
    );
    v["sent"].as_u64().unwrap()
}

/// The fleet's control address, from its start line.
fn control_addr(run: &mut Proc) -> SocketAddr {
    let line = run.wait_err(&["control API on http://"]);
    line.rsplit("http://").next().unwrap().parse().unwrap()
}

#[test]
fn every_control_command_through_serve_with_a_devices_file() {
    let name = "every_control_command_through_serve_with_a_devices_file";
    if !common::io_uring_or_skip(name) {
        return;
    }
    let redis = redis_harness::RedisProcess::start(name);
    let serve = Serve::start(&[]);
    let list = temp("devices.jsonl");
    std::fs::write(
        &list,
        "{\"deviceId\":\"phone-a\",\"userId\":\"alice\",\"tags\":\"vip\",\"osName\":\"ios\"}\n\
         {\"deviceId\":\"phone-b\",\"userId\":\"bob\"}\n\
         \n\
         {\"deviceId\":\"kiosk\"}\n",
    )
    .unwrap();
    let sink = temp("sink.jsonl");
    let server = serve.addr.to_string();
    let mut args = vec![
        "run",
        "--server",
        &server,
        "--devices-file",
        list.to_str().unwrap(),
        "--control",
        "127.0.0.1:0",
        "--rate",
        "0",
        "--shards",
        "2",
        "--no-pin",
        "--duration",
        "300s",
    ];
    let sink_spec = format!("file:{}", sink.display());
    args.extend(["--sink", &sink_spec]);
    let redis_url = redis.as_ref().map(|r| r.url());
    if let Some(url) = &redis_url {
        args.extend(["--redis", url]);
    }
    let mut run = Proc::spawn(&args);
    let ctl = control_addr(&mut run);

    // The listed devices, by their real ids.
    wait_bound(ctl, "phone-a", true);
    wait_bound(ctl, "phone-b", true);
    harness::wait_until("kiosk online", || device(ctl, "kiosk")["phase"] == "online");
    let kiosk = device(ctl, "kiosk");
    assert_eq!(kiosk["bound"], false, "no user: no bind: {kiosk}");
    let a = device(ctl, "phone-a");
    assert_eq!(
        (a["userId"].as_str(), a["tags"].as_str()),
        (Some("alice"), Some("vip"))
    );
    assert_eq!(a["counters"]["handshakes"], 1, "{a}");
    // A template id is no device of a listed fleet.
    assert_eq!(api(ctl, "GET", "/devices/device-0", None).0, 404);

    // Pushes reach the sink under the real ids.
    assert_eq!(push_to(&serve, "alice"), 1);
    harness::wait_until("alice's push in the sink", || {
        std::fs::read_to_string(&sink).is_ok_and(|t| {
            t.lines().any(|l| {
                let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
                v["deviceId"] == "phone-a" && v["userId"] == "alice"
            })
        })
    });
    harness::wait_until("phone-a counted the push", || {
        device(ctl, "phone-a")["counters"]["pushes_received"] == 1
    });
    // The ticket keys hold the real ids.
    if let Some(r) = &redis {
        harness::wait_until("tickets under the real ids", || {
            let keys = r.resp().keys("mp:fcd:*");
            ["phone-a", "phone-b", "kiosk"]
                .iter()
                .all(|id| keys.contains(&format!("mp:fcd:{id}")))
        });
    }

    // Add a device at run time.
    let (status, added) = api(
        ctl,
        "POST",
        "/devices",
        Some(r#"{"deviceId":"added-1","userId":"dave","tags":"t"}"#),
    );
    assert_eq!(status, 201, "{added}");
    wait_bound(ctl, "added-1", true);
    assert_eq!(push_to(&serve, "dave"), 1);
    let (status, v) = api(ctl, "POST", "/devices", Some(r#"{"deviceId":"added-1"}"#));
    assert_eq!(status, 409, "a second device with the id: {v}");

    // Bind and unbind.
    let (status, v) = api(
        ctl,
        "POST",
        "/devices/kiosk/bind",
        Some(r#"{"userId":"erin","tags":"lobby"}"#),
    );
    assert_eq!(status, 200, "{v}");
    wait_bound(ctl, "kiosk", true);
    assert_eq!(push_to(&serve, "erin"), 1);
    assert_eq!(device(ctl, "kiosk")["userId"], "erin");
    let (status, v) = api(ctl, "POST", "/devices/kiosk/unbind", None);
    assert_eq!(status, 200, "{v}");
    harness::wait_until("erin unbound at the server", || {
        push_to(&serve, "erin") == 0
    });
    assert_eq!(device(ctl, "kiosk")["bound"], false);

    // Kick: the device reconnects.
    let (status, v) = api(ctl, "POST", "/devices/phone-b/kick", None);
    assert_eq!(status, 200, "{v}");
    harness::wait_until("phone-b reconnected", || {
        let v = device(ctl, "phone-b");
        v["counters"]["connected"] == 2 && v["phase"] == "online" && v["bound"] == true
    });

    // Close: down until opened.
    let (status, v) = api(ctl, "POST", "/devices/phone-b/close", None);
    assert_eq!((status, v["phase"].as_str()), (200, Some("stopped")), "{v}");
    harness::wait_until("bob gone from the server", || push_to(&serve, "bob") == 0);
    assert_eq!(api(ctl, "POST", "/devices/phone-b/kick", None).0, 409);
    let (status, v) = api(ctl, "POST", "/devices/phone-b/open", None);
    assert_eq!(status, 200, "{v}");
    wait_bound(ctl, "phone-b", true);
    assert_eq!(push_to(&serve, "bob"), 1);

    // Remove: closed, gone, its id free again.
    let (status, v) = api(ctl, "DELETE", "/devices/added-1", None);
    assert_eq!((status, v["phase"].as_str()), (200, Some("removed")), "{v}");
    assert_eq!(api(ctl, "GET", "/devices/added-1", None).0, 404);
    harness::wait_until("dave gone from the server", || push_to(&serve, "dave") == 0);
    let (status, v) = api(
        ctl,
        "POST",
        "/devices",
        Some(r#"{"deviceId":"added-1","userId":"fay"}"#),
    );
    assert_eq!(status, 201, "the id is free again: {v}");
    wait_bound(ctl, "added-1", true);
    assert_eq!(push_to(&serve, "fay"), 1);
    // A listed device is removed the same way.
    assert_eq!(api(ctl, "DELETE", "/devices/phone-a", None).0, 200);
    harness::wait_until("alice gone", || push_to(&serve, "alice") == 0);

    // Bad requests say why.
    for (method, path, body, want) in [
        ("POST", "/devices", Some("{oops"), 400),
        ("POST", "/devices", Some(r#"{"deviceId":""}"#), 400),
        (
            "POST",
            "/devices",
            Some(r#"{"deviceId":"x","colour":"red"}"#),
            400,
        ),
        ("POST", "/devices/kiosk/bind", Some(r#"{"tags":"t"}"#), 400),
        ("POST", "/devices/kiosk/bind", Some(r#"{"userId":""}"#), 400),
        ("GET", "/devices/nobody", None, 404),
        ("POST", "/devices/nobody/kick", None, 404),
        ("POST", "/devices/kiosk/open", None, 409),
        ("GET", "/nothing-here", None, 404),
    ] {
        let (status, v) = api(ctl, method, path, body);
        assert_eq!(status, want, "{method} {path} {body:?}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }

    assert_eq!(run.terminate(), Some(0), "stderr {:?}", run.err_lines);
    let _ = std::fs::remove_file(&list);
    let _ = std::fs::remove_file(&sink);
}

#[test]
fn the_token_rules() {
    let name = "the_token_rules";
    if !common::io_uring_or_skip(name) {
        return;
    }
    // Off loopback without a token: refused before anything binds.
    let out = Command::new(serve_harness::exe())
        .args(["run", "--devices", "1", "--control", "0.0.0.0:0"])
        .env_remove("MPUSH_CONTROL_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--control-token"), "{err}");
    assert!(err.contains("not a loopback address"), "{err}");

    // With a token (from the environment), on a template fleet: 401 unless it is given.
    let serve = Serve::start(&[]);
    let server = serve.addr.to_string();
    let mut run = Proc::spawn(&[
        "run",
        "--server",
        &server,
        "--devices",
        "2",
        "--rate",
        "0",
        "--no-pin",
        "--control",
        "127.0.0.1:0",
        "--control-token",
        "s3cret-token",
        "--duration",
        "300s",
    ]);
    let ctl = control_addr(&mut run);
    for token in [
        None,
        Some("wrong"),
        Some("s3cret-toke"),
        Some("s3cret-tokenX"),
    ] {
        let (status, _) = call(ctl, "GET", "/devices/device-1", None, token);
        assert_eq!(status, 401, "{token:?}");
    }
    let (status, _) = call(ctl, "POST", "/devices", Some(r#"{"deviceId":"x"}"#), None);
    assert_eq!(status, 401, "no add without the token");
    harness::wait_until("device-1 online", || {
        let (status, v) = call(ctl, "GET", "/devices/device-1", None, Some("s3cret-token"));
        status == 200 && v["phase"] == "online"
    });
    let (status, v) = call(ctl, "GET", "/devices/device-2", None, Some("s3cret-token"));
    assert_eq!(status, 404, "outside the fleet: {v}");
    assert_eq!(run.terminate(), Some(0));
}

#[test]
fn a_broken_devices_file_is_a_usage_error_naming_the_line() {
    let list = temp("broken.csv");
    std::fs::write(&list, "deviceId,userId\nd1,u1\n\"d2,u2\n").unwrap();
    let out = Command::new(serve_harness::exe())
        .args(["run", "--devices-file", list.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
    let _ = std::fs::remove_file(&list);
}

#[test]
fn the_same_commands_as_json_lines_on_the_unix_sink_socket() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;
    let name = "the_same_commands_as_json_lines_on_the_unix_sink_socket";
    if !common::io_uring_or_skip(name) {
        return;
    }
    let path = temp("consumer.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let serve = Serve::start(&[]);
    let server = serve.addr.to_string();
    let sink = format!("unix:{}", path.display());
    let mut run = Proc::spawn(&[
        "run",
        "--server",
        &server,
        "--devices",
        "1",
        "--rate",
        "0",
        "--no-pin",
        "--sink",
        &sink,
        "--duration",
        "300s",
    ]);
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(harness::PATIENCE)).unwrap();
    let mut lines = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    // Sends one request line; the answer line with its id (record lines are acked on the way).
    let mut ask = |line: &str, id: &Value| -> Value {
        writeln!(out, "{line}").unwrap();
        loop {
            let mut l = String::new();
            assert!(
                lines.read_line(&mut l).unwrap() > 0,
                "the fleet closed the socket"
            );
            let v: Value = serde_json::from_str(&l).unwrap();
            if let Some(seq) = v.get("seq") {
                writeln!(out, "{seq}").unwrap();
                continue;
            }
            if &v["id"] == id {
                return v;
            }
        }
    };
    harness::wait_until("device-0 bound", || {
        let v = ask(r#"{"id":1,"cmd":"state","deviceId":"device-0"}"#, &json!(1));
        v["status"] == 200 && v["device"]["bound"] == true
    });
    let v = ask(
        r#"{"id":"a","cmd":"add","device":{"deviceId":"u-1","userId":"ula"}}"#,
        &json!("a"),
    );
    assert_eq!(v["status"], 201, "{v}");
    assert_eq!(v["device"]["deviceId"], "u-1");
    harness::wait_until("u-1 bound", || {
        let v = ask(r#"{"id":2,"cmd":"state","deviceId":"u-1"}"#, &json!(2));
        v["device"]["bound"] == true
    });
    assert_eq!(push_to(&serve, "ula"), 1);
    let v = ask(
        r#"{"id":3,"cmd":"push","deviceId":"u-1","push":{"content":"up","ack":"auto"}}"#,
        &json!(3),
    );
    assert_eq!(
        (v["status"].as_u64(), v["result"]["outcome"].as_str()),
        (Some(200), Some("acked")),
        "{v}"
    );
    let v = ask(r#"{"id":4,"cmd":"remove","deviceId":"u-1"}"#, &json!(4));
    assert_eq!(
        (v["status"].as_u64(), v["device"]["phase"].as_str()),
        (Some(200), Some("removed")),
        "{v}"
    );
    for (line, id, want) in [
        (r#"{"id":5,"cmd":"fly","deviceId":"u-1"}"#, json!(5), 400),
        (r#"{"id":6,"cmd":"state","deviceId":"u-1"}"#, json!(6), 404),
        (
            r#"{"id":7,"cmd":"bind","deviceId":"device-0"}"#,
            json!(7),
            400,
        ),
        (r#"{"id":8,"cmd":"add"}"#, json!(8), 400),
    ] {
        let v = ask(line, &id);
        assert_eq!(v["status"], want, "{line}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    assert_eq!(run.terminate(), Some(0), "stderr {:?}", run.err_lines);
    let _ = std::fs::remove_file(&path);
}
