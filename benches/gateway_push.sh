#!/usr/bin/env bash
# Push throughput and gateway reply latency through the reference server's own push path
# (PROTOCOL.md 8): 10,000 fleet devices online on one `serve --gateway`, then, for each ack
# mode, `mpush-fleet push` at RATE pushes/s round-robin over user-0..user-9999 for SECS s.
#
# For ack modes auto and biz the gateway replies only after the device's ACK, so the reply
# latency is the app server's whole round trip: gateway -> server -> device -> ACK -> OK.
# For none it ends at the server's write to the device. BIZ_ACK devices ack once their sink
# (file:/dev/null here) took the push.
#
# Exits non-zero when a mode misses its target: every push answered OK (no error, no "no
# reply") and a reply p99 at or under P99_MS.
#
#   bash benches/gateway_push.sh
#   DEVICES=2000 RATE=2000 SECS=10 bash benches/gateway_push.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-10000}
RATE=${RATE:-5000}
SECS=${SECS:-20}
P99_MS=${P99_MS:-200}
CONNS=${CONNS:-4}
OUT=${OUT:-target/gateway-push}
. benches/common.sh

# The kernel picks the ports; the start lines name them.
"$BIN" serve --listen 127.0.0.1:0 --gateway 127.0.0.1:0 --admin 127.0.0.1:0 --status-every 60 \
  >"$OUT/serve.log" 2>&1 &
pids+=($!)
SERVER=$(start_line "$OUT/serve.log" "listening on")
GATEWAY=$(start_line "$OUT/serve.log" "gateway on")
ADMIN=$(start_line "$OUT/serve.log" "admin API on"); ADMIN=${ADMIN#http://}

"$BIN" run --server "$SERVER" --devices "$DEVICES" --rate 2000 --sink file:/dev/null \
  --status-every 10 >"$OUT/run.log" 2>&1 &
pids+=($!)
binds() { curl -s "http://$ADMIN/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["binds"])'; }
for _ in $(seq 600); do
  [ "$(binds)" -ge "$DEVICES" ] && break
  sleep 0.2
done
[ "$(binds)" -ge "$DEVICES" ] || { echo "only $(binds) of $DEVICES devices bound"; exit 1; }
echo "$DEVICES devices bound"

fail=0
for ack in none auto biz; do
  "$BIN" push --gateway "$GATEWAY" --to 'user-{i}' --range "0..$DEVICES" --rate "$RATE" \
    --duration "${SECS}s" --ack "$ack" --connections "$CONNS" --json >"$OUT/push-$ack.log"
  python3 - "$OUT/push-$ack.log" "$ack" "$P99_MS" <<'PY' || fail=1
import json, sys
path, ack, p99_target = sys.argv[1], sys.argv[2], float(sys.argv[3])
r = [json.loads(l) for l in open(path) if l.startswith("{")][-1]
ok = r["outcomes"].get("ok", 0)
lat = r["reply_latency"]
rate = r["sent"] / r["elapsed_s"]
print(f"ack={ack}: sent {r['sent']} ok {ok} ({rate:.0f} pushes/s over {r['elapsed_s']:.1f}s) "
      f"reply p50 {lat['p50_ms']:.2f} ms p99 {lat['p99_ms']:.2f} ms max {lat['max_ms']:.2f} ms "
      f"outcomes {r['outcomes']}")
if ok != r["sent"] or lat["p99_ms"] > p99_target:
    print(f"ack={ack}: MISSED the target (all OK, p99 <= {p99_target} ms)")
    sys.exit(1)
PY
done
curl -s "http://$ADMIN/stats" | python3 -c 'import json,sys; print("server gateway:", json.load(sys.stdin)["gateway"])'
exit $fail
