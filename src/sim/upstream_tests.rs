//! Device-originated traffic (PROTOCOL.md 9) over the in-memory pair, in simulated time:
//! every outcome of a device PUSH and of an HTTP_PROXY request, a server that lies, and the
//! paced upstream load.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::device::{
    DeviceConfig, HttpCall, PushAck, UpstreamOutcome, UpstreamRequest, MAX_IN_FLIGHT,
};
use crate::proto::message::{ErrorCode, ErrorReply, HttpMethod, HttpResponse};
use crate::proto::pipeline::Encoder;
use crate::proto::{Cmd, MsgId};
use crate::server::http_proxy::HttpProxyConfig;
use crate::shard::core::{UpstreamDone, UpstreamLoad};
use crate::stats::{Counters, Latency};

const LIMIT_MS: u64 = 600_000;

fn fleet(devices: u32, upstream: UpstreamLoad) -> CoreConfig {
    CoreConfig {
        first_device: 100,
        device: Arc::new(DeviceConfig::default()),
        seed: 5,
        upstream,
        ..scenario(devices)
    }
}

/// A shard of `devices` online against a server that proxies HTTP (`proxy`) or not.
fn online(devices: u32, proxy: bool) -> Sim {
    let server = SessionConfig {
        http_proxy: proxy.then(|| Arc::new(HttpProxyConfig::default())),
        ..SessionConfig::default()
    };
    let cfg = SimConfig {
        latency_ms: 5,
        server: Arc::new(server),
        ..SimConfig::default()
    };
    let mut sim = Sim::new(fleet(devices, UpstreamLoad::default()), cfg);
    let n = i64::from(devices);
    assert!(
        sim.run_until(LIMIT_MS, |s| s.core.stats().counters.online == n),
        "online: {:?}",
        counters(&sim)
    );
    sim
}

fn counters(sim: &Sim) -> &Counters {
    &sim.core.stats().counters
}

fn push(ack: PushAck) -> UpstreamRequest {
    UpstreamRequest::Push {
        ack,
        content: Bytes::from_static(b"from the device"),
    }
}

fn http(body: &'static [u8]) -> UpstreamRequest {
    let call = HttpCall::new(
        HttpMethod::POST,
        "http://backend.test/api",
        [("x-a", "1")],
        Bytes::from_static(body),
        Some(3_000),
    )
    .expect("a valid request");
    UpstreamRequest::Http(Arc::new(call))
}

/// Runs until the request tagged `tag` finished; returns it and the simulated time then.
fn outcome(sim: &mut Sim, tag: u64) -> (UpstreamDone, u64) {
    let start = sim.now_ms();
    loop {
        while let Some(d) = sim.core.poll_upstream() {
            if d.tag == tag {
                return (d, sim.now_ms());
            }
        }
        // With no sink, what the simulated driver leaves in the core is upstream output.
        let more = sim.run_until(LIMIT_MS, |s| s.core.has_output());
        assert!(
            more && sim.now_ms() - start < LIMIT_MS,
            "no outcome for {tag}"
        );
    }
}

#[test]
fn an_auto_ack_push_gets_the_servers_ack() {
    let mut sim = online(1, false);
    let t0 = sim.now_ms();
    sim.start_upstream(100, 1, push(PushAck::Auto), 0);
    let (done, at) = outcome(&mut sim, 1);
    assert_eq!((done.outcome, done.device), (UpstreamOutcome::Acked, 100));
    // One round trip of 5 ms each way, nothing more.
    assert_eq!(at - t0, 10);
    assert_eq!(done.latency_us, 10_000);
    let c = counters(&sim);
    assert_eq!((c.device_pushes_sent, c.device_push_acked), (1, 1));
    let h = sim.core.stats().latencies.get(Latency::DevicePushAck);
    assert_eq!(h.len(), 1);
}

#[test]
fn a_biz_ack_push_times_out_as_the_stock_server_never_acks_it() {
    let mut sim = online(1, false);
    let t0 = sim.now_ms();
    sim.start_upstream(100, 2, push(PushAck::Biz), 3_000);
    let (done, at) = outcome(&mut sim, 2);
    assert_eq!(done.outcome, UpstreamOutcome::Timeout);
    assert_eq!(at - t0, 3_000);
    let c = counters(&sim);
    assert_eq!((c.device_push_timeouts, c.device_push_acked), (1, 0));
    assert_eq!(c.online, 1, "the session goes on");
}

#[test]
fn a_push_without_an_ack_flag_is_done_once_written() {
    let mut sim = online(1, false);
    sim.start_upstream(100, 3, push(PushAck::None), 0);
    let (done, _) = outcome(&mut sim, 3);
    assert_eq!((done.outcome, done.latency_us), (UpstreamOutcome::Sent, 0));
}

