//! Stages, as k6 scenarios: a run as a list of phases (ramp, hold, churn, storm, ramp down),
//! and `--rate auto`, the capacity search a ramp can use.
//!
//! - [`plan`]: the spec (compact flag form and TOML `[[stage]]` tables) and its validation.
//! - [`figures`]: what each phase measured, what the search found, merged across shards.
//!
//! The phase machine and the search run in the sans-IO shard core
//! (`shard::core::phases`, `shard::core::search`), fed time like the rest of it; each shard
//! runs the plan over its share of the devices and of each ramp (see [`Plan::for_shard`]).

pub mod figures;
pub mod plan;

pub use figures::{Capacity, Found, PhaseCounts, PhaseStats, StageStats};
pub use plan::{RampRate, Stage, StageKind, StagesError};

/// The capacity search's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AutoConfig {
    /// The p99 latency (handshake, fast connect) the search keeps to, ms.
    pub p99_target_ms: f64,
    /// The arrival rate it starts from, sessions/s of this shard (or of the fleet, before
    /// [`Plan::for_shard`]).
    pub start_per_sec: f64,
}

impl Default for AutoConfig {
    fn default() -> Self {
        // 500 ms: far above a handshake's own cost on a LAN (1-20 ms), so it measures
        // queueing at the server, not the network; a twentieth of the 10 s request timeout,
        // so the search backs off long before anything times out; and about what a person
        // waits at an app's start before the push channel counts as slow.
        AutoConfig {
            p99_target_ms: 500.0,
            start_per_sec: 20.0,
        }
    }
}

/// What a shard (or the fleet) runs: its phases, in order. An empty plan is a plain run: the
/// ramp at `--rate`, then running until stopped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The phases.
    pub stages: Vec<Stage>,
    /// How `auto` ramps search.
    pub auto: AutoConfig,
    /// Whether the run stops once the last phase is done (given stages do; `--rate auto`
    /// alone keeps running, as any run does).
    pub stop_when_done: bool,
}

impl Plan {
    /// `--rate auto` without stages: one ramp of every device at the searched rate.
    pub fn auto_ramp(auto: AutoConfig) -> Plan {
        Plan {
            stages: vec![Stage {
                name: "ramp".into(),
                kind: StageKind::Ramp {
                    to: None,
                    rate: RampRate::Auto,
                },
                spec: "ramp@auto".into(),
            }],
            auto,
            stop_when_done: false,
        }
    }

    /// Whether any ramp searches.
    pub fn searches(&self) -> bool {
        self.stages.iter().any(|s| {
            matches!(
                s.kind,
                StageKind::Ramp {
                    rate: RampRate::Auto,
                    ..
                }
            )
        })
    }

    /// The plan of the shard that owns devices `lo..hi` of a fleet of `devices` (all
    /// relative to the fleet's first), with `share` of its rates: each ramp's target split
    /// on the same boundaries as the devices, so the shards' targets add up to it exactly.
    pub fn for_shard(&self, lo: u32, hi: u32, devices: u32, share: f64, rate: f64) -> Plan {
        let split = |n: u32| -> u32 {
            let at = |i: u32| (u64::from(n) * u64::from(i) / u64::from(devices.max(1))) as u32;
            at(hi) - at(lo)
        };
        let stages = self
            .stages
            .iter()
            .map(|s| {
                let kind = match s.kind {
                    StageKind::Ramp { to, rate: r } => StageKind::Ramp {
                        to: Some(split(to.unwrap_or(devices))),
                        rate: match r {
                            RampRate::Default => RampRate::PerSec(rate * share),
                            RampRate::PerSec(x) => RampRate::PerSec(x * share),
                            RampRate::Auto => RampRate::Auto,
                        },
                    },
                    k => k,
                };
                Stage { kind, ..s.clone() }
            })
            .collect();
        Plan {
            stages,
            auto: AutoConfig {
                start_per_sec: (self.auto.start_per_sec * share).max(1.0),
                ..self.auto
            },
            stop_when_done: self.stop_when_done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_each_ramp_exactly() {
        let plan = Plan {
            stages: plan::parse("ramp:1001@100,ramp:7,ramp-down:1s").unwrap(),
            ..Plan::default()
        };
        let (a, b) = (
            plan.for_shard(0, 500, 1001, 0.5, 10.0),
            plan.for_shard(500, 1001, 1001, 0.5, 10.0),
        );
        let to = |p: &Plan, i: usize| match p.stages[i].kind {
            StageKind::Ramp { to, .. } => to.unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(to(&a, 0) + to(&b, 0), 1001);
        assert_eq!(to(&a, 1) + to(&b, 1), 7);
        assert_eq!(
            a.stages[1].kind,
            StageKind::Ramp {
                to: Some(3),
                rate: RampRate::PerSec(5.0)
            }
        );
        assert_eq!(a.stages[2].kind, StageKind::RampDown { ms: 1_000 });
    }
}
