#!/bin/bash
# A throwaway systemd for tests and the demo (SPEC §4). Never touches the host root: the machine
# runs on an overlay of / with a tmpfs upper layer, in its own PID, mount, UTS, IPC, network and
# cgroup namespaces, so useradd, tmpfiles and units all stay inside it.
#
#   machine.sh boot STAGE NAME     boot one; prints its PID (as the host sees PID 1 of the machine)
#   machine.sh exec PID CMD...     run a command inside it (as root, clean environment)
#   machine.sh journal PID [ARGS]  its journal
#   machine.sh stop PID NAME       power it off and remove every trace (cgroups, work dir)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base=/run/picortex-machines

enter() {
  local pid=$1; shift
  nsenter -t "$pid" -m -p -u -i -n -C -r -w \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

# Power a machine off (PID: its systemd as the host sees it) and remove every trace of it.
stop_machine() {
  local pid=$1 name=$2 loops=""
  if kill -0 "$pid" 2>/dev/null; then
    # The loop device under the machine's chats filesystem (var-lib-picortex-chats.mount), by
    # device and backing inode, so that only that one is ever detached below.
    loops=$(enter "$pid" /bin/sh -c 'd=$(findmnt -n -o SOURCE --mountpoint /var/lib/picortex/chats 2>/dev/null || true)
      case $d in /dev/loop*) losetup -n -O NAME,BACK-INO,BACK-MAJ:MIN "$d" ;; esac' 2>/dev/null || true)
    enter "$pid" systemctl poweroff --no-block >/dev/null 2>&1 || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  # The machine's cgroup subtrees (one per hierarchy), deepest first.
  for h in /sys/fs/cgroup /sys/fs/cgroup/*; do
    [ -d "$h/$name" ] && find "$h/$name" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # Unmounting detaches a loop device mount(8) set up (autoclear), and so does the end of the
  # machine's mount namespace; should either not happen, the device must not outlive the machine.
  while read -r dev ino majmin; do
    [ -n "${dev:-}" ] || continue
    for _ in $(seq 1 50); do
      [ "$(losetup -n -O BACK-INO,BACK-MAJ:MIN "$dev" 2>/dev/null | xargs)" = "$ino $majmin" ] || break
      sleep 0.1
    done
    if [ "$(losetup -n -O BACK-INO,BACK-MAJ:MIN "$dev" 2>/dev/null | xargs)" = "$ino $majmin" ]; then
      losetup -d "$dev" || true
    fi
  done <<< "$loops"
  rm -rf "${base:?}/$name"
}

case ${1:-} in
boot)
  stage=$2 name=$3
  [ "$(id -u)" = 0 ] || { echo "machine.sh: must run as root (it boots a systemd in namespaces)" >&2; exit 1; }
  [ -d "$stage" ] || { echo "machine.sh: no staged install at $stage (run: make stage)" >&2; exit 1; }
  work=$base/$name
  rm -rf "$work"; mkdir -p "$work/rw" "$work/root"
  setsid unshare --pid --fork --mount --propagation private --uts --ipc --net \
    "$here/boot-root.sh" "$work" "$stage" "$name" </dev/null >"$work/console.log" 2>&1 &
  outer=$!
  # Whatever ends this script before the machine is handed over (a failure below, a signal, a
  # caller's timeout) takes the machine down with it: a machine nobody knows the PID of would
  # outlive its test. Killing the namespace's init (the unshare's child) ends all inside it.
  handed_over=""
  abandon() {
    [ -n "$handed_over" ] && return
    local init
    init=$(pgrep -P "$outer" | head -n1 || true)
    [ -z "$init" ] || kill -KILL "$init" 2>/dev/null || true
    kill -KILL "$outer" 2>/dev/null || true
    wait "$outer" 2>/dev/null || true
    stop_machine "${init:-$outer}" "$name"
  }
  trap abandon EXIT
  trap 'exit 130' INT TERM HUP
  pid=""
  # Slow under load: the boot copies the stage into a tmpfs first.
  for _ in $(seq 1 600); do
    pid=$(pgrep -P "$outer" -x systemd || true)
    [ -n "$pid" ] && break
    if ! kill -0 "$outer" 2>/dev/null; then echo "machine.sh: boot failed:" >&2; cat "$work/console.log" >&2; exit 1; fi
    sleep 0.1
  done
  [ -n "$pid" ] || { echo "machine.sh: systemd did not start within 60 s" >&2; cat "$work/console.log" >&2; exit 1; }
  echo "$pid" > "$work/pid"
  for _ in $(seq 1 200); do
    [ -S "/proc/$pid/root/run/systemd/private" ] && break
    sleep 0.05
  done
  state=$(timeout 90 nsenter -t "$pid" -m -p -u -i -n -C -r -w env -i PATH=/usr/bin:/bin systemctl is-system-running --wait 2>/dev/null || true)
  case $state in
    running) ;;
    *) echo "machine.sh: machine $name is $state after boot:" >&2
       enter "$pid" systemctl --failed --no-pager >&2 || true ;;
  esac
  handed_over=1
  echo "$pid"
  ;;
exec)
  pid=$2; shift 2
  enter "$pid" "$@"
  ;;
journal)
  pid=$2; shift 2
  enter "$pid" journalctl --namespace='*' --no-pager -o short-precise "$@"
  ;;
stop)
  stop_machine "$2" "$3"
  ;;
*)
  sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
