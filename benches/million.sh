#!/usr/bin/env bash
# A million concurrent sessions on one machine, fleet and servers side by side (issue 14,
# item 6): how far this machine gets, and what each session costs in fleet user space,
# server user space and the kernel.
#
# What a million needs here:
#  - processes: the descriptor hard limit is 20,000 per process and a loopback session costs
#    one on each side, so 1,000,000 sessions take at least 51 fleet and 51 server processes.
#    This script runs 10 steps of 100,000: each step starts 6 `serve` processes and one
#    `run --processes 6` (6 workers of 16,667 devices, one shard each) against them; 60 + 60
#    processes (and 10 supervisors) for the million;
#  - source addresses: step k connects from 127.0.k.1-6 (a /29; every 127/8 address is on
#    `lo`), so no (source, destination) pair carries more than ~2,800 connections, far inside
#    the ephemeral range, and steps never compete for ports;
#  - server ports: BASE_PORT.. (31000-31059 for the million), which must lie outside the
#    ephemeral range or be reserved (`tuning/sysctl.conf` reserves 31000-31099): checked;
#  - kernel: the sysctls of tuning/sysctl.conf (file-max, tcp_mem, somaxconn, ...): applied,
#    then checked against what TOTAL sessions need.
# Each step waits until every device so far is online, settles 3 s, and records: online, fleet
# RSS (supervisors and workers) and server RSS per session, kernel memory per session
# ((/proc/net/sockstat TCP mem pages - at start) * page + slab pages grown since the start,
# all caches of /proc/slabinfo), and MemAvailable. Rows go to $OUT/steps.jsonl, everything to
# $OUT/summary.json.
#
# Stops by itself: TOTAL online and held HOLD s (exit 0); or MemAvailable below MIN_AVAIL_GIB
# (4 GiB: the machine is shared; also when the next step would cross it, judged by the last
# step's cost), a step not online within STEP_TIMEOUT s, DEADLINE s in all, or a process that
# died: exit 1, saying how far it got and why. A memory stop SIGKILLs the fleets at once;
# otherwise they stop gracefully. Every process it started is ended on every path (trap).
#
#   nice -n 10 bash benches/million.sh                 # 1,000,000 devices
#   TOTAL=200000 bash benches/million.sh               # two steps, to develop
#
# Knobs: TOTAL STEP SERVERS_PER_STEP RATE (new sessions/s within a step) HB (heartbeat ms, both
# sides; 900000 by default so the 2 cores go to the ramp, not to heartbeats) HOLD
# MIN_AVAIL_GIB STEP_TIMEOUT DEADLINE BASE_PORT OUT BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

export TOTAL=${TOTAL:-1000000} STEP=${STEP:-100000} SERVERS_PER_STEP=${SERVERS_PER_STEP:-6}
export BASE_PORT=${BASE_PORT:-31000} OUT=${OUT:-target/million}
export BIN=${BIN:-target/release/mpush-fleet}
[ "$BIN" = target/release/mpush-fleet ] && cargo build --release --quiet

echo "== tuning/apply.sh"
bash tuning/apply.sh || true # it reports the descriptor hard limit it cannot raise here

# What TOTAL sessions need of the kernel, checked rather than assumed.
steps=$(( (TOTAL + STEP - 1) / STEP ))
nservers=$(( steps * SERVERS_PER_STEP ))
python3 - "$BASE_PORT" "$nservers" "$TOTAL" <<'PY' || exit 2
import sys
base, n, total = map(int, sys.argv[1:])
lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
reserved = set()
for part in open("/proc/sys/net/ipv4/ip_local_reserved_ports").read().strip().split(","):
    if part:
        a, _, b = part.partition("-")
        reserved.update(range(int(a), int(b or a) + 1))
bad = [p for p in range(base, base + n) if lo <= p <= hi and p not in reserved]
problems = []
if bad:
    problems.append(f"server ports {bad[0]}..{bad[-1]} ({len(bad)}) lie in the ephemeral range "
                    f"{lo}-{hi} and are not reserved: an outgoing connection could hold one "
                    "(add them to net.ipv4.ip_local_reserved_ports, tuning/sysctl.conf)")
file_max = int(open("/proc/sys/fs/file-max").read())
if file_max < 2 * total + 65536:
    problems.append(f"fs.file-max {file_max} < 2 x {total} sessions + 65536 for everything else")
somaxconn = int(open("/proc/sys/net/core/somaxconn").read())
if somaxconn < 4096:
    problems.append(f"net.core.somaxconn {somaxconn}: the ramp's SYNs would overflow the accept queues")
for p in problems:
    print(f"FAIL: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY

ulimit -n "$(ulimit -Hn)"
rm -rf "$OUT"; mkdir -p "$OUT"
: >"$OUT/pids"

# Backstop for a driver that is itself killed: end every process it listed, and their
# descendants (workers run in process groups of their own), by pid.
cleanup() {
  local pids=() p
  while read -r p; do
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null && pids+=("$p")
  done <"$OUT/pids"
  [ ${#pids[@]} = 0 ] && return
  local all=("${pids[@]}") more
  for p in "${pids[@]}"; do
    more=$(pgrep -P "$p" || true)
    for c in $more; do all+=("$c"); all+=($(pgrep -P "$c" || true)); done
  done
  echo "cleanup: killing ${#all[@]} processes left behind" >&2
  kill -KILL "${all[@]}" 2>/dev/null || true
}
trap cleanup EXIT

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/2^20}' /proc/meminfo), \
Linux $(uname -r), nofile hard $(ulimit -Hn), $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 benches/million_steps.py
