#!/usr/bin/env bash
# The test suite, on a fresh Debian machine with the Rust toolchain: installs what the tests
# need, runs every test, then the README's commands (tests/readme_commands.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# What the tests need besides Rust: redis-server (the Redis ticket-store tests start a real
# one on loopback); for tests/readme_commands.sh, curl (the admin API examples) and python3
# (the fuzz seed generator). `script` (bsdutils, the pseudo-terminal tests) is essential.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# ZooKeeper discovery tests (tests/zookeeper.rs) run Debian's server jars directly.
[ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Loopback fleet tests hold thousands of sockets: use the whole descriptor allowance.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# The golden vectors must be found: a vector test that silently tests nothing is a defect.
export MPUSH_REQUIRE_VECTORS="${MPUSH_REQUIRE_VECTORS:-1}"
cargo test "$@"
# Both shard drivers pass the same fleet tests over the same core: `cargo test` above ran them
# on the default driver, these run them on the other (MPUSH_FLEET_DRIVER reaches both the
# tests' fleets and the `run` processes they start).
if [ $# -eq 0 ]; then
  MPUSH_FLEET_DRIVER="${OTHER_DRIVER:-tokio-uring}" cargo test --test fleet --test redis_fleet \
    --test fleet_sink --test overload --test ctrl_c --test connect_timeout
fi
# The README's commands in short forms (a small fleet, serve, a few seconds per fuzz target),
# with the whole suite only: `bash tests/run.sh --test NAME` runs just that test.
if [ $# -eq 0 ]; then
  bash tests/readme_commands.sh
fi
