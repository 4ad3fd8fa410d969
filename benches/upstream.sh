#!/usr/bin/env bash
# Device-originated traffic at 10,000 online devices (PROTOCOL.md 9): one `serve
# --http-proxy-enabled`, a local HTTP backend (python3's threading http.server), and one fleet
# of DEVICES devices that, while it holds the sessions, sends PUSH_RATE device PUSHes/s
# (AUTO_ACK: each waits for the server's ACK) and HTTP_RATE HTTP_PROXY GETs/s through them.
#
# Figures come from the fleet's --report: push -> ACK and request -> response HDR histograms,
# counts by outcome. Exits non-zero when it misses its targets: every push acked (or lost
# only with its connection at the final stop), no timeout, every request answered 2xx, and
# both p99s at or under P99_MS.
#
#   nice bash benches/upstream.sh
#   DEVICES=2000 PUSH_RATE=500 HTTP_RATE=100 SECS=10 bash benches/upstream.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-10000}
PUSH_RATE=${PUSH_RATE:-1000}
HTTP_RATE=${HTTP_RATE:-200}
SECS=${SECS:-30}
P99_MS=${P99_MS:-200}
OUT=${OUT:-target/upstream-bench}
. benches/common.sh

python3 - "$OUT/backend.port" <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"pong"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_address[1]))
s.serve_forever()
PY
pids+=($!)
"$BIN" serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --http-proxy-enabled --status-every 60 \
  >"$OUT/serve.log" 2>&1 &
pids+=($!)
SERVER=$(start_line "$OUT/serve.log" "listening on")
wait_for "$OUT/backend.port"
BACKEND=127.0.0.1:$(cat "$OUT/backend.port")

echo "== $DEVICES devices, $PUSH_RATE device pushes/s (auto), $HTTP_RATE HTTP_PROXY/s, ${SECS}s"
"$BIN" run --server "$SERVER" --devices "$DEVICES" --rate 2000 --duration "${SECS}s" \
  --device-push-rate "$PUSH_RATE" --device-push-ack auto \
  --http-proxy-rate "$HTTP_RATE" --http-proxy-uri "http://$BACKEND/ok" \
  --status-every 5 --report "$OUT/report.json" >"$OUT/run.log" 2>&1 || true
python3 - "$OUT/report.json" "$P99_MS" "$SECS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); p99_target = float(sys.argv[2]); secs = float(sys.argv[3])
c, lat = r["counters"], r["latency"]
push, http = lat["device_push_ack"], lat["http_proxy"]
print(f"online {r['online']} of {r['devices']} (ever {r['ever_online']}), run {r['duration_secs']:.1f}s")
print(f"device pushes: sent {c['device_pushes_sent']} ({c['device_pushes_sent']/secs:.0f}/s) "
      f"acked {c['device_push_acked']} timeouts {c['device_push_timeouts']} failed {c['device_push_failed']} "
      f"push->ACK p50 {push['p50_ms']:.2f} p99 {push['p99_ms']:.2f} max {push['max_ms']:.2f} ms")
print(f"http_proxy: sent {c['http_requests_sent']} ({c['http_requests_sent']/secs:.0f}/s) "
      f"2xx {c['http_responses_2xx']} raw {c['http_raw_failures']} timeouts {c['http_timeouts']} "
      f"failed {c['http_failed']} request->response p50 {http['p50_ms']:.2f} p99 {http['p99_ms']:.2f} "
      f"max {http['max_ms']:.2f} ms")
print(f"upstream refused {c['upstream_refused']} unmatched {c['upstream_unmatched']} "
      f"no_device {c['upstream_no_device']}")
missed = []
if r["ever_online"] < r["devices"]: missed.append("not every device online")
if c["device_pushes_sent"] == 0 or c["device_push_timeouts"] > 0: missed.append("pushes sent and none timed out")
if c["device_push_acked"] + c["device_push_failed"] != c["device_pushes_sent"]: missed.append("every push accounted for")
if c["http_requests_sent"] == 0 or c["http_timeouts"] > 0 or c["http_raw_failures"] > 0: missed.append("requests answered 2xx")
if push["p99_ms"] > p99_target or http["p99_ms"] > p99_target: missed.append(f"p99 <= {p99_target} ms")
if missed:
    print("MISSED: " + "; ".join(missed)); sys.exit(1)
print("targets met")
PY
