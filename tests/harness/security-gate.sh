#!/bin/bash
# The security gate of SPEC O6: `systemd-analyze security` exposure scores of picortex's units
# must stay in the "OK"/"SAFE" bands. Run it INSIDE a machine that has picortex installed
# (tests/integration/tests/security.rs does, so `make test` and CI run it):
#
#   security-gate.sh [TURN_UNIT]
#
# It scores the installed picortexd.service, picortex-provision.service and
# picortex-egress.service, and a real turn
# unit while it runs: TURN_UNIT, or a running picortex-turn-*.service, or, when none runs and
# the Linq simulator of the tests is there, one it starts with a `#sleep=5` message (a
# transient unit can only be scored while it is loaded). Prints one line per unit and fails
# when any score is over its limit.
#
# Limits (lower is better; override with the environment): gateway 2.0, turn 3.0, helper 5.0,
# egress 2.5 (it starts as root to read the agent's credential, then drops to its own user).
set -euo pipefail
MAX_GATEWAY=${MAX_GATEWAY:-2.0}
MAX_TURN=${MAX_TURN:-3.0}
MAX_HELPER=${MAX_HELPER:-5.0}
MAX_EGRESS=${MAX_EGRESS:-2.5}
SIM_SOCK=${SIM_SOCK:-/run/linq-sim/control.sock}
OWNER=${OWNER:-+15550002000}

running_turn() {
  systemctl list-units --plain --no-legend --state=running 'picortex-turn-*.service' 2>/dev/null | awk 'NR==1 {print $1}'
}

turn=${1:-$(running_turn)}
if [ -z "$turn" ]; then
  if [ ! -S "$SIM_SOCK" ]; then
    echo "security-gate: no turn unit is running and there is no Linq simulator to start one; pass a running unit" >&2
    exit 2
  fi
  curl -sf --unix-socket "$SIM_SOCK" -X POST -H 'Content-Type: application/json' \
    -d "{\"from\":\"$OWNER\",\"text\":\"#sleep=5 security gate\"}" http://sim/control/inbound >/dev/null
  for _ in $(seq 1 300); do
    turn=$(running_turn)
    [ -n "$turn" ] && break
    sleep 0.1
  done
  [ -n "$turn" ] || { echo "security-gate: no turn unit started within 30 s" >&2; exit 2; }
fi

# "→ Overall exposure level for X: 1.5 OK :-)" → "1.5 OK"
score() {
  local out
  out=$(systemd-analyze security --no-pager "$1" 2>&1) || { echo "security-gate: systemd-analyze security $1 failed:" >&2; echo "$out" >&2; return 1; }
  printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p' | tail -1
}

fail=0
check() {
  local label=$1 unit=$2 max=$3 s
  s=$(score "$unit") || { fail=1; return; }
  [ -n "$s" ] || { echo "security-gate: no score for $unit" >&2; fail=1; return; }
  set -- $s
  local verdict=ok
  if awk -v s="$1" -v m="$max" 'BEGIN { exit !(s > m) }'; then verdict=OVER; fail=1; fi
  printf 'SECURITY %-8s %-58s %4s %-8s (max %s) %s\n' "$label" "$unit" "$1" "$2" "$max" "$verdict"
}

# The turn first, while it surely still runs.
check turn "$turn" "$MAX_TURN"
check gateway picortexd.service "$MAX_GATEWAY"
check helper picortex-provision.service "$MAX_HELPER"
check egress picortex-egress.service "$MAX_EGRESS"

if [ "$fail" != 0 ]; then
  echo "security-gate: FAILED (details: systemd-analyze security <unit>)" >&2
  exit 1
fi
echo "security-gate: passed"
