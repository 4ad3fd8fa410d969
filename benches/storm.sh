#!/usr/bin/env bash
# A fast-connect storm alone: N devices online, `serve`'s admin close-all, the time until all
# are back and the fleet's and the server's CPU per fast connect (issue 11; the drivers
# bench's storm row, with the reconnect backoff as a knob).
#
#   bash benches/storm.sh
#   DRIVER=tokio-uring BACKOFF=50 bash benches/storm.sh
#   DRIVER=none BIN=/path/to/main-before/mpush-fleet bash benches/storm.sh   # no --driver
#
# BACKOFF (ms) is the devices' first reconnect ceiling (`run --backoff`; unset: the default,
# 500 ms, and a build without the flag). A storm can end no sooner than the jitter spreads
# it, so a small BACKOFF shows what the fleet and the server can take. Loopback only; stops
# by itself. It has no target of its own (benches/drivers.sh judges the storm against the
# build before the ring driver): it prints the figures, and exits 1 if `serve` does not start
# or the fleet is not all online, or not back, within 120 s.
set -euo pipefail
cd "$(dirname "$0")/.."
DRIVER=${DRIVER:-uring}
N=${N:-15000}
OUT=${OUT:-$(mktemp -d)}
. benches/common.sh
wait_metric() { # PORT NAME VALUE EVERY_S
  local deadline=$((SECONDS + 120)) v
  until v=$(metric "$1" "$2"); [ "${v%.*}" -ge "$3" ] 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "storm: $2 did not reach $3 (at ${v:-?})"; exit 1; }
    sleep "$4"
  done
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

port=$(free_port); admin=$(free_port); mport=$(free_port)
"$BIN" serve --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin" --quiet >"$OUT/serve.log" 2>&1 &
spid=$!; pids+=("$spid")
wait_for "$OUT/serve.log" listening
flags=(--driver "$DRIVER"); [ "$DRIVER" = none ] && flags=()
[ -n "${BACKOFF:-}" ] && flags+=(--backoff "$BACKOFF")
# EXTRA: more `run` flags, e.g. EXTRA="--max-pending 0" (no admission window).
read -r -a extra <<<"${EXTRA:-}"; flags+=("${extra[@]}")
"$BIN" run "${flags[@]}" --server "127.0.0.1:$port" --devices "$N" --rate 0 --source 127.0.9.6 \
  --no-pin --metrics "127.0.0.1:$mport" --status-every 60 >"$OUT/run.log" 2>&1 &
pid=$!; pids+=("$pid")
wait_metric "$mport" online "$N" 0.5
sleep 2
fc0=$(metric "$mport" fast_connects); f0=$(ticks "$pid"); s0=$(ticks "$spid")
start=$(date +%s.%N)
curl -s -X POST "http://127.0.0.1:$admin/fault/close-all" >/dev/null
wait_metric "$mport" fast_connects $((${fc0%.*} + N)) 0.05
wait_metric "$mport" online "$N" 0.05
end=$(date +%s.%N); f1=$(ticks "$pid"); s1=$(ticks "$spid"); fc1=$(metric "$mport" fast_connects)
hz=$(getconf CLK_TCK)
python3 - <<EOF
n = max(${fc1%.*} - ${fc0%.*}, 1)
print("storm: $BIN driver $DRIVER, backoff ${BACKOFF:-default} ${EXTRA:-}: %d fast connects, all back in %.2f s;"
      " CPU per fast connect: fleet %.0f us, serve %.0f us; load average $(cut -d' ' -f1 /proc/loadavg)"
      % (n, $end - $start, ($f1 - $f0) / $hz / n * 1e6, ($s1 - $s0) / $hz / n * 1e6))
EOF
