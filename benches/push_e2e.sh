#!/usr/bin/env bash
# End-to-end pushes through the embedded server (PROTOCOL.md 8): `run --devices 10000
# --push-rate RATE --push-count RATE*SECS` for each ack mode. The fleet pushes to its own
# users through the embedded server's gateway and measures, per push: send -> device
# received (push_e2e), send -> device acked (push_acked; AUTO_ACK on receipt, BIZ_ACK once
# the sink, file:/dev/null, took it) and send -> gateway reply (push_reply). Each run ends by
# itself once every push is accounted for.
#
# Exits non-zero when a mode misses its target: every push accounted for
# (sent = received + explained + lost), 0 lost, every push received and answered OK, and
# the end-to-end p99 at or under P99_MS.
#
#   nice bash benches/push_e2e.sh
#   DEVICES=2000 RATE=2000 SECS=5 nice bash benches/push_e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-10000}
RATE=${RATE:-5000}
SECS=${SECS:-20}
P99_MS=${P99_MS:-200}
CONNS=${CONNS:-4}
OUT=${OUT:-target/push-e2e}
. benches/common.sh
COUNT=$((RATE * SECS))

fail=0
for ack in none auto biz; do
  code=0
  "$BIN" run --devices "$DEVICES" --rate 2000 --sink file:/dev/null --status-every 10 \
    --push-rate "$RATE" --push-count "$COUNT" --push-ack "$ack" --push-connections "$CONNS" \
    --report "$OUT/run-$ack.json" --json >"$OUT/run-$ack.log" 2>&1 || code=$?
  python3 - "$OUT/run-$ack.json" "$ack" "$P99_MS" "$COUNT" "$code" <<'PY' || fail=1
import json, sys
path, ack, p99_target, count, code = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
r = json.load(open(path))
c, lat = r["counters"], r["latency"]
sent, recv, expl, lost = c["push_sent"], c["push_received"], c["push_explained"], c["push_lost"]
def p(name):
    s = lat[name]
    return f"{s['p50_ms']:.2f}/{s['p99_ms']:.2f}" if s["count"] else "-"
print(f"ack={ack}: sent {sent} at {r.get('push_rate_achieved', 0):.0f}/s over "
      f"{r.get('push_sending_secs', 0):.1f}s; received {recv} twice {c['push_received_twice']} "
      f"ok {c['push_gateway_ok']} errors {c['push_gateway_errors']} no_reply {c['push_no_reply']} "
      f"(received {c['push_no_reply_received']}) explained {expl} lost {lost}; p50/p99 ms: "
      f"received {p('push_e2e')} acked {p('push_acked')} reply {p('push_reply')} "
      f"(online {r['online']} of {r['devices']}, exit {code})")
missed = []
if sent != count: missed.append(f"sent {sent} of {count}")
if sent != recv + expl + lost: missed.append("not every push accounted for")
if lost: missed.append(f"{lost} lost")
if recv != sent or c["push_gateway_ok"] != sent: missed.append("not all received and OK")
if lat["push_e2e"]["p99_ms"] > p99_target: missed.append(f"e2e p99 over {p99_target} ms")
if missed:
    print(f"ack={ack}: MISSED the target: {', '.join(missed)}")
    sys.exit(1)
PY
done
exit $fail
