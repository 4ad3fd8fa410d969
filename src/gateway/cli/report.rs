//! What `mpush-fleet push` reports: the outcomes by name, the JSON report, the status line,
//! and its own `--fail-on` thresholds judged against a [`Report`].

use anyhow::Context as _;

use super::args::parse_duration;
use crate::gateway::driver::Report;
use crate::gateway::tracker::Outcome;
use crate::proto::message::ErrorCode;
use crate::stats::Summary;

/// The outcome's name in reports and `--fail-on`.
pub fn outcome_name(o: Outcome) -> String {
    match o {
        Outcome::Ok => "ok".into(),
        Outcome::NoReply => "no_reply".into(),
        Outcome::NoRoute => "no_route".into(),
        Outcome::Error(code) => format!("error.{code}.{}", ErrorCode(code).name()),
    }
}

/// The report as JSON.
pub fn report_json(r: &Report) -> serde_json::Value {
    let outcomes: serde_json::Map<String, serde_json::Value> = r
        .outcomes
        .iter()
        .map(|(o, n)| (outcome_name(*o), (*n).into()))
        .collect();
    serde_json::json!({
        "sent": r.sent,
        "outcomes": outcomes,
        "reply_latency": Summary::of(&r.reply_latency_us),
        "unmatched_replies": r.unmatched,
        "bad_frames": r.bad_frames,
        "connects": r.connects,
        "connect_failures": r.connect_failures,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "gateways": r
            .gateways
            .iter()
            .map(|(a, f)| (a.to_string(), serde_json::json!(f)))
            .collect::<serde_json::Map<_, _>>(),
    })
}

pub(super) fn status_line(r: &Report) -> String {
    let errors: u64 = r
        .outcomes
        .iter()
        .filter(|(o, _)| matches!(o, Outcome::Error(_)))
        .map(|(_, n)| n)
        .sum();
    let s = Summary::of(&r.reply_latency_us);
    format!(
        "{:>6.1}s sent {} ok {} errors {} no_reply {} in_flight {} reply p50 {:.2}ms p99 {:.2}ms{}",
        r.elapsed.as_secs_f64(),
        r.sent,
        r.count(Outcome::Ok),
        errors,
        r.count(Outcome::NoReply),
        r.sent.saturating_sub(r.done()),
        s.p50_ms,
        s.p99_ms,
        crate::gateway::gateways::status(&r.gateways)
    )
}

/// The value a `--fail-on` key names; `None` for an unknown key.
fn metric(r: &Report, key: &str) -> Option<f64> {
    let s = Summary::of(&r.reply_latency_us);
    Some(match key {
        "sent" => r.sent as f64,
        "ok" => r.count(Outcome::Ok) as f64,
        "no_reply" => r.count(Outcome::NoReply) as f64,
        "no_route" => r.count(Outcome::NoRoute) as f64,
        "unmatched" => r.unmatched as f64,
        "connect_failures" => r.connect_failures as f64,
        "errors" => r
            .outcomes
            .iter()
            .filter(|(o, _)| matches!(o, Outcome::Error(_)))
            .map(|(_, n)| *n as f64)
            .sum(),
        "reply.p50" => s.p50_ms,
        "reply.p90" => s.p90_ms,
        "reply.p99" => s.p99_ms,
        "reply.p999" => s.p999_ms,
        "reply.max" => s.max_ms,
        k => {
            let code: u8 = k.strip_prefix("errors.")?.parse().ok()?;
            r.count(Outcome::Error(code)) as f64
        }
    })
}

/// Checks one `--fail-on` threshold; `Ok(Some(text))` when it fails the run.
///
/// # Errors
///
/// A malformed threshold or an unknown key.
pub fn check(r: &Report, threshold: &str) -> anyhow::Result<Option<String>> {
    let t = threshold.trim();
    let at = t
        .find(['<', '>'])
        .with_context(|| format!("--fail-on {t:?}: no < or >"))?;
    let (key, rest) = t.split_at(at);
    let (op, limit) = match rest.strip_prefix(">=").or_else(|| rest.strip_prefix("<=")) {
        Some(l) => (&rest[..2], l),
        None => (&rest[..1], &rest[1..]),
    };
    let key = key.trim();
    let mut actual = metric(r, key).with_context(|| format!("--fail-on: unknown key {key:?}"))?;
    let limit = limit.trim();
    let limit: f64 = if let Some(p) = limit.strip_suffix('%') {
        actual = if r.sent == 0 {
            0.0
        } else {
            100.0 * actual / r.sent as f64
        };
        p.parse()?
    } else if key.starts_with("reply.") {
        parse_duration(limit)
            .map_err(anyhow::Error::msg)?
            .as_secs_f64()
            * 1000.0
    } else {
        limit
            .parse()
            .with_context(|| format!("--fail-on {t:?}: bad number"))?
    };
    let fails = match op {
        "<" => actual < limit,
        "<=" => actual <= limit,
        ">" => actual > limit,
        _ => actual >= limit,
    };
    Ok(fails.then(|| format!("{t} (actual {actual})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut r = Report::empty();
        r.sent = 10;
        r.outcomes.insert(Outcome::Ok, 8);
        r.outcomes.insert(Outcome::Error(1), 1);
        r.outcomes.insert(Outcome::NoReply, 1);
        r.reply_latency_us.record(40_000).unwrap();
        r
    }

    #[test]
    fn fail_on_thresholds() {
        let r = report();
        for (t, fails) in [
            ("no_reply>0", true),
            ("errors.1>0", true),
            ("errors.2>0", false),
            ("errors>=1", true),
            ("errors>=2", false),
            ("ok<90%", true),
            ("ok<80%", false),
            ("reply.p99>50ms", false),
            ("reply.max>0.03s", true),
        ] {
            assert_eq!(check(&r, t).unwrap().is_some(), fails, "{t}");
        }
        for bad in ["nothing", "ok=3", "bogus>1", "ok>x", "reply.p99>5parsecs"] {
            assert!(check(&r, bad).is_err(), "{bad}");
        }
    }
}
