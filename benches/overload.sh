#!/usr/bin/env bash
# Goodput and connects per device when a fleet is offered 0.5x to 10x what a server can take:
# one `serve` limited to CAP handshakes/s (the capacity model), then, for each factor, the
# AFTER fleet and (if given) the BEFORE fleet in turn, each a fresh run of DEVICES devices at
# factor x CAP new sessions/s, bounded by --duration. Loopback only; stops by itself.
#
#   cargo build --release && bash benches/overload.sh
#   BEFORE=/path/to/old/mpush-fleet bash benches/overload.sh     # a before/after table
#
# Exits non-zero, saying which, when the AFTER fleet misses its target at any factor >= 1:
# every device online, connects <= 1.05 x devices, goodput >= 90% of CAP.
set -euo pipefail
cd "$(dirname "$0")/.."
AFTER=${AFTER:-target/release/mpush-fleet}
BEFORE=${BEFORE:-}
CAP=${CAP:-200}
DEVICES=${DEVICES:-1000}
FACTORS=${FACTORS:-"0.5 1 2 5 10"}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d)
serve_pid=
trap 'kill "$serve_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
# A fresh `serve` for every run: a collapsed fleet leaves thousands of handshakes queued in
# the capacity model (as a CPU-bound server keeps decrypting requests of closed
# connections), which would otherwise delay the next run's first answers.
start_serve() {
  if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$AFTER" serve --listen "127.0.0.1:$port" --max-handshakes-per-sec "$CAP" --quiet >"$work/serve.log" 2>&1 &
  serve_pid=$!
  for _ in $(seq 600); do
    grep -q "listening" "$work/serve.log" && break
    sleep 0.1
  done
  grep -q "listening" "$work/serve.log" || { echo "serve did not start in 60 s:"; cat "$work/serve.log"; exit 1; }
}

missed=0
echo "server limited to $CAP handshakes/s; $DEVICES devices per run"
printf '%-7s %-7s %8s %9s %10s %9s %9s\n' fleet offered online connects conn/dev timeouts goodput
run() { # NAME BINARY FACTOR
  local name=$1 bin=$2 factor=$3 rate report="$work/$1-$3.json"
  rate=$(python3 -c "print($CAP * $factor)")
  start_serve
  "$bin" run --server "127.0.0.1:$port" --devices "$DEVICES" --rate "$rate" --duration 60s \
    --stop-when-online --no-pin --report "$report" >/dev/null 2>&1 || true
  python3 - "$report" "$name" "$factor" "$CAP" "$DEVICES" <<'PY'
import json, sys
report, name, factor, cap, devices = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
d = json.load(open(report)); c = d["counters"]
goodput = d["handshakes"] / d["duration_secs"]
conn = c["connects"] / devices
print(f"{name:<7} {factor:<7} {d['online']:>8} {c['connects']:>9} {conn:>10.3f} {c['request_timeouts']:>9} {goodput:>8.1f}/s")
ok = d["online"] == devices and conn <= 1.05 and (factor < 1 or goodput >= 0.9 * cap)
sys.exit(0 if ok or name != "after" else 3)
PY
}
for f in $FACTORS; do
  run after "$AFTER" "$f" || { echo "after missed its target at ${f}x"; missed=1; }
  if [ -n "$BEFORE" ]; then run before "$BEFORE" "$f"; fi
done
if [ "$missed" != 0 ]; then
  echo "overload bench: the fleet missed its target (all online, connects <= 1.05 x, goodput >= 90%)"
  exit 1
fi
