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

mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
ip link set lo up
hostname "$name"
echo "$name" > "$root/etc/hostname"
echo "$$" > "$work/pid.inner"
# Enter a cgroup namespace rooted at the subtree above, and mount the cgroup filesystems afresh
# inside it so systemd sees its subtree as the root.
exec unshare --cgroup /bin/bash -c '
set -euo pipefail
root=$1; shift
umount -R "$root/sys/fs/cgroup" 2>/dev/null || true
mount -t tmpfs -o mode=0755 cgroup "$root/sys/fs/cgroup"
for h in "$@"; do
  b=$(basename "$h")
  if [ "$h" = /sys/fs/cgroup ]; then mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"; continue; fi
  mkdir -p "$root/sys/fs/cgroup/$b"
  case $b in
    unified) mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup/unified" ;;
    systemd) mount -t cgroup -o none,name=systemd cgroup "$root/sys/fs/cgroup/systemd" ;;
    *) mount -t cgroup -o "$b" cgroup "$root/sys/fs/cgroup/$b" ;;
  esac
done
exec chroot "$root" env container=picortex-test /lib/systemd/systemd --system --log-target=console
' boot "$root" "${hier[@]}"
