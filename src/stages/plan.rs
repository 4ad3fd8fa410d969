//! The stages spec: its compact flag form, its TOML `[[stage]]` form, and validation.
//!
//! ```text
//! STAGES := STAGE ("," STAGE)*
//! STAGE  := [NAME "="] KIND
//! KIND   := "ramp" [":" N] ["@" RATE]   start devices up to N (all without N) at RATE/s
//!                                       (a number, or "auto": the capacity search);
//!                                       below the devices running, stop down to N at RATE/s
//!         | "hold:" DURATION            nothing changes for DURATION
//!         | "churn:" P "%/s:" DURATION  close P% of the running devices per second, each
//!                                       reconnecting (by fast connect while its ticket holds)
//!         | "storm" [":" DURATION]      close every session at once; ends when all are back
//!                                       (or after DURATION)
//!         | "ramp-down:" DURATION       close every session, evenly over DURATION
//! ```
//!
//! A phase is named after its kind (`ramp`, `hold`, ...), repeated kinds get `2`, `3`, ...
//! (`hold`, `hold2`), or `NAME=` names it; `--fail-on` and the report use these names.

use std::time::Duration;

use crate::stats::{Counters, Latency};

/// New sessions per second of a ramp.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RampRate {
    /// The run's `--rate` (a ramp without `@`).
    Default,
    /// This many per second across the fleet (0: as fast as the shards can).
    PerSec(f64),
    /// The capacity search.
    Auto,
}

/// What a phase does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StageKind {
    /// Run `to` devices, starting or stopping them at `rate`.
    Ramp {
        /// Devices to run (`None`: all).
        to: Option<u32>,
        /// Starts (or stops) per second.
        rate: RampRate,
    },
    /// Nothing changes for a while.
    Hold {
        /// How long, ms.
        ms: u64,
    },
    /// Some of the running devices closed and reconnected every second.
    Churn {
        /// Percent of the running devices closed per second.
        pct_per_sec: f64,
        /// How long, ms.
        ms: u64,
    },
    /// Every session closed at once; ends when all are back.
    Storm {
        /// Longest it lasts, ms.
        limit_ms: Option<u64>,
    },
    /// Every session closed, evenly over a duration.
    RampDown {
        /// How long, ms.
        ms: u64,
    },
}

/// One phase of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    /// Its name in the report, the status line and `--fail-on`.
    pub name: String,
    /// What it does.
    pub kind: StageKind,
    /// The spec it was parsed from (for the report).
    pub spec: String,
}

/// A broken stages spec: the message names the bad part.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--stages: {part:?}: {why}")]
pub struct StagesError {
    /// The part that does not parse.
    pub part: String,
    /// What is wrong with it.
    pub why: String,
}

fn err(part: &str, why: impl Into<String>) -> StagesError {
    StagesError {
        part: part.to_string(),
        why: why.into(),
    }
}

fn duration_ms(part: &str, s: &str) -> Result<u64, StagesError> {
    let d: Duration = crate::control::cli::parse_duration(s).map_err(|e| err(part, e))?;
    Ok(d.as_millis() as u64)
}

fn rate(part: &str, s: &str) -> Result<RampRate, StagesError> {
    if s == "auto" {
        return Ok(RampRate::Auto);
    }
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(RampRate::PerSec(r)),
        _ => Err(err(
            part,
            format!("rate {s:?} is not a number >= 0 or auto"),
        )),
    }
}

fn kind(part: &str, s: &str) -> Result<StageKind, StagesError> {
    let (head, arg) = s.split_once(':').map_or((s, None), |(h, a)| (h, Some(a)));
    let need = |what: &str| arg.ok_or_else(|| err(part, format!("{head} needs {what}")));
    Ok(match head {
        "ramp" => {
            let (to, at) = match arg {
                Some(a) => a
                    .split_once('@')
                    .map_or((Some(a), None), |(n, r)| (Some(n), Some(r))),
                None => (None, None),
            };
            let to = match to {
                Some(n) => Some(
                    n.parse::<u32>()
                        .map_err(|_| err(part, format!("{n:?} is not a device count")))?,
                ),
                None => None,
            };
            let rate = at.map_or(Ok(RampRate::Default), |r| rate(part, r))?;
            StageKind::Ramp { to, rate }
        }
        h if h.starts_with("ramp@") => StageKind::Ramp {
            to: None,
            rate: rate(part, &h["ramp@".len()..])?,
        },
        "hold" => StageKind::Hold {
            ms: duration_ms(part, need("a duration (hold:60s)")?)?,
        },
        "churn" => {
            let a = need("a rate and a duration (churn:5%/s:30s)")?;
            let (pct, d) = a
                .split_once("%/s:")
                .ok_or_else(|| err(part, "churn is P%/s:DURATION (churn:5%/s:30s)"))?;
            let pct: f64 = pct
                .parse()
                .ok()
                .filter(|p: &f64| p.is_finite() && *p > 0.0 && *p <= 100.0)
                .ok_or_else(|| err(part, format!("{pct:?} is not a percentage in (0, 100]")))?;
            StageKind::Churn {
                pct_per_sec: pct,
                ms: duration_ms(part, d)?,
            }
        }
        "storm" => StageKind::Storm {
            limit_ms: arg.map(|d| duration_ms(part, d)).transpose()?,
        },
        "ramp-down" => StageKind::RampDown {
            ms: duration_ms(part, need("a duration (ramp-down:20s)")?)?,
        },
        _ => {
            return Err(err(
                part,
                "unknown stage (ramp:N@RATE, hold:D, churn:P%/s:D, storm, ramp-down:D)",
            ))
        }
    })
}

