//! The usage checks a worker makes at start, made once by the supervisor before it starts
//! any: a bad value (`--public-key nope`, `--source nope`, `--shards 0`, a name that does not
//! resolve) is one usage error, exit 2, instead of N workers that each "never started".
//!
//! The worker's own command line is parsed with the same clap parser the worker uses (its
//! `--config` merged as the worker merges it), then put through the same checks, in the
//! same functions, that `run` makes before it starts a fleet; nothing is started.

use crate::control::cli::{self, RunArgs, UsageError};
use crate::control::phases;
use crate::discovery::Spec;
use crate::tickets::RedisConfig;

/// Checks one worker's argument set (`argv` starts with `run`); the first problem as a
/// [`UsageError`].
///
/// # Errors
///
/// [`UsageError`] naming the bad flag.
pub fn check(argv: &[String]) -> Result<(), UsageError> {
    let full: Vec<String> = std::iter::once("mpush-fleet".to_string())
        .chain(argv.iter().cloned())
        .collect();
    let args = cli::parse_run(&full).map_err(|e| UsageError(e.to_string()))?;
    let args = cli::merge_config(args, &full).map_err(|e| UsageError(format!("{e:#}")))?;
    check_args(&args)
}

fn check_args(args: &RunArgs) -> Result<(), UsageError> {
    if let Some(Spec::Static(endpoints)) = args.discover.spec(&args.servers).map_err(UsageError)? {
        for e in &endpoints {
            e.resolve()
                .map_err(|err| UsageError(format!("--server {e}: {err}")))?;
        }
    }
    phases::plan_of(args)?;
    crate::control::setup::fleet_config(args, Vec::new()).map_err(|e| {
        match e.downcast::<UsageError>() {
            Ok(u) => u,
            Err(e) => UsageError(format!("{e:#}")),
        }
    })?;
    if let Some(url) = &args.redis {
        RedisConfig::new(url.clone())
            .fred_config()
            .map_err(|e| UsageError(format!("--redis: {e}")))?;
    }
    Ok(())
}
