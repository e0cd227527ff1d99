#!/bin/bash
# Runs as PID 1 of fresh PID/mount/UTS/IPC/net namespaces (machine.sh starts it with unshare).
# Builds an overlay of the host's / with a tmpfs upper layer, gives the machine its own cgroup
# subtree and cgroup namespace, then execs a real systemd inside. The host root is only ever the
# read-only lower layer: nothing the machine does (useradd, tmpfiles, units) reaches the host.
set -euo pipefail
work=$1 stage=${2:-} name=${3:-picortex-test}
mount -t tmpfs -o mode=0755 tmpfs "$work/rw"
mkdir -p "$work/rw/upper" "$work/rw/work" "$work/root"
# The staged install is copied into the upper layer: a second lower layer inside / would overlap
# the / layer, which overlayfs refuses (ELOOP).
[ -n "$stage" ] && cp -a "$stage/." "$work/rw/upper/"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/rw/upper,workdir=$work/rw/work" "$work/root"
root=$work/root
# Host directories the stage asks for, read-only at fixed places (HOST:GUEST per line; the real
# Claude Code CLI, see stage-extras.sh).
if [ -f "$root/usr/lib/picortex-test/host-binds" ]; then
  while IFS=: read -r src dst; do
    [ -d "$src" ] || continue
    mkdir -p "$root$dst"
    mount --bind "$src" "$root$dst"
    mount -o remount,bind,ro "$root$dst"
  done < "$root/usr/lib/picortex-test/host-binds"
fi
# MACHINE_BIND=HOST_DIR:GUEST_DIR puts a directory of the host's disk into the machine (the bench
# measures ingest with the state directory on a real disk). Only what the caller names.
if [ -n "${MACHINE_BIND:-}" ]; then
  mkdir -p "$root${MACHINE_BIND#*:}"
  mount --bind "${MACHINE_BIND%%:*}" "$root${MACHINE_BIND#*:}"
fi

# Own cgroup subtree in every hierarchy the host has, so machines never share cgroups with each
# other or the host, and the whole machine is cleaned up by removing one directory per hierarchy.
hier=()
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then hier=(/sys/fs/cgroup)
else for h in /sys/fs/cgroup/*/; do [ -f "$h/cgroup.procs" ] && hier+=("${h%/}"); done; fi
for h in "${hier[@]}"; do
  mkdir -p "$h/$name"
  # cgroup v1 cpuset refuses tasks until cpus and mems are set.
  [ -f "$h/$name/cpuset.cpus" ] && cat "$h/cpuset.cpus" > "$h/$name/cpuset.cpus" && cat "$h/cpuset.mems" > "$h/$name/cpuset.mems"
  echo $$ > "$h/$name/cgroup.procs"
done

# Not recursively: the host's /dev may have mounts stacked on /dev/shm and /dev/pts (this
# kind of machine has two of each), and every one of them would be in the machine's mount table,
# which systemd parses over and over while it builds each sandbox, so a machine of the test
# harness would pay for mounts no real server has. The host's ptys, once; /dev/shm and
# /dev/mqueue below are the machine's own.
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
# The host's /dev is bound in, but shared memory and message queues must be the machine's own:
# a private tmpfs over /dev/shm (else it is the host's, seen by every other machine too) and an
# mqueue mounted from the machine's own IPC namespace. The mounts stay in this namespace.
mount -t tmpfs -o mode=1777,nosuid,nodev,size=256M tmpfs "$root/dev/shm"
if [ -d "$root/dev/mqueue" ]; then mount -t mqueue -o nosuid,nodev,noexec mqueue "$root/dev/mqueue"; fi
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
# Read-only, as container managers do: the machine must not change the host's kernel settings.
mount -o remount,bind,ro "$root/sys"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
ip link set lo up
hostname "$name"
echo "$name" > "$root/etc/hostname"
echo "$$" > "$work/pid.inner"
# Enter a cgroup namespace rooted at the subtree above; boot-inner.sh does the rest.
exec unshare --cgroup "$(dirname "$0")/boot-inner.sh" "$root" "$name" "${hier[@]}"
