#!/usr/bin/env bash
# Whole-system benchmark: the server restarts under a large fleet (issue 10, item 7).
#
# PROCS `serve` processes keep their reusable sessions in one redis-server (`serve --redis`), as
# a real MPUSH cluster does; PROCS fleet processes keep their tickets in the same Redis. Once
# every device is online, every `serve` is killed (SIGKILL: a crash, no goodbye) and started
# again on the same port. Every device must come back by fast connect (its session is still in
# Redis), and the reconnect rate is bounded by the fleet's admission window and retry budget,
# not by how many devices lost their connection at once.
#
# Sampled every SAMPLE seconds from each fleet's Prometheus endpoint: online devices, connects,
# handshakes, fast connects. Prints and writes (to $OUT/summary.json): the time from the kill
# until all are online again, the peak connect rate over one sample, connects and handshakes
# per device during the recovery. Exits non-zero when fewer than all devices come back within
# RECOVER seconds, or any device came back by a handshake.
#
#   bash benches/restart.sh                    # 50,001 devices (3 x 16,667)
#   PROCS=1 PER=2000 bash benches/restart.sh   # a quick look
#   SERVE_ARGS="--max-fast-connects-per-sec 2000" bash benches/restart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PROCS=${PROCS:-3}          # fleet processes, and as many serve processes
PER=${PER:-16667}          # devices per process: under 20,000 descriptors on either side
RATE=${RATE:-3000}         # new sessions per second across the whole fleet (first ramp)
HB=${HB:-60000}            # heartbeat, server and devices (ms)
RAMP=${RAMP:-120}          # seconds allowed for the first ramp
RECOVER=${RECOVER:-120}    # seconds allowed for all to come back after the kill
SAMPLE=${SAMPLE:-0.5}      # seconds between samples
BASE_PORT=${BASE_PORT:-31000}
REDIS_PORT=${REDIS_PORT:-6391}
OUT=${OUT:-target/restart}
SERVE_ARGS=${SERVE_ARGS:-}  # e.g. "--max-fast-connects-per-sec 2000": a server slower to resume
TOTAL=$((PROCS * PER))

command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install -y redis-server)"; exit 2; }
command -v curl >/dev/null || { echo "needs curl"; exit 2; }
cargo build --release --quiet
BIN=target/release/mpush-fleet
rm -rf "$OUT"; mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

pids=(); fleets=(); servers=()
# The fleets stop first (a graceful stop, their reports written), then the servers and Redis.
cleanup() {
  kill "${fleets[@]}" 2>/dev/null || true
  for p in "${fleets[@]}"; do wait "$p" 2>/dev/null || true; done
  kill "${servers[@]}" "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() { # port: up within 30 s, or fail loudly
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "FAIL: nothing listens on 127.0.0.1:$1 after 30 s (see $OUT)"; exit 1
}
# A free loopback port from the kernel (for the fleets' metrics endpoints).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
pids+=($!)
wait_port "$REDIS_PORT"

start_server() { # k
  "$BIN" serve --listen "127.0.0.1:$((BASE_PORT + $1))" --min-heartbeat "$HB" --max-heartbeat "$HB" \
    --redis "redis://127.0.0.1:$REDIS_PORT/0" --quiet $SERVE_ARGS >>"$OUT/serve-$1.log" 2>&1 &
  servers[$1]=$!
}
for k in $(seq 0 $((PROCS - 1))); do start_server "$k"; done
for k in $(seq 0 $((PROCS - 1))); do wait_port $((BASE_PORT + k)); done

mports=()
for k in $(seq 0 $((PROCS - 1))); do
  mp=$(free_port); mports+=("$mp")
  "$BIN" run --server "127.0.0.1:$((BASE_PORT + k))" --devices "$PER" --first-device $((k * PER)) \
    --source "127.0.$((k + 1)).1" --rate $((RATE / PROCS)) --heartbeat "$HB" --shards 1 --no-pin \
    --redis "redis://127.0.0.1:$REDIS_PORT/0" --metrics "127.0.0.1:$mp" --status-every 5 \
    --duration $((RAMP + RECOVER + 30))s --report "$OUT/fleet-$k.json" >"$OUT/fleet-$k.log" 2>&1 &
  fleets+=($!)