fn default_name(kind: &StageKind) -> &'static str {
    match kind {
        StageKind::Ramp { .. } => "ramp",
        StageKind::Hold { .. } => "hold",
        StageKind::Churn { .. } => "churn",
        StageKind::Storm { .. } => "storm",
        StageKind::RampDown { .. } => "ramp-down",
    }
}

/// Parses the compact form; every name is checked (unique, not a metric's name).
///
/// # Errors
///
/// The first part that does not parse, named.
pub fn parse(spec: &str) -> Result<Vec<Stage>, StagesError> {
    let mut stages: Vec<Stage> = Vec::new();
    for raw in spec.split(',') {
        let part = raw.trim();
        if part.is_empty() {
            return Err(err(raw, "empty stage"));
        }
        let (name, body) = match part.split_once('=') {
            Some((n, b)) => (Some(n.trim()), b.trim()),
            None => (None, part),
        };
        let kind = kind(part, body)?;
        let name = match name {
            Some(n) => {
                let ok = !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !ok {
                    return Err(err(part, "a name is letters, digits, - and _"));
                }
                n.to_string()
            }
            None => {
                let base = default_name(&kind);
                let same = stages
                    .iter()
                    .filter(|s| default_name(&s.kind) == base)
                    .count();
                match same {
                    0 => base.to_string(),
                    n => format!("{base}{}", n + 1),
                }
            }
        };
        let taken = Latency::ALL.iter().any(|l| l.name() == name)
            || Counters::field(&name).is_some()
            || stages.iter().any(|s| s.name == name);
        if taken {
            return Err(err(
                part,
                format!("the name {name:?} is taken (another phase, a latency or a counter)"),
            ));
        }
        stages.push(Stage {
            name,
            kind,
            spec: body.to_string(),
        });
    }
    Ok(stages)
}

/// The compact form of TOML `[[stage]]` tables: `kind` (ramp, hold, churn, storm,
/// ramp-down) with `to`, `rate` (a number or "auto"), `for` (a duration), `percent_per_sec`,
/// and an optional `name`.
///
/// # Errors
///
/// A table that is not one of those, named by its position.
pub fn from_toml(value: &toml::Value) -> Result<String, StagesError> {
    let items = value
        .as_array()
        .ok_or_else(|| err("stage", "use [[stage]] tables"))?;
    let mut parts = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("[[stage]] #{}", i + 1);
        let t = item
            .as_table()
            .ok_or_else(|| err(&at, "each stage is a table"))?;
        let text = |key: &str| -> Result<Option<String>, StagesError> {
            Ok(match t.get(key) {
                None => None,
                Some(toml::Value::String(s)) => Some(s.clone()),
                Some(toml::Value::Integer(n)) => Some(n.to_string()),
                Some(toml::Value::Float(f)) => Some(f.to_string()),
                Some(v) => return Err(err(&at, format!("{key} = {v} is not a value"))),
            })
        };
        for key in t.keys() {
            if !["kind", "name", "to", "rate", "for", "percent_per_sec"].contains(&key.as_str()) {
                return Err(err(&at, format!("unknown key {key}")));
            }
        }
        let kind = text("kind")?.ok_or_else(|| err(&at, "needs kind = ..."))?;
        let dur = text("for")?;
        let body = match kind.as_str() {
            "ramp" => {
                let mut s = "ramp".to_string();
                if let Some(n) = text("to")? {
                    s.push_str(&format!(":{n}"));
                }
                if let Some(r) = text("rate")? {
                    s.push_str(&format!("@{r}"));
                }
                s
            }
            "churn" => format!(
                "churn:{}%/s:{}",
                text("percent_per_sec")?.unwrap_or_default(),
                dur.unwrap_or_default()
            ),
            "storm" => dur.map_or("storm".into(), |d| format!("storm:{d}")),
            k => format!("{k}:{}", dur.unwrap_or_default()),
        };
        parts.push(match text("name")? {
            Some(n) => format!("{n}={body}"),
            None => body,
        });
    }
    let spec = parts.join(",");
    parse(&spec)?; // named errors at the table's own part
    Ok(spec)
}

