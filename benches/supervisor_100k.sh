#!/usr/bin/env bash
# The issue's command: 100,000 devices from one `run` on this machine, split by the supervisor
# (`--processes auto`: as many workers as the 20,000-descriptor limit needs, each with its
# embedded server as a child `serve`). Target: every device online. It prints the time until
# all were online, the run's figures, and each worker's peak RSS, and exits non-zero, saying
# so, when fewer devices than asked came online or were online when the run stopped.
#
#   bash benches/supervisor_100k.sh                 # 100,000 devices at 2,000/s for 120 s
#   DEVICES=20000 DURATION=30s bash benches/supervisor_100k.sh
#
# Run tuning/apply.sh first (the ephemeral port range, somaxconn, file limits).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-100000}
RATE=${RATE:-2000}
DURATION=${DURATION:-120s}
OUT=${OUT:-target/supervisor-100k}

cargo build --release --quiet
BIN=target/release/mpush-fleet
rm -rf "$OUT"; mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

set +e
/usr/bin/time -v "$BIN" run --devices "$DEVICES" --processes auto --rate "$RATE" \
  --duration "$DURATION" --status-every 10 --json --report "$OUT/report.json" \
  >"$OUT/stdout.log" 2>"$OUT/stderr.log"
code=$?
set -e
echo "run exited $code"

python3 - "$OUT" "$DEVICES" "$code" <<'PY'
import glob, json, re, sys
out, devices, code = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
log = open(f"{out}/stdout.log").read()
m = re.search(r"all (\d+) devices came online in ([\d.]+)s", log)
try:
    r = json.load(open(f"{out}/report.json"))
except (OSError, ValueError) as e:
    print(f"FAIL: no report ({e}); stderr:\n" + open(f"{out}/stderr.log").read()[-3000:])
    sys.exit(1)
workers = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/report.worker-*.json"))]
sup = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{out}/stderr.log").read())
c = r["counters"]
summary = {
    "devices": devices, "workers": len(workers),
    "seconds_to_all_online": float(m.group(2)) if m else None,
    "online_at_stop": r["online"], "ever_online": r["ever_online"],
    "connects": c["connects"], "connect_failures": c["connect_failures"],
    "handshakes": r["handshakes"], "bound": r["bound"], "reconnects": r["reconnects"],
    "handshake_p99_ms": r["latency"]["handshake"]["p99_ms"],
    "connect_p99_ms": r["latency"]["connect"]["p99_ms"],
    "worker_rss_peak_mib": [round(w["process"]["rss_peak_bytes"] / 2**20, 1) for w in workers],
    "worker_rss_per_online_session_bytes": round(
        sum(w["process"]["rss_bytes_online"] for w in workers) / max(1, r["online"])),
    "fleet_cpu_secs": round(sum(w["process"]["cpu_user_secs"] + w["process"]["cpu_system_secs"]
                                for w in workers), 1),
    "largest_process_max_rss_mib": round(int(sup.group(1)) / 1024, 1) if sup else None,
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
if r["ever_online"] < devices or r["online"] < devices or code != 0:
    print(f"FAIL: {r['online']} of {devices} online at stop, {r['ever_online']} came online, "
          f"run exit code {code}", file=sys.stderr)
    sys.exit(1)
PY
