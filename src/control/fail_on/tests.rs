//! `--fail-on`: the forms parse (and bad ones are errors, not panics), and a threshold is
//! judged against the figures it names.

use super::*;
use crate::stats::ShardStats;

fn t(s: &str) -> Threshold {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn push_figures_have_short_names() {
    assert_eq!(t("push.lost>0").metric, Metric::Counter("push_lost".into()));
    assert_eq!(
        t("push.e2e.p99>200ms").metric,
        Metric::Latency(Latency::PushE2e, Stat::P99)
    );
    assert_eq!(
        t("push.errors.2>0").metric,
        Metric::CodeOf("push_gateway_errors".into(), 2)
    );
    let mut s = ShardStats::default();
    s.counters.push_lost = 1;
    s.counters.push_gateway_errors.insert(2, 3);
    let v = judge(
        &[
            t("push.lost>0"),
            t("push.errors.2>=3"),
            t("push.errors.1>0"),
        ],
        1,
        &s,
    );
    assert_eq!(
        v.iter().map(|v| v.failed).collect::<Vec<_>>(),
        [true, true, false]
    );
    assert!("push.nothing>0".parse::<Threshold>().is_err());
    assert!("push.errors.x>0".parse::<Threshold>().is_err());
}

#[test]
fn good_forms_parse() {
    let x = t("online<99.9%");
    assert_eq!(
        (x.metric, x.op, x.limit),
        (Metric::Percent("online".into()), Op::Lt, 99.9)
    );
    assert_eq!(
        t("ever_online<100%").metric,
        Metric::Percent("ever_online".into())
    );
    let x = t("handshake.p99>500ms");
    assert_eq!(
        (x.metric, x.op, x.limit),
        (
            Metric::Latency(Latency::Handshake, Stat::P99),
            Op::Gt,
            500.0
        )
    );
    assert_eq!(t("connect.p50>2s").limit, 2000.0);
    assert_eq!(t("bind.max>=250us").limit, 0.25);
    assert_eq!(t("heartbeat_rtt.p999 > 1 s").op, Op::Gt);
    let x = t("errors>0");
    assert_eq!(
        (x.metric, x.op, x.limit),
        (Metric::Counter("errors".into()), Op::Gt, 0.0)
    );
    assert_eq!(
        t("reconnects>10").metric,
        Metric::Counter("reconnects".into())
    );
    assert_eq!(t("read_timeouts>=1").op, Op::Ge);
    assert_eq!(t("errors.103>0").metric, Metric::ErrorCode(103));
    assert_eq!(t("bound<=5").op, Op::Le);
    assert_eq!(t(" online < 99.9% ").to_string(), "online<99.9%");
    let list = parse_list("online<99.9%,handshake.p99>500ms").unwrap();
    assert_eq!(list.len(), 2);
}

#[test]
fn bad_forms_are_errors_not_panics() {
    for bad in [
        "",
        "online",
        "<5",
        "online<",
        "online<%",
        "online<abc",
        "online<5x",
        "online=5",
        "nope>1",
        "handshake.p98>1ms",
        "handshake.p99>5",
        "handshake.p99>5%",
        "warp.p99>1ms",
        "errors.x>0",
        "errors.999>0",
        "errors.103>1%",
        "online<nan%",
        "online<inf",
        "online<1.2.3",
        ">",
        "<",
        ">=",
        "online<>5",
        "a.b.c>1ms",
        "é<1",
        "online<-1",
    ] {
        assert!(bad.parse::<Threshold>().is_err(), "{bad:?} parsed");
    }
    assert!(parse_list("online<99%,").is_err());
    for bad in [
        "storm.p99>1ms",
        "storm.connect.p99>1ms",
        "storm.handshake.p99>1",
        "storm.timeouts>1%",
        "storm.nope>0",
    ] {
        assert!(bad.parse::<Threshold>().is_err(), "{bad:?} parsed");
    }
    let e = "handshake.p99>5".parse::<Threshold>().unwrap_err();
    assert!(e.to_string().contains("unit"), "{e}");
}

#[test]
fn evaluation_reports_only_violations() {
    let mut s = ShardStats::default();
    s.counters.online = 998;
    s.counters.ever_online = 1000;
    s.counters.reconnects = 11;
    s.counters.error(103);
    s.counters.error(103);
    s.counters.error(104);
    for ms in [10, 20, 30, 600] {
        s.latencies.record(Latency::Handshake, ms * 1000);
    }
    let list = parse_list(
        "online<99.9%,ever_online<100%,errors>0,errors.103>=2,errors.104>1,reconnects>10,\
         read_timeouts>=1,handshake.max>500ms,handshake.p50>100ms,connect.p99>1ms",
    )
    .unwrap();
    let v = evaluate(&list, 1000, &s);
    assert_eq!(v.len(), 5, "{v:#?}");
    assert!(
        v[0].starts_with("--fail-on online<99.9%: online was 99.800%"),
        "{}",
        v[0]
    );
    assert_eq!(v[1], "--fail-on errors>0: errors was 3");
    assert!(v[2].starts_with("--fail-on errors.103>=2"), "{}", v[2]);
    assert_eq!(v[3], "--fail-on reconnects>10: reconnects was 11");
    assert!(
        v[4].starts_with("--fail-on handshake.max>500ms: was 600."),
        "{}",
        v[4]
    );
    assert!(evaluate(&list[1..2], 0, &ShardStats::default()).is_empty());
}

#[test]
fn a_threshold_names_a_phase_and_judges_its_figures() {
    use crate::stages::PhaseStats;
    let x = t("storm.timeouts>0");
    assert_eq!(
        x.metric,
        Metric::Phase("storm".into(), PhaseMetric::Count("timeouts".into()))
    );
    assert_eq!(t("churn.fast_connect.p99>1s").limit, 1000.0);
    assert_eq!(
        t("ramp.online<100%").metric,
        Metric::Phase("ramp".into(), PhaseMetric::Percent)
    );
    let list = parse_list("storm.timeouts>0,storm.online<100%,hold.errors>0").unwrap();
    assert!(check_phases(&list, &["storm", "hold"]).is_ok());
    let e = check_phases(&list, &["storm"]).unwrap_err();
    assert!(e.contains("\"hold\"") && e.contains("hold.errors>0"), "{e}");
    let mut s = ShardStats::default();
    let mut storm = PhaseStats::new("storm", "storm");
    storm.ran = true;
    storm.counts.timeouts = 2;
    storm.online_at_end = 9;
    s.stages.phases.push(storm);
    let v = evaluate(&list, 10, &s);
    assert_eq!(
        v,
        [
            "--fail-on storm.timeouts>0: storm.timeouts was 2",
            "--fail-on storm.online<100%: storm.online was 90.000%"
        ]
    );
    let verdicts = judge(&list, 10, &s);
    assert_eq!(verdicts[2].actual, "phase hold did not run");
}
