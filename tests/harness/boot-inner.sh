#!/bin/bash
# Second half of boot-root.sh, run inside the machine's new cgroup namespace: mount the cgroup
# filesystems afresh so systemd sees its own subtree as the root, make the overlay the root of
# the mount namespace, and exec systemd.
set -euo pipefail
root=$1 name=$2; shift 2
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
# pivot_root, not chroot: systemd treats a chroot as a lesser environment. Then make the tree
# shared, as container managers do: systemd leaves propagation alone when it runs in a container,
# and needs it for credentials and sandboxing mounts. The sharing stays among this namespace's
# own mounts, since the namespace was created private.
cd "$root"
mkdir -p .host
pivot_root . .host
exec chroot . /bin/sh -c "umount -l /.host && rmdir /.host && mount --make-rshared / && exec env container=$name /lib/systemd/systemd --system --log-target=journal"
