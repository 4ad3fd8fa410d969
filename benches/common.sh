# The preamble shared by the bench scripts that start their own `serve` / `run` processes on
# loopback (upstream.sh, push_e2e.sh, gateway_push.sh, ramp_cpu.sh, storm.sh), so each script holds only its
# scenario and its targets. Source it from the repository root once the script has set OUT:
#
#   cd "$(dirname "$0")/.."
#   OUT=${OUT:-target/my-bench}
#   . benches/common.sh
#
# It leaves BIN naming the binary (given, or a release build made now), OUT empty and
# created, the open-file limit at its hard limit (fleets hold thousands of sockets), and an
# EXIT trap that stops every process whose pid the script added to `pids`.

BIN=${BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN=target/release/mpush-fleet
fi
rm -rf "$OUT"; mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

# wait_for FILE [PATTERN]: waits (10 s at most) until FILE is non-empty and has a line with
# PATTERN; fails, saying so, when it does not.
wait_for() {
  for _ in $(seq 100); do
    [ -s "$1" ] && grep -q -- "${2:-}" "$1" && return 0
    sleep 0.1
  done
  echo "no '${2:-}' in $1 after 10 s" >&2
  return 1
}

# start_line FILE PATTERN: waits (10 s at most) for the start line with PATTERN in FILE and
# prints its last word (the address the kernel gave a listener bound to port 0).
start_line() {
  wait_for "$1" "$2" || return 1
  grep -m1 -- "$2" "$1" | awk '{print $NF}'
}

# free_port: a loopback port the kernel has just handed out (and taken back).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# metric PORT NAME: the value of mpush_fleet_NAME (or NAME_total) on a `--metrics` endpoint.
metric() {
  curl -s "http://127.0.0.1:$1/metrics" |
    awk -v m="mpush_fleet_$2" '$1==m || $1==m"_total" {print $2}' | head -n 1
}
