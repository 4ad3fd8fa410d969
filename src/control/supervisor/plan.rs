//! How the supervisor splits a fleet: how many workers (`--processes N|auto`), which device
//! range each gets, and the command line each runs.

use std::fmt;
use std::str::FromStr;

use crate::control::embedded::SPARE_DESCRIPTORS;

/// `--processes`: a count, or `auto` (as many as the descriptor limit needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Processes {
    /// Exactly this many workers (at least 1).
    Count(u32),
    /// As many as the per-process descriptor limit needs.
    Auto,
}

impl FromStr for Processes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Processes::Auto),
            n => match n.parse::<u32>() {
                Ok(0) => Err("--processes must be at least 1 (or auto)".into()),
                Ok(n) => Ok(Processes::Count(n)),
                Err(_) => Err(format!("--processes {s:?}: a number or auto")),
            },
        }
    }
}

impl fmt::Display for Processes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Processes::Count(n) => write!(f, "{n}"),
            Processes::Auto => f.write_str("auto"),
        }
    }
}

/// Most devices one worker may hold with `limit` descriptors per process.
///
/// A loopback session costs one descriptor on each side. A worker's fleet needs one per
/// device plus [`SPARE_DESCRIPTORS`]; its embedded server (no `--server`) runs in-process
/// while both sides fit, and past that as a child `serve` with an allowance of its own
/// (`control::embedded`), so either way a worker holds up to `limit - SPARE` devices.
pub fn per_worker_max(limit: u64) -> u64 {
    limit.saturating_sub(SPARE_DESCRIPTORS).max(1)
}

/// How many workers `--processes` asks for `devices` devices (never more than devices, so
/// no worker is empty; at least 1).
pub fn count(p: Processes, devices: u32, limit: u64) -> usize {
    let n = match p {
        Processes::Count(n) => u64::from(n),
        Processes::Auto => u64::from(devices).div_ceil(per_worker_max(limit)),
    };
    n.clamp(1, u64::from(devices.max(1))) as usize
}

/// One worker's part of the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    /// Its number, from 0.
    pub index: usize,
    /// Its first device.
    pub first: u32,
    /// How many devices.
    pub devices: u32,
}

impl Slice {
    /// `first..first+devices`, for messages.
    pub fn range(&self) -> String {
        format!(
            "{}..{}",
            self.first,
            u64::from(self.first) + u64::from(self.devices)
        )
    }
}

/// Splits `devices` from `first` into `n` contiguous slices whose sizes differ by at most 1.
pub fn split(first: u32, devices: u32, n: usize) -> Vec<Slice> {
    let n = n.max(1) as u64;
    (0..n)
        .map(|k| {
            let lo = u64::from(devices) * k / n;
            let hi = u64::from(devices) * (k + 1) / n;
            Slice {
                index: k as usize,
                first: first + lo as u32,
                devices: (hi - lo) as u32,
            }
        })
        .collect()
}

/// A worker's command line: the supervisor's own `run` arguments (so the TOML config and
/// every flag apply alike), then what differs, which wins because a later flag overrides an
/// earlier one. `run_args` are the arguments after `run`.
pub fn worker_args(run_args: &[String], s: &Slice, rate: f64, shards: usize) -> Vec<String> {
    let mut v = vec!["run".to_string()];
    v.extend(run_args.iter().cloned());
    v.extend([
        "--worker".into(),
        "--devices".into(),
        s.devices.to_string(),
        "--first-device".into(),
        s.first.to_string(),
        "--rate".into(),
        rate.to_string(),
        "--shards".into(),
        shards.to_string(),
        // Workers share the cores; the kernel places them better than pins would.
        "--no-pin".into(),
    ]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_counts_descriptors_of_both_sides() {
        // 20,000 descriptors: 19,872 devices a worker (a child server beside it past 9,936).
        assert_eq!(per_worker_max(20_000), 19_872);
        assert_eq!(count(Processes::Auto, 100_000, 20_000), 6);
        assert_eq!(count(Processes::Auto, 19_872, 20_000), 1);
        assert_eq!(count(Processes::Auto, 19_873, 20_000), 2);
        assert_eq!(count(Processes::Auto, 0, 20_000), 1);
        assert_eq!(count(Processes::Count(8), 3, 20_000), 3, "no empty worker");
        assert_eq!(
            count(Processes::Auto, 10, 0),
            10,
            "a silly limit does not divide by 0"
        );
    }

    #[test]
    fn slices_cover_the_range_once() {
        let s = split(1_000, 100_000, 6);
        assert_eq!(s[0].first, 1_000);
        assert_eq!(s.iter().map(|s| u64::from(s.devices)).sum::<u64>(), 100_000);
        for w in s.windows(2) {
            assert_eq!(w[0].first + w[0].devices, w[1].first);
            assert!(w[0].devices.abs_diff(w[1].devices) <= 1);
        }
        assert_eq!(s[5].range(), "84333..101000");
    }

    #[test]
    fn processes_parse() {
        assert_eq!("auto".parse(), Ok(Processes::Auto));
        assert_eq!("3".parse(), Ok(Processes::Count(3)));
        assert!("0".parse::<Processes>().is_err());
        assert!("-1".parse::<Processes>().is_err());
        assert!("many".parse::<Processes>().is_err());
    }

    #[test]
    fn later_flags_override() {
        let s = Slice {
            index: 1,
            first: 50,
            devices: 25,
        };
        let args = worker_args(&["--devices".into(), "100".into()], &s, 12.5, 1);
        assert_eq!(args[..3], ["run", "--devices", "100"]);
        let tail = &args[3..];
        assert!(tail.windows(2).any(|w| w == ["--devices", "25"]));
        assert!(tail.windows(2).any(|w| w == ["--first-device", "50"]));
        assert!(tail.windows(2).any(|w| w == ["--rate", "12.5"]));
    }
}