#[test]
fn an_http_request_gets_the_backends_response_sealed() {
    let mut sim = online(1, true);
    sim.answer_http(SimHttp::Status(200, false));
    sim.start_upstream(100, 4, http(b"ping"), 0);
    let (done, _) = outcome(&mut sim, 4);
    let UpstreamOutcome::Response(r) = done.outcome else {
        panic!("{:?}", done.outcome)
    };
    assert_eq!((r.status, r.raw, &r.body[..]), (200, false, &b"ping"[..]));
    assert_eq!(r.headers, "x-sim:1\n");
    let c = counters(&sim);
    assert_eq!(
        (c.http_requests_sent, c.http_responses, c.http_responses_2xx),
        (1, 1, 1)
    );
    assert_eq!(sim.core.stats().latencies.get(Latency::HttpProxy).len(), 1);
}

#[test]
fn each_raw_failure_of_the_proxy_is_the_requests_answer() {
    let mut sim = online(1, true);
    for (tag, status) in [(10, 504), (11, 503), (12, 408), (13, 502)] {
        sim.answer_http(SimHttp::Status(status, true));
        sim.start_upstream(100, tag, http(b""), 0);
        let (done, _) = outcome(&mut sim, tag);
        let UpstreamOutcome::Response(r) = done.outcome else {
            panic!("{status}: {:?}", done.outcome)
        };
        assert_eq!((r.status, r.raw), (status, true));
    }
    let c = counters(&sim);
    assert_eq!((c.http_raw_failures, c.http_responses_2xx), (4, 0));
    assert_eq!(c.online, 1);
}

#[test]
fn a_silent_proxy_means_a_timeout_and_a_disabled_one_an_error_and_a_close() {
    let mut sim = online(1, true);
    sim.answer_http(SimHttp::Silent);
    sim.start_upstream(100, 20, http(b""), 700);
    assert_eq!(outcome(&mut sim, 20).0.outcome, UpstreamOutcome::Timeout);
    assert_eq!(counters(&sim).http_timeouts, 1);

    let mut sim = online(1, false);
    sim.start_upstream(100, 21, http(b""), 0);
    let (done, _) = outcome(&mut sim, 21);
    assert_eq!(
        done.outcome,
        UpstreamOutcome::ServerError {
            code: ErrorCode::UNSUPPORTED_CMD.0,
            reason: "unsupported command".into()
        }
    );
    assert_eq!(counters(&sim).http_failed, 1);
    // The server closes after ERROR 101; the device reconnects.
    assert!(sim.run_until(LIMIT_MS, |s| s.server().server_closes == 1));
}

#[test]
fn requests_are_refused_off_line_beyond_the_limit_and_outside_the_shard() {
    let mut sim = online(1, true);
    sim.answer_http(SimHttp::Silent);
    for tag in 0..MAX_IN_FLIGHT as u64 {
        sim.start_upstream(100, tag, http(b""), 60_000);
    }
    sim.start_upstream(100, 99, http(b""), 0);
    assert_eq!(outcome(&mut sim, 99).0.outcome, UpstreamOutcome::Busy);
    sim.start_upstream(7, 98, http(b""), 0);
    assert_eq!(
        outcome(&mut sim, 98).0.outcome,
        UpstreamOutcome::NoSuchDevice
    );
    // The server drops the connection: the eight waiting are lost, in start order.
    sim.close_all();
    for tag in 0..MAX_IN_FLIGHT as u64 {
        assert_eq!(
            outcome(&mut sim, tag).0.outcome,
            UpstreamOutcome::ConnectionLost
        );
    }
    assert_eq!(counters(&sim).http_failed, MAX_IN_FLIGHT as u64);
    // Down now (reconnecting): refused at once.
    sim.start_upstream(100, 97, push(PushAck::Auto), 0);
    assert_eq!(outcome(&mut sim, 97).0.outcome, UpstreamOutcome::NotOnline);
    assert_eq!(counters(&sim).upstream_refused, 2);
}

fn raw_frame<M: crate::proto::Message>(msg: &M, cmd_id: i32) -> BytesMut {
    let mut wire = BytesMut::new();
    Encoder::default().write(&mut wire, msg, MsgId(cmd_id), Flags::NONE, None);
    wire
}

