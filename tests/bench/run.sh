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
#   SOAK_MINUTES=30           length of the soak phase (0: none)
#   BENCH_DISK=1              also measure ingest with the state directory on the host's disk
#                             (a second machine; its state lives in build/bench-disk-state)
#   BENCH_REAL_CLI_TURNS=12   turns of the real-CLI phase (a machine of its own; real_cli.py)
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

# A signal ends the script through its EXIT trap, which powers the machines off.
trap 'exit 130' INT TERM
name=picortex-bench-$$
pid=$("$m" boot "$stage" "$name" | tail -n1)
trap '"$m" stop "$pid" "$name"' EXIT
ex() { "$m" exec "$pid" "$@"; }
# The staged test configuration, with two changes made before picortexd's first start:
# turns.max_concurrent suited to the concurrent phase, and the benchmark's people
# (picortex-bench's handle(kind, i) = +1555<kind:3><i:4>) added to the owner handles, so that no
# quarantine of strangers' chats applies to them.
configure() { # $1: the machine's PID
python3 - "/proc/$1/root/etc/picortex/picortexd.toml" "$max_conc" <<'PY'
import re, sys
path, max_conc = sys.argv[1], int(sys.argv[2])
handles = ["+15550002000"] + ["+1555%03d%04d" % (k, i) for k, n in ((10, 100), (20, 100), (30, 200)) for i in range(n)]
text = open(path).read()
def set_key(text, section, key, value):
    lines, out, cur, done = text.splitlines(), [], None, False
    for l in lines:
        m = re.match(r"\s*\[([^\]]+)\]\s*$", l)
        if m:
            if cur == section and not done:
                out.append(f"{key} = {value}"); done = True
            cur = m.group(1)
        elif cur == section and re.match(rf"\s*{key}\s*=", l):
            if not done:
                out.append(f"{key} = {value}"); done = True
            continue
        out.append(l)
    if not done:
        if cur != section:
            out += ["", f"[{section}]"]
        out.append(f"{key} = {value}")
    return "\n".join(out) + "\n"
text = set_key(text, "turns", "max_concurrent", str(max_conc))
# The shipped CPU quota per chat (dist/picortexd.toml), not the stage's 50%, which is there for
# sandbox.rs's quota check: a turn's sandbox set-up is charged to its chat's slice, so at 50% a
# new chat's first turn waits on the quota (cold p50 about 170 ms instead of about 140 here).
text = set_key(text, "turns", "cpu_quota", '"100%"')
# The shipped memory limit per chat too, not the stage's 256M (there for sandbox.rs's OOM test):
# the real CLI is a 380 MB executable whose pages, read from the host's disk, are charged to the
# first chat that runs it; under 256M they are evicted and read again all through its turns.
text = set_key(text, "turns", "memory_max", '"1G"')
text = set_key(text, "owner", "handles", "[" + ", ".join('"%s"' % h for h in handles) + "]")
open(path, "w").write("# max_concurrent, cpu_quota, memory_max and owner.handles set by tests/bench/run.sh\n" + text)
PY
}
configure "$pid"
# An API key, as every real deployment has one: each turn then carries it (the stand-in agent
# ignores it), which is part of what a turn's start costs.
printf '%s' sk-ant-bench-0000 > "/proc/$pid/root/etc/picortex/credentials/anthropic-api-key"
ex chmod 600 /etc/picortex/credentials/anthropic-api-key
install -m755 "$bin" "/proc/$pid/root/run/picortex-bench"
ex systemctl start linq-sim.service
ex systemctl enable --now picortexd.socket >/dev/null 2>&1

ex /run/picortex-bench --json /run/bench.json --max-concurrent "$max_conc" --soak-minutes "${SOAK_MINUTES:-30}" "$@"
mkdir -p "$(dirname "$out_json")"
cp "/proc/$pid/root/run/bench.json" "$out_json"