/// The fleet's device count under `stages`: the largest ramp target, or `devices` where a
/// ramp runs them all (or none names a count).
pub fn devices(stages: &[Stage], devices: u32) -> u32 {
    let mut most = None::<u32>;
    for s in stages {
        if let StageKind::Ramp { to, .. } = s.kind {
            let n = to.unwrap_or(devices);
            most = Some(most.map_or(n, |m| m.max(n)));
        }
    }
    most.unwrap_or(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compact_form_parses_and_names_repeats() {
        let s =
            parse("ramp:10000@1000,hold:60s,churn:5%/s:30s,storm,hold:30s,ramp-down:20s").unwrap();
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["ramp", "hold", "churn", "storm", "hold2", "ramp-down"]
        );
        assert_eq!(
            s[0].kind,
            StageKind::Ramp {
                to: Some(10_000),
                rate: RampRate::PerSec(1000.0)
            }
        );
        assert_eq!(
            s[2].kind,
            StageKind::Churn {
                pct_per_sec: 5.0,
                ms: 30_000
            }
        );
        assert_eq!(s[3].kind, StageKind::Storm { limit_ms: None });
        assert_eq!(devices(&s, 1), 10_000);
        let s = parse("warm=ramp@auto,ramp:50,storm:1m").unwrap();
        assert_eq!(s[0].name, "warm");
        assert_eq!(
            s[0].kind,
            StageKind::Ramp {
                to: None,
                rate: RampRate::Auto
            }
        );
        assert_eq!(
            s[1].kind,
            StageKind::Ramp {
                to: Some(50),
                rate: RampRate::Default
            }
        );
        assert_eq!(
            s[2].kind,
            StageKind::Storm {
                limit_ms: Some(60_000)
            }
        );
        assert_eq!(devices(&s, 300), 300);
    }

    #[test]
    fn a_broken_spec_names_its_bad_part() {
        for (bad, part) in [
            ("ramp:10000@1000,hold:6x", "hold:6x"),
            ("hold", "hold"),
            ("ramp:ten@5", "ramp:ten@5"),
            ("ramp:5@fast", "ramp:5@fast"),
            ("churn:5%:30s", "churn:5%:30s"),
            ("churn:0%/s:30s", "churn:0%/s:30s"),
            ("churn:500%/s:30s", "churn:500%/s:30s"),
            ("storm,jump", "jump"),
            ("hold:1s,", ""),
            ("a b=hold:1s", "a b=hold:1s"),
            ("handshake=hold:1s", "handshake=hold:1s"),
            ("x=hold:1s,x=storm", "x=storm"),
            ("ramp-down", "ramp-down"),
            ("ramp:-1@5", "ramp:-1@5"),
            ("ramp:5@-1", "ramp:5@-1"),
            ("ramp:5@nan", "ramp:5@nan"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert_eq!(e.part, part, "{bad}: {e}");
        }
    }

    #[test]
    fn toml_tables_become_the_compact_form() {
        let doc: toml::Table = r#"
            [[stage]]
            kind = "ramp"
            to = 100
            rate = "auto"
            [[stage]]
            kind = "churn"
            percent_per_sec = 5
            for = "30s"
            [[stage]]
            kind = "storm"
            name = "blip"
        "#
        .parse()
        .unwrap();
        let spec = from_toml(&doc["stage"]).unwrap();
        assert_eq!(spec, "ramp:100@auto,churn:5%/s:30s,blip=storm");
        let doc: toml::Table = "[[stage]]\nkind = \"hold\"\n".parse().unwrap();
        let e = from_toml(&doc["stage"]).unwrap_err();
        assert!(e.why.contains("duration"), "{e}");
        let doc: toml::Table = "[[stage]]\nkind = \"hold\"\nfor = \"1s\"\nx = 1\n"
            .parse()
            .unwrap();
        assert_eq!(from_toml(&doc["stage"]).unwrap_err().part, "[[stage]] #1");
    }
}
