#!/usr/bin/env bash
# The test suite, on a fresh Debian machine with the Rust toolchain: installs what the tests
# need (redis-server for the ticket-store tests), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
  echo "installing redis-server (the Redis ticket-store tests start a real one on loopback)"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
fi
# Loopback fleet tests hold thousands of sockets: use the whole descriptor allowance.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# The golden vectors must be found: a vector test that silently tests nothing is a defect.
export MPUSH_REQUIRE_VECTORS="${MPUSH_REQUIRE_VECTORS:-1}"
exec cargo test "$@"
