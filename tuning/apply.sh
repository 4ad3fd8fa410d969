#!/usr/bin/env bash
# Applies what it can of tuning/sysctl.conf and the descriptor limit, then reports what it
# could not set and why. Never required by the tests. Run as root for the sysctls.
#
#   bash tuning/apply.sh            # apply and report
#   bash tuning/apply.sh --check    # only report current values against the wanted ones
set -u
here=$(cd "$(dirname "$0")" && pwd)
check_only=0
[ "${1:-}" = "--check" ] && check_only=1
ok=0; failed=0

while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  key=$(echo "${line%%=*}" | xargs); want=$(echo "${line#*=}" | xargs)
  path="/proc/sys/$(echo "$key" | tr . /)"
  if [ ! -e "$path" ]; then
    echo "SKIP  $key: not present on this kernel (module not loaded?)"; continue
  fi
  have=$(xargs < "$path")
  if [ "$have" = "$want" ]; then echo "OK    $key = $want"; ok=$((ok+1)); continue; fi
  # A ceiling already higher than wanted is left alone (tcp_tw_reuse is a mode, not a ceiling).
  if [[ "$have" =~ ^[0-9]+$ && "$want" =~ ^[0-9]+$ && "$key" != net.ipv4.tcp_tw_reuse ]] \
     && [ "$have" -gt "$want" ]; then
    echo "OK    $key = $have (at least $want)"; ok=$((ok+1)); continue
  fi
  if [ $check_only = 1 ]; then echo "DIFF  $key = $have (want $want)"; failed=$((failed+1)); continue; fi
  if sysctl -q -w "$key=$want" >/dev/null 2>&1; then
    echo "SET   $key = $want (was $have)"; ok=$((ok+1))
  else
    echo "FAIL  $key = $have (want $want): $(sysctl -w "$key=$want" 2>&1 | tail -1)"; failed=$((failed+1))
  fi
done < "$here/sysctl.conf"

# Descriptors: the soft limit can always rise to the hard limit; raising the hard limit needs
# CAP_SYS_RESOURCE (root outside a restricted container), and stays bounded by fs.nr_open.
want_nofile=1048576
hard=$(ulimit -Hn); soft=$(ulimit -Sn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want_nofile" ]; then
  if [ $check_only = 0 ] && ulimit -Hn "$want_nofile" 2>/dev/null; then
    echo "SET   nofile hard = $want_nofile (was $hard) for this shell and its children"
  else
    echo "FAIL  nofile hard = $hard (want $want_nofile): raising it needs CAP_SYS_RESOURCE;"
    echo "      set it in /etc/security/limits.conf, systemd LimitNOFILE=, or the container's"
    echo "      ulimit, or split the fleet: each process holds about hard/1 sessions as a"
    echo "      client and hard/2 with the embedded server (see --first-device)."
    failed=$((failed+1))
  fi
else
  echo "OK    nofile hard = $hard"
fi
echo "nofile soft = $soft (mpush-fleet raises its own soft limit to the hard limit at start)"
echo "summary: $ok settings as wanted, $failed not"
[ $failed = 0 ]
