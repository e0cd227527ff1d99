#!/bin/bash
# make bench: boots a throwaway systemd with the staged install (tests/harness/machine.sh), sets
# picortex up for the run (configuration written before picortexd's first start), runs
# picortex-bench inside the machine (its network namespace, as root), prints the table and the
# BENCH lines, writes build/bench.json, and adds a breakdown of where a warm turn's time goes,
# from the machine's journal. Always powers the machine off.
#
#   tests/bench/run.sh STAGE [picortex-bench args...]
#   BENCH_MAX_CONCURRENT=50   turns.max_concurrent for the run (the concurrent phase runs 50 chats)
#   BENCH_JSON=PATH           where to write the JSON report (default build/bench.json)
set -euo pipefail
stage=${1:?usage: run.sh STAGE [picortex-bench args...]}
shift
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
m=$repo/tests/harness/machine.sh
out_json=${BENCH_JSON:-$repo/build/bench.json}
max_conc=${BENCH_MAX_CONCURRENT:-50}
[ "$(id -u)" = 0 ] || { echo "run.sh: must run as root (it boots a systemd in namespaces)" >&2; exit 1; }

cargo build --release --locked -p picortex-bench
bin=$repo/target/release/picortex-bench

name=picortex-bench-$$
pid=$("$m" boot "$stage" "$name" | tail -n1)
trap '"$m" stop "$pid" "$name"' EXIT
ex() { "$m" exec "$pid" "$@"; }

# The benchmark's people (picortex-bench's handle(kind, i) = +1555<kind:3><i:4>) are listed as
# owner handles, so no quarantine of strangers' chats applies to them.
owners='"+15550002000"'
for kind in 010 020 030; do
  for i in $(seq 0 99); do owners+=$(printf ', "+1555%s%04d"' "$kind" "$i"); done
done
ex /bin/sh -c 'cat > /etc/picortex/picortexd.toml' <<TOML
# Written by tests/bench/run.sh: the test configuration, with max_concurrent suited to the bench.
[linq]
api_base = "http://127.0.0.1:8900/api/partner"
bot_names = ["Cortex"]

[owner]
handles = [$owners]

[turns]
max_concurrent = $max_conc
memory_max = "256M"
runtime_max_s = 60

[agent]
command = "/usr/lib/picortex-test/claude-standin"
TOML
install -m755 "$bin" "/proc/$pid/root/run/picortex-bench"
ex systemctl start linq-sim.service
ex systemctl enable --now picortexd.socket >/dev/null 2>&1

ex /run/picortex-bench --json /run/bench.json --max-concurrent "$max_conc" "$@"
mkdir -p "$(dirname "$out_json")"
cp "/proc/$pid/root/run/bench.json" "$out_json"

# Where a warm turn's time goes: journal timestamps of one chat's measured turns.
echo
echo "== where a warm turn's time goes (journal of the machine, median over the measured turns)"
ex journalctl --no-pager -o json --output-fields=MESSAGE,SYSLOG_IDENTIFIER,_SYSTEMD_UNIT,UNIT,PICORTEX_TURN,PICORTEX_CHAT,S0_TURN,PICORTEX_OP,PICORTEX_OUTCOME,__REALTIME_TIMESTAMP \
  >"/proc/$pid/root/run/journal.json" 2>/dev/null || true
python3 "$here/breakdown.py" "$out_json" "/proc/$pid/root/run/journal.json" || echo "(breakdown unavailable)"
echo
echo "JSON report: $out_json"