# Ingest again with the state directory on the host's disk: a second machine, the same phase.
if [ "${BENCH_DISK:-1}" = 1 ]; then
  disk=$repo/build/bench-disk-state
  rm -rf "$disk" && mkdir -p "$disk"
  dname=picortex-bench-disk-$$
  dpid=$(MACHINE_BIND="$disk:/var/lib/picortex" "$m" boot "$stage" "$dname" | tail -n1)
  trap '"$m" stop "$pid" "$name"; "$m" stop "$dpid" "$dname"' EXIT
  configure "$dpid"
  install -m755 "$bin" "/proc/$dpid/root/run/picortex-bench"
  "$m" exec "$dpid" systemctl start linq-sim.service
  "$m" exec "$dpid" systemctl enable --now picortexd.socket >/dev/null 2>&1
  "$m" exec "$dpid" /run/picortex-bench --json /run/bench-disk.json --phases ingest --ingest-disk
  python3 - "$out_json" "/proc/$dpid/root/run/bench-disk.json" <<'PY'
import json, sys
main, disk = (json.load(open(p)) for p in sys.argv[1:3])
main["metrics"].update(disk["metrics"])
main["details"]["ingest_disk"] = disk["details"].get("ingest")
json.dump(main, open(sys.argv[1], "w"), indent=2)
PY
  "$m" stop "$dpid" "$dname"
  trap '"$m" stop "$pid" "$name"' EXIT
  rm -rf "$disk"
fi

# The real CLI (pinned, build/claude-cli) against the Messages API stand-in: a machine of its own
# with [agent] pointed at both, sequential turns in one chat (tests/bench/real_cli.py).
rname=picortex-bench-cli-$$
rpid=$("$m" boot "$stage" "$rname" | tail -n1)
trap '"$m" stop "$pid" "$name"; "$m" stop "$rpid" "$rname"' EXIT
configure "$rpid"
python3 - "/proc/$rpid/root/etc/picortex/picortexd.toml" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read().replace('command = "/usr/lib/picortex-test/claude-standin"',
    'command = "/usr/lib/picortex-test/claude"\nenv = { ANTHROPIC_BASE_URL = "http://198.51.100.1" }')
assert 'picortex-test/claude"' in text, "the [agent] command line of the staged configuration changed"
open(path, "w").write(text)
PY
printf '%s' sk-ant-bench > "/proc/$rpid/root/etc/picortex/credentials/anthropic-api-key"
"$m" exec "$rpid" chmod 600 /etc/picortex/credentials/anthropic-api-key
"$m" exec "$rpid" systemctl start anthropic-standin.service linq-sim.service
"$m" exec "$rpid" systemctl enable --now picortexd.socket >/dev/null 2>&1
python3 "$here/real_cli.py" "/proc/$rpid/root" "$out_json" "${BENCH_REAL_CLI_TURNS:-12}"
"$m" stop "$rpid" "$rname"
trap '"$m" stop "$pid" "$name"' EXIT

# Where a warm turn's time goes: journal timestamps of one chat's measured turns.
echo
echo "== where a warm turn's time goes (journal of the machine, median over the measured turns)"
ex journalctl --namespace='*' --no-pager -o json --output-fields=MESSAGE,SYSLOG_IDENTIFIER,UNIT,PICORTEX_TURN,PICORTEX_UNIT,PICORTEX_CHAT,PICORTEX_EVENT_ID,PICORTEX_OUTCOME \
  >"/proc/$pid/root/run/journal.json" 2>/dev/null || true
python3 "$here/breakdown.py" "$out_json" "/proc/$pid/root/run/journal.json" || echo "(breakdown unavailable)"
# The whole journal, for a closer look at anything odd (the machine is gone after this script).
ex journalctl --namespace='*' --no-pager -o short-precise >"$(dirname "$out_json")/bench-journal.txt" 2>/dev/null || true
echo
echo "JSON report: $out_json; the machine's journal: $(dirname "$out_json")/bench-journal.txt"