done
for mp in "${mports[@]}"; do wait_port "$mp"; done

# One sample: "<t> <online> <connects> <handshakes> <fast_connects>", summed over the fleets.
sample() {
  local on=0 co=0 hs=0 fc=0
  for mp in "${mports[@]}"; do
    read -r a b c d < <(curl -s "http://127.0.0.1:$mp/metrics" | awk '
      $1=="mpush_fleet_online" {o=$2} $1=="mpush_fleet_connects_total" {c=$2}
      $1=="mpush_fleet_handshakes_total" {h=$2} $1=="mpush_fleet_fast_connects_total" {f=$2}
      END {print o+0, c+0, h+0, f+0}')
    on=$((on + a)); co=$((co + b)); hs=$((hs + c)); fc=$((fc + d))
  done
  echo "$(date +%s.%N) $on $co $hs $fc"
}

deadline=$((SECONDS + RAMP))
while :; do
  s=$(sample); echo "ramp $s" >>"$OUT/samples"
  [ "$(echo "$s" | cut -d' ' -f2)" -ge "$TOTAL" ] && break
  [ $SECONDS -ge $deadline ] && { echo "FAIL: ramp reached $(echo "$s" | cut -d' ' -f2) of $TOTAL in ${RAMP}s"; exit 1; }
  sleep "$SAMPLE"
done
echo "all $TOTAL online; killing and restarting ${PROCS} serve processes"

before=$(sample); echo "kill $before" >>"$OUT/samples"
for k in $(seq 0 $((PROCS - 1))); do kill -9 "${servers[$k]}"; done
for k in $(seq 0 $((PROCS - 1))); do wait "${servers[$k]}" 2>/dev/null || true; done
for k in $(seq 0 $((PROCS - 1))); do start_server "$k"; done
deadline=$((SECONDS + RECOVER)); seen_drop=0
while :; do
  s=$(sample); echo "recover $s" >>"$OUT/samples"
  on=$(echo "$s" | cut -d' ' -f2)
  co=$(echo "$s" | cut -d' ' -f3)
  { [ "$on" -lt "$TOTAL" ] || [ "$co" -gt "$(echo "$before" | cut -d' ' -f3)" ]; } && seen_drop=1
  [ "$seen_drop" = 1 ] && [ "$on" -ge "$TOTAL" ] && break
  [ $SECONDS -ge $deadline ] && break
  sleep "$SAMPLE"
done

python3 - "$OUT" "$TOTAL" "$RECOVER" <<'PY'
import json, sys
out, total, recover = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rows = [l.split() for l in open(f"{out}/samples")]
kill = next(r for r in rows if r[0] == "kill")
rec = [r for r in rows if r[0] == "recover"]
t0, c0, h0, f0 = float(kill[1]), int(kill[3]), int(kill[4]), int(kill[5])
last = rec[-1]
back = int(last[2]) >= total
peak, prev = 0.0, (t0, c0)
for r in rec:
    t, c = float(r[1]), int(r[3])
    if t > prev[0]:
        peak = max(peak, (c - prev[1]) / (t - prev[0]))
    prev = (t, c)
low = min(int(r[2]) for r in rec)
summary = {
    "devices": total,
    "all_back": back,
    "seconds_until_all_back": round(float(last[1]) - t0, 2) if back else None,
    "lowest_online_after_kill": low,
    "connects_during_recovery": int(last[3]) - c0,
    "connects_per_device": round((int(last[3]) - c0) / total, 3),
    "handshakes_during_recovery": int(last[4]) - h0,
    "fast_connects_during_recovery": int(last[5]) - f0,
    "peak_connect_rate_per_sec": round(peak, 1),
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
if not back:
    print(f"FAIL: {last[2]} of {total} online {recover:.0f} s after the kill"); sys.exit(1)
if summary["handshakes_during_recovery"] > 0:
    print("FAIL: devices came back by handshake, not fast connect"); sys.exit(1)
PY
