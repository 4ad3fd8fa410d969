#!/usr/bin/env bash
# Runs every command of README.md's `sh` blocks in a short form (a small fleet instead of
# 10,000 devices, a local `serve` instead of a staging address, 3 s of fuzzing instead of 10
# minutes), so the README keeps working as written on a fresh clone. A command that cannot
# run here is listed as SKIPPED with the reason; a README command this script does not know
# fails the script, so a new command cannot go untested. Called by tests/run.sh.
#
#   bash tests/readme_commands.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
serve_pid=
cleanup() {
  if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

BIN="${CARGO_TARGET_DIR:-$root/target}/release/mpush-fleet"
# The README writes `mpush-fleet`: the binary its first command builds.
mpush-fleet() { "$BIN" "$@"; }

# One README line as the coverage check compares it: continuation lines joined, a trailing
# `# comment` dropped, blanks squeezed.
normalize() {
  sed -e ':a' -e '/\\$/N; s/\\\n[[:space:]]*/ /; ta' \
    | sed -e 's/[[:space:]]\{1,\}#[[:space:]].*$//' -e 's/^[[:space:]]*//' \
          -e 's/[[:space:]]\{1,\}/ /g' -e 's/[[:space:]]*$//' \
    | grep -v -e '^#' -e '^$' || true
}
readme_commands() { awk '/^```sh$/{on=1; next} /^```/{on=0} on' README.md | normalize; }

covered="$work/covered"
: >"$covered"
log="$work/step.log"
failures=0

# step "README LINE" COMMAND...: runs the short form, naming the README line if it fails.
step() {
  local line=$1; shift
  printf '%s\n' "$line" | normalize >>"$covered"
  echo "== $line"
  local t0=$SECONDS
  if "$@" >"$log" 2>&1; then
    echo "   ok ($((SECONDS - t0)) s)"
  else
    local rc=$?
    echo "FAILED (exit $rc): $line"
    echo "   short form: $*"
    tail -n 30 "$log" | sed 's/^/   | /'
    failures=$((failures + 1))
  fi
}

skip() {
  printf '%s\n' "$1" | normalize >>"$covered"
  echo "SKIPPED $1: $2"
}

# --- The two commands. -----------------------------------------------------------------
skip "bash tests/run.sh" "this script is part of it"
step "cargo run --release -- run --devices 10000" \
  cargo run --release -q -- run --devices 200 --rate 0 --stop-when-online --duration 120s

# --- A local server, standing in for the staging addresses. ---------------------------
serve_out="$work/serve.out"
"$BIN" serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --status-every 1 >"$serve_out" 2>&1 &
serve_pid=$!
for _ in $(seq 600); do
  grep -q '^admin API on ' "$serve_out" && break
  kill -0 "$serve_pid" 2>/dev/null || break
  sleep 0.1
done
server=$(sed -n 's/^mpush server listening on //p' "$serve_out")
admin=$(sed -n 's|^admin API on http://||p' "$serve_out")
if [ -z "$server" ] || [ -z "$admin" ]; then
  echo "FAILED: mpush-fleet serve did not start:"; cat "$serve_out"; exit 1
fi
short="--stop-when-online --duration 120s --rate 0"

step "mpush-fleet run --server 10.0.0.5:3000 --devices 50000 --rate 2000 --duration 1h --report soak.json" \
  mpush-fleet run --server "$server" --devices 20 --rate 2000 --duration 2s --report "$work/soak.json"
step "mpush-fleet run --server host:3000 --devices 60000 --first-device 0" \
  mpush-fleet run --server "$server" --devices 20 --first-device 0 $short
step "mpush-fleet run --server host:3000 --devices 60000 --first-device 60000" \
  mpush-fleet run --server "$server" --devices 20 --first-device 20 $short
step "mpush-fleet report merge machine-0.json machine-1.json > all.json" bash -c "
  '$BIN' run --server '$server' --devices 20 --first-device 0 $short --report '$work/m0.json' &&
  '$BIN' run --server '$server' --devices 20 --first-device 20 $short --report '$work/m1.json' &&
  '$BIN' report merge '$work/m0.json' '$work/m1.json' > '$work/all.json' &&
  grep -q '\"devices\": 40' '$work/all.json'"
step "mpush-fleet run --devices 100000 --processes auto --rate 2000 --duration 120s" \
  mpush-fleet run --devices 60 --processes 3 $short
step "mpush-fleet run --server 127.0.0.1:3000 --devices 120000 --source 127.0.0.2 --source 127.0.0.3" \
  mpush-fleet run --server "$server" --devices 20 --source 127.0.0.2 --source 127.0.0.3 $short
step "mpush-fleet run --server 127.0.0.1:3000 --devices 120000 --source 127.0.1.0/28" \
  mpush-fleet run --server "$server" --devices 20 --source 127.0.1.0/28 $short

# The README's TOML example (its first toml block), pointed at the local server and shortened.
awk '/^```toml$/{n++; on=(n==1); next} /^```/{on=0} on' README.md \
  | sed -e "s|^server = .*|server = [\"$server\"]|" -e 's/^devices = .*/devices = 20/' \
        -e 's/^duration = .*/duration = "2s"/' -e "s|^report = .*|report = \"$work/toml.json\"|" \
  >"$work/fleet.toml"
echo "== the README's --config TOML example ($work/fleet.toml)"
if mpush-fleet run --config "$work/fleet.toml" >"$log" 2>&1 && [ -s "$work/toml.json" ]; then
  echo "   ok"
else
  echo "FAILED: run --config with the README's TOML example"; tail -n 30 "$log"
  failures=$((failures + 1))
fi

# The network sinks: a redis-server and an HTTP listener of our own on free loopback ports.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
step "mpush-fleet run --sink 'redis-stream:redis://127.0.0.1:6379/0?stream=pushes&maxlen=1000000'" \
  mpush-fleet run --server "$server" --devices 20 $short \
    --sink "redis-stream:redis://127.0.0.1:$rport/0?stream=pushes&maxlen=1000000"
kill "$redis_pid" 2>/dev/null || true
hport=$(free_port)
python3 -m http.server "$hport" --bind 127.0.0.1 >"$work/http.log" 2>&1 &
http_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$hport") 2>/dev/null && break; sleep 0.1; done
step "mpush-fleet run --sink 'webhook:http://127.0.0.1:8080/pushes#inflight=32'" \
  mpush-fleet run --server "$server" --devices 20 $short \
    --sink "webhook:http://127.0.0.1:$hport/pushes#inflight=32"
kill "$http_pid" 2>/dev/null || true

# End-to-end pushes through the embedded server: every push accounted for, none lost.
step "mpush-fleet run --devices 10000 --push-rate 5000 --push-count 100000 --push-ack auto --fail-on 'push.lost>0,push.e2e.p99>200ms'" \
  mpush-fleet run --devices 20 --rate 0 --push-rate 200 --push-count 200 --push-ack auto \
    --fail-on 'push.lost>0'
# A devices file and the control API: the fleet comes up under the listed ids.
printf '%s\n' '{"deviceId":"phone-a","userId":"alice"}' '{"deviceId":"kiosk-7"}' >"$work/devices.jsonl"
step "mpush-fleet run --server 10.0.0.5:3000 --devices-file devices.jsonl --control 127.0.0.1:9200" \
  mpush-fleet run --server "$server" --devices-file "$work/devices.jsonl" --control 127.0.0.1:0 $short

# serve with the HTTP proxy on: starts, says where it listens, stops on SIGINT.
px_out="$work/proxy-serve.out"
"$BIN" serve --listen 127.0.0.1:0 --quiet --http-proxy api.example=127.0.0.1:8080,127.0.0.1:8081 >"$px_out" 2>&1 &
px_pid=$!
for _ in $(seq 100); do grep -q '^mpush server listening on ' "$px_out" && break; sleep 0.1; done
step "mpush-fleet serve --http-proxy api.example=127.0.0.1:8080,127.0.0.1:8081" \
  grep -q '^mpush server listening on ' "$px_out"
kill -INT "$px_pid" 2>/dev/null || true; wait "$px_pid" 2>/dev/null || true

# Upstream load: against the reference server, whose proxy is off here (ERROR 101 is counted).
step "mpush-fleet run --server 127.0.0.1:3000 --devices 10000 --duration 60s --device-push-rate 200 --device-push-ack auto --http-proxy-rate 50 --http-proxy-uri http://api.example/ping" \
  mpush-fleet run --server "$server" --devices 20 --duration 2s --rate 0 \
    --device-push-rate 200 --device-push-ack auto --http-proxy-rate 5 --http-proxy-uri http://api.example/ping

# Stages: the README's plan in a short form, and its [[stage]] tables (the second toml block).
step "mpush-fleet run --server host:3000 --stages 'ramp:10000@1000,hold:60s,churn:5%/s:30s,storm,hold:30s,ramp-down:20s'" \
  mpush-fleet run --server "$server" --duration 60s \
    --stages 'ramp:20@1000,hold:1s,churn:5%/s:1s,storm,hold:1s,ramp-down:1s'
awk '/^```toml$/{n++; on=(n==2); next} /^```/{on=0} on' README.md \
  | sed -e 's/^to = .*/to = 20/' -e 's/^for = .*/for = "1s"/' >"$work/stages.toml"
echo "== the README's [[stage]] TOML example ($work/stages.toml)"
if mpush-fleet run --server "$server" --config "$work/stages.toml" --duration 60s >"$log" 2>&1 \
  && grep -q '"blip"' "$log"; then
  echo "   ok"
else
  echo "FAILED: run --config with the README's [[stage]] example"; tail -n 30 "$log"
  failures=$((failures + 1))
fi

step "mpush-fleet serve --listen 127.0.0.1:3000 --admin 127.0.0.1:3002" \
  grep -q '^\[ *[0-9.]*s\] connections ' "$serve_out"

# The admin API examples, against the local server; -f turns an HTTP error into a failure.
while IFS= read -r line; do
  case "$line" in curl*) ;; *) continue ;; esac
  cmd=${line//127.0.0.1:3002/$admin}
  step "$line" bash -c "${cmd/curl -s/curl -sf}"
done < <(readme_commands)

kill -INT "$serve_pid"
if wait "$serve_pid" && grep -q '"duration_secs"' "$serve_out"; then
  echo "== serve stopped by Ctrl-C with its summary: ok"
else
  echo "FAILED: serve did not stop cleanly on SIGINT with a summary:"; tail -n 30 "$serve_out"
  failures=$((failures + 1))
fi
serve_pid=

# --- Fuzzing: each target for a few seconds. ------------------------------------------
# The README's own corpus line, whatever targets it names.
mkdir_line=$(readme_commands | grep -m1 '^mkdir -p fuzz/corpus' || true)
if [ -n "$mkdir_line" ]; then
  step "$mkdir_line" bash -c "$mkdir_line"
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz (the README's fuzz commands need it)"
  cargo install --locked -q cargo-fuzz
fi
targets=$(RUSTC_BOOTSTRAP=1 cargo fuzz list)
while IFS= read -r line; do
  case "$line" in *"cargo fuzz run "*) ;; *) continue ;; esac
  target=$(sed -n 's/.*cargo fuzz run \([a-z_0-9]*\) .*/\1/p' <<<"$line")
  if ! grep -qx "$target" <<<"$targets"; then
    step "$line" false "fuzz target $target is in the README but not in fuzz/"
    continue
  fi
  short_line=$(sed -e 's/-max_total_time=[0-9]*/-max_total_time=3/' <<<"$line")
  step "$line" env RUSTC_BOOTSTRAP=1 bash -c "${short_line#RUSTC_BOOTSTRAP=1 }"
