//! Helpers shared by the integration tests (each test file does `mod common;`).

// Each test crate compiles its own copy and uses only some of the helpers.
#![allow(dead_code)]

use std::env;
use std::path::{Path, PathBuf};

/// The golden-vector folder (`shared/vectors`), or `None` after printing a loud skip line.
///
/// Looks at `MPUSH_VECTORS` first, then walks up from this crate's manifest directory and
/// takes the first ancestor that has `shared/vectors`: a developer checkout is `/work/main`
/// beside `/work/shared`; CI clones elsewhere with a copy of `shared/` beside the clone.
///
/// # Panics
/// If `MPUSH_REQUIRE_VECTORS=1` (CI sets it) and the folder is not found, or if
/// `MPUSH_VECTORS` names a folder that does not exist: a vector test must never pass by
/// silently testing nothing.
pub fn vectors_dir() -> Option<PathBuf> {
    let found = locate();
    if found.is_none() {
        let msg = "SKIPPED: vectors not found (set MPUSH_VECTORS, or put shared/vectors \
                   beside the checkout)";
        if env::var("MPUSH_REQUIRE_VECTORS").is_ok_and(|v| v == "1") {
            panic!("{msg}, and MPUSH_REQUIRE_VECTORS=1");
        }
        eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
    }
    found
}

fn locate() -> Option<PathBuf> {
    if let Some(dir) = env::var_os("MPUSH_VECTORS") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.is_dir(),
            "MPUSH_VECTORS={} is not a directory",
            dir.display()
        );
        return Some(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared").join("vectors"))
        .find(|d| d.is_dir())
}

/// Whether io_uring works here; if not, prints a loud skip line naming the test.
#[allow(dead_code)]
pub fn io_uring_or_skip(test: &str) -> bool {
    match mpush_fleet::shard::io_uring_available() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("\n!!!!!!!! SKIPPED {test}: io_uring unavailable here ({e}) !!!!!!!!\n");
            false
        }
    }
}

/// The shard driver the fleet tests run on: `MPUSH_FLEET_DRIVER` (`uring` or `tokio-uring`;
/// `tests/run.sh` runs the fleet tests once with each), else the default. Child `run`
/// processes read the same variable.
///
/// # Panics
/// On a value that names no driver: a typo must not silently test the default.
pub fn driver() -> mpush_fleet::shard::DriverKind {
    use clap::ValueEnum as _;
    match env::var("MPUSH_FLEET_DRIVER") {
        Ok(name) => mpush_fleet::shard::DriverKind::from_str(&name, false)
            .unwrap_or_else(|e| panic!("MPUSH_FLEET_DRIVER={name}: {e}")),
        Err(_) => mpush_fleet::shard::DriverKind::default(),
    }
}
