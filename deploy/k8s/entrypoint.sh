#!/bin/sh
# The pod's entrypoint: JOB_COMPLETION_INDEX (set by Kubernetes in an Indexed Job) picks this
# pod's device range, so the pods of one Job hold one fleet with no device twice:
#
#   first device = FIRST_DEVICE + JOB_COMPLETION_INDEX * DEVICES_PER_POD
#
# Inside the pod, `run --processes auto` splits the range again over as many processes as the
# pod's descriptor limit needs. At the end the report is printed as one line
# `report: {...}`, which `kubectl logs` collects for `mpush-fleet report merge`.
set -eu

: "${JOB_COMPLETION_INDEX:?not set: run this as a pod of an Indexed Job}"
: "${DEVICES_PER_POD:?not set}"
FIRST_DEVICE=${FIRST_DEVICE:-0}
CONFIG=${CONFIG:-/etc/mpush-fleet/fleet.toml}
MPUSH_FLEET=${MPUSH_FLEET:-mpush-fleet}
REPORT=${REPORT:-/tmp/report.json}

case "$JOB_COMPLETION_INDEX$DEVICES_PER_POD$FIRST_DEVICE" in
  *[!0-9]*) echo "JOB_COMPLETION_INDEX, DEVICES_PER_POD and FIRST_DEVICE must be numbers" >&2; exit 2 ;;
esac
first=$((FIRST_DEVICE + JOB_COMPLETION_INDEX * DEVICES_PER_POD))
if [ $((first + DEVICES_PER_POD)) -gt 4294967295 ]; then
  echo "devices $first..$((first + DEVICES_PER_POD)) do not fit mpush-fleet's u32 indices" >&2
  exit 2
fi

# The descriptor limit is the container runtime's; take all of it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

set +e
"$MPUSH_FLEET" run --config "$CONFIG" --processes auto \
  --first-device "$first" --devices "$DEVICES_PER_POD" \
  --metrics 0.0.0.0:9100 --report "$REPORT" --json "$@"
code=$?
set -e
if [ -s "$REPORT" ]; then
  printf 'report: %s\n' "$(tr -d '\n' < "$REPORT")"
fi
exit "$code"