done < <(readme_commands)
for target in $targets; do
  if ! grep -q "cargo fuzz run $target " "$covered"; then
    echo "FAILED: fuzz target $target has no command in the README"
    failures=$((failures + 1))
  fi
done
# Prose commands: rebuilding the seeds (into a copy, so the checkout stays as committed).
cp -r fuzz/seeds "$work/seeds"
echo "== python3 fuzz/seeds/gen_seeds.py ../shared/vectors/frames.json (into a copy)"
if python3 "$work/seeds/gen_seeds.py" ../shared/vectors/frames.json >"$log" 2>&1; then
  echo "   ok"
else
  echo "FAILED: gen_seeds.py"; tail -n 30 "$log"; failures=$((failures + 1))
fi
echo "== bash tuning/apply.sh --check"
# It exits 1 when a setting differs from the wanted one (usual on a CI machine): only a
# report that does not reach its summary line is a failure.
bash tuning/apply.sh --check >"$log" 2>&1 || true
if grep -q '^summary: ' "$log"; then echo "   ok"; else
  echo "FAILED: tuning/apply.sh --check"; tail -n 30 "$log"; failures=$((failures + 1))
fi
echo "SKIPPED bash tuning/apply.sh: changes kernel settings of the machine"
echo "SKIPPED benches/fleet_100k.sh: a 100k-session load bench, never run by the tests"
echo "SKIPPED benches/million.sh: a 1,000,000-session load bench, never run by the tests"
# Kubernetes: the manifests and the entrypoint are checked by tests/k8s_manifests.rs.
for line in "cargo build --release && docker build -f deploy/k8s/Dockerfile -t mpush-fleet:latest ." \
  "kubectl apply -k deploy/k8s/" "kubectl wait --for=condition=complete --timeout=2h job/mpush-fleet" \
  "mpush-fleet report merge pod-*.json --fail-on 'online<99.9%'"; do
  skip "$line" "needs a Kubernetes cluster (the manifests are checked by tests/k8s_manifests.rs)"
done
skip "$(readme_commands | grep -m1 '^for i in \$(seq 0 9); do kubectl logs')" \
  "needs a Kubernetes cluster"

# --- Every README command was run or skipped with a reason. -----------------------------
while IFS= read -r line; do
  if ! grep -qxF -- "$line" "$covered"; then
    echo "FAILED: README command not exercised by tests/readme_commands.sh: $line"
    failures=$((failures + 1))
  fi
done < <(readme_commands)

if [ "$failures" -gt 0 ]; then
  echo "readme_commands: $failures failed"
  exit 1
fi
echo "readme_commands: every README command works"
