#!/bin/bash
# Installs what `make test`, `make demo` and `make bench` need on a fresh Debian 12 machine:
# systemd, dbus, polkitd and iproute2 for the throwaway systemd; btrfs-progs for the chats
# filesystem; libnss-systemd for the chat users' records; libfaketime for one fault test; python3-venv for the Linq
# client compatibility test; cargo-nextest; the pinned real Claude Code CLI (project-local). Quiet when everything is already there.
set -euo pipefail
need=()
[ -x /lib/systemd/systemd ] || need+=(systemd)
command -v dbus-daemon >/dev/null || need+=(dbus)
[ -x /usr/lib/polkit-1/polkitd ] || need+=(polkitd)
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
# The clock-jump fault test moves the gateway's wall clock with libfaketime's LD_PRELOAD.
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need+=(libfaketime)
command -v useradd >/dev/null || need+=(passwd)
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
# Chat users are systemd user records (/etc/userdb), which nss-systemd resolves; its package
# adds `systemd` to nsswitch.conf's passwd and group lines.
ls /lib/*/libnss_systemd.so.2 >/dev/null 2>&1 || need+=(libnss-systemd)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# The real Claude Code CLI (tests/harness/install-claude-cli.sh) comes from the npm registry.
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install --locked cargo-nextest >&2
fi
"$(dirname "$0")/install-claude-cli.sh"