#[test]
fn a_lying_server_is_counted_and_the_session_goes_on() {
    let mut sim = online(1, true);
    sim.answer_http(SimHttp::Silent);
    // After the handshake (1) and the bind (2), the request is sessionId 3.
    sim.start_upstream(100, 30, http(b""), 60_000);
    let conn = sim.server_conns()[0];
    // An ACK, a response and an ERROR for sessionIds nothing waits for.
    sim.inject(conn, &raw_frame(&crate::proto::message::Ack, 77));
    let resp = HttpResponse {
        status_code: 200,
        reason_phrase: "OK".into(),
        headers: String::new(),
        body: Bytes::new(),
    };
    sim.inject(conn, &raw_frame(&resp, 78));
    let err = ErrorReply {
        cmd: Cmd::Push as u8,
        code: ErrorCode(100),
        reason: "no".into(),
        data: String::new(),
    };
    sim.inject(conn, &raw_frame(&err, 79));
    // An ACK for the HTTP request: the wrong kind of answer.
    sim.inject(conn, &raw_frame(&crate::proto::message::Ack, 3));
    let (done, _) = outcome(&mut sim, 30);
    assert_eq!(done.outcome, UpstreamOutcome::BadAnswer);
    // A response body that does not decode, for a request that waits.
    sim.start_upstream(100, 31, http(b""), 60_000);
    let mut garbage = BytesMut::new();
    crate::proto::encode_frame(&mut garbage, Cmd::HttpProxy, Flags::NONE, MsgId(4), &[1, 2]);
    sim.inject(conn, &garbage);
    assert_eq!(outcome(&mut sim, 31).0.outcome, UpstreamOutcome::BadAnswer);
    // A COMPRESS flag on a body that does not inflate.
    sim.start_upstream(100, 32, http(b""), 60_000);
    let mut garbage = BytesMut::new();
    crate::proto::encode_frame(
        &mut garbage,
        Cmd::HttpProxy,
        Flags::COMPRESS,
        MsgId(5),
        b"zz",
    );
    sim.inject(conn, &garbage);
    assert_eq!(outcome(&mut sim, 32).0.outcome, UpstreamOutcome::BadAnswer);
    let c = counters(&sim);
    assert_eq!((c.upstream_unmatched, c.upstream_bad_answers), (3, 3));
    assert_eq!((c.online, c.decode_errors, c.reconnects), (1, 0, 0));
}

#[test]
fn an_empty_uri_answers_400_and_the_second_reply_is_unmatched() {
    let mut sim = online(1, true);
    let call = HttpCall::new(HttpMethod::GET, "", [], Bytes::new(), None).expect("request");
    sim.start_upstream(100, 40, UpstreamRequest::Http(Arc::new(call)), 0);
    let UpstreamOutcome::Response(r) = outcome(&mut sim, 40).0.outcome else {
        panic!("no response")
    };
    assert_eq!((r.status, r.raw), (400, true));
    assert!(sim.run_until(LIMIT_MS, |s| counters(s).upstream_unmatched == 1));
}

#[test]
fn the_paced_load_spreads_over_online_devices_and_every_request_is_accounted_for() {
    let load = UpstreamLoad {
        push_rate: 200.0,
        push_ack: PushAck::Auto,
        push_content: Bytes::from_static(&[7; 64]),
        http_rate: 100.0,
        http: match http(b"x") {
            UpstreamRequest::Http(call) => Some(call),
            UpstreamRequest::Push { .. } => None,
        },
        timeout_ms: 5_000,
    };
    let server = SessionConfig {
        http_proxy: Some(Arc::new(HttpProxyConfig::default())),
        ..SessionConfig::default()
    };
    let cfg = SimConfig {
        latency_ms: 2,
        server: Arc::new(server),
        ..SimConfig::default()
    };
    let mut sim = Sim::new(fleet(20, load), cfg);
    sim.answer_http(SimHttp::Status(204, false));
    assert!(sim.run_until(LIMIT_MS, |s| counters(s).online == 20));
    let (pushes0, http0) = (
        counters(&sim).device_pushes_sent,
        counters(&sim).http_requests_sent,
    );
    sim.run_for(10_000);
    let c = counters(&sim).clone();
    // 10 s at 200/s and 100/s, to within one request each.
    assert!(
        (c.device_pushes_sent - pushes0).abs_diff(2_000) <= 1,
        "{c:?}"
    );
    assert!((c.http_requests_sent - http0).abs_diff(1_000) <= 1, "{c:?}");
    assert!(sim.stop(LIMIT_MS));
    let c = counters(&sim);
    assert_eq!(
        c.device_pushes_sent,
        c.device_push_acked + c.device_push_failed
    );
    assert_eq!(c.http_requests_sent, c.http_responses + c.http_failed);
    assert_eq!(
        (
            c.device_push_timeouts,
            c.http_timeouts,
            c.upstream_no_device
        ),
        (0, 0, 0)
    );
    let l = &sim.core.stats().latencies;
    assert_eq!(l.get(Latency::DevicePushAck).len(), c.device_push_acked);
    // The core's own requests are never output.
    assert!(sim.core.poll_upstream().is_none());
}
