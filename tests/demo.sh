#!/bin/bash
# make demo: the whole system end to end in a throwaway systemd. Boots it with the staged
# install, starts the Linq simulator, enables picortexd.socket, has a handle text the bot twice
# in a 1:1 chat, and prints the conversation, the turn units that ran, and one turn's journal.
# Exits non-zero if anything failed; always powers the machine off.
set -euo pipefail
stage=${1:?usage: demo.sh STAGE}
here=$(cd "$(dirname "$0")" && pwd)
m=$here/harness/machine.sh
name=picortex-demo-$$
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "booting a throwaway systemd (overlay of /, own namespaces)"
pid=$("$m" boot "$stage" "$name" | tail -n1)
trap '"$m" stop "$pid" "$name"' EXIT
ex() { "$m" exec "$pid" "$@"; }
sim() { ex curl -sf --unix-socket /run/linq-sim/control.sock "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

ex systemctl start linq-sim.service
ex systemctl enable --now picortexd.socket
echo "picortexd.socket: $(ex systemctl is-active picortexd.socket); picortexd.service: $(ex systemctl is-active picortexd.service || true) (starts on the first connection)"

handle=+15550002000
say "$handle texts the bot: \"hello, are you there?\""
chat=$(sim -X POST -H 'Content-Type: application/json' -d "{\"from\":\"$handle\",\"text\":\"hello, are you there?\"}" http://sim/control/inbound | json 'd["chat_id"]')
wait_replies() {
  for _ in $(seq 1 300); do
    n=$(sim "http://sim/control/sent?chat_id=$chat" | json 'len(d)')
    [ "$n" -ge "$1" ] && return 0
    sleep 0.1
  done
  echo "no reply from the bot after 30 s" >&2; ex journalctl --no-pager -n 80 >&2; return 1
}
wait_replies 1
say "$handle texts again: \"what did I just ask you?\""
sim -X POST -H 'Content-Type: application/json' -d "{\"from\":\"$handle\",\"chat_id\":\"$chat\",\"text\":\"what did I just ask you?\"}" http://sim/control/inbound >/dev/null
wait_replies 2

say "the conversation (chat $chat)"
sim "http://sim/control/messages?chat_id=$chat" | python3 -c '
import json, sys
for m in json.load(sys.stdin):
    who = "  bot" if m["direction"] == "outbound" else "  " + (m.get("from") or "?")
    arrow = "<" if m["direction"] == "outbound" else ">"
    reply = " (in reply to %s)" % m["reply_to"][:8] if m.get("reply_to") else ""
    print("%-14s %s %s%s" % (who, arrow, m["text"], reply))
'

tag=$(printf '%s' "$chat" | sha256sum | cut -c1-8)
say "the chat's user and home"
ex getent passwd "chat-$tag"
ex stat -c '%A %U:%G %n' "/var/lib/picortex/chats/$tag"
echo "slice picortex-chat-$tag.slice: MemoryMax=$(ex systemctl show -P MemoryMax "picortex-chat-$tag.slice") TasksMax=$(ex systemctl show -P TasksMax "picortex-chat-$tag.slice")"

say "the turn units that ran"
ex journalctl --no-pager -o cat _PID=1 | grep -E 'picortex-turn-[0-9a-f]+\.service' | grep -E 'Started|Deactivated|Finished' || true
# In the order they ran. The first turn starts its own unit; after it, each chat's next turn
# runs in a spare unit started ahead of time (README: "Spare units").
units=$(ex journalctl --namespace='*' --no-pager -o verbose "PICORTEX_CHAT=$chat" SYSLOG_IDENTIFIER=picortex-run | sed -n 's/^ *_SYSTEMD_UNIT=//p' | awk '!seen[$0]++')
[ -n "$units" ] || { echo "no turn units found in the journal" >&2; exit 1; }
echo "$units"

turn=$(echo "$units" | head -n1 | sed 's/picortex-turn-\(.*\)\.service/\1/')   # the first turn: its unit id is its turn id
say "journal of one turn: journalctl --namespace='*' PICORTEX_CHAT=$chat PICORTEX_TURN=$turn"
ex journalctl --namespace='*' --no-pager -o short-precise "PICORTEX_CHAT=$chat" "PICORTEX_TURN=$turn"

say "the gateway, as an operator sees it"
ex systemctl status --no-pager -n 0 picortexd.service | head -n 12
ex curl -s http://127.0.0.1:8470/health; echo
n=$(sim "http://sim/control/sent?chat_id=$chat" | json 'len(d)')
[ "$n" = 2 ] || { echo "expected 2 replies, got $n" >&2; exit 1; }
say "demo OK"
