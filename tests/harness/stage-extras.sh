#!/bin/bash
# Adds what only tests and the demo need to a staged install: the Linq simulator (as a unit),
# the stand-in agent, a configuration that points picortexd at them, matching credentials, and
# masks for units of the host image that have no business in a test machine.
set -euo pipefail
stage=$1 targetdir=$2
install -Dm755 "$targetdir/linq-sim"       "$stage/usr/lib/picortex-test/linq-sim"
install -Dm755 "$targetdir/claude-standin" "$stage/usr/lib/picortex-test/claude-standin"
repo=$(cd "$(dirname "$0")/../.." && pwd)
install -Dm755 "$repo/tests/anthropic-standin/anthropic_standin.py" "$stage/usr/lib/picortex-test/anthropic-standin"

# The real Claude Code CLI (pinned, build/claude-cli; tests/harness/install-claude-cli.sh). Not
# a copy: the binary is ~380 MB and every machine boot copies the stage into its tmpfs. Nor a
# symlink to the host's path: a machine has its own /tmp (and a turn a private one), so a clone
# under /tmp would point nowhere. The harness binds the package's directory, read-only, at a
# fixed place in each machine (host-binds, read by boot-root.sh).
cli=$repo/build/claude-cli/node_modules/@anthropic-ai/claude-code-linux-x64/claude
if [ -x "$cli" ]; then
  clidir=$(dirname "$(readlink -f "$cli")")
  install -d "$stage/usr/lib/picortex-test/claude-cli"
  ln -sfn /usr/lib/picortex-test/claude-cli/claude "$stage/usr/lib/picortex-test/claude"
  printf '%s:%s\n' "$clidir" /usr/lib/picortex-test/claude-cli > "$stage/usr/lib/picortex-test/host-binds"
else
  echo "stage-extras: no real Claude Code CLI at $cli (tests/harness/install-claude-cli.sh); the real-CLI tests will fail" >&2
fi

secret="whsec_$(head -c 32 /dev/urandom | base64 -w0)"
token="test-token-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
install -dm700 "$stage/etc/picortex/credentials" "$stage/etc/linq-sim"
printf '%s' "$secret" > "$stage/etc/picortex/credentials/linq-webhook-secret"
printf '%s' "$token"  > "$stage/etc/picortex/credentials/linq-token"
printf '%s' "$secret" > "$stage/etc/linq-sim/webhook-secret"
printf '%s' "$token"  > "$stage/etc/linq-sim/token"
chmod 600 "$stage"/etc/picortex/credentials/* "$stage"/etc/linq-sim/*

cat > "$stage/etc/picortex/picortexd.toml" <<'TOML'
# Test configuration: Linq is the simulator on loopback, the agent is the stand-in.
[linq]
api_base = "http://127.0.0.1:8900/api/partner"
bot_names = ["Cortex"]
media_hosts = ["http://127.0.0.1:8900"]

[owner]
# The people of the integration tests are all the owner's, so that only tests/quarantine.rs and
# tests/attention.rs meet quarantine: their strangers write from +1555777xxxx.
# (One line: tests and the bench set keys line by line.)
handles = ["+15550002000", "+15550002001", "+15550002002", "+15550003000", "+15550003001", "+15550003002", "+15550003003", "+15550003004", "+15550009000", "+15550009001", "+15550009002", "+15550009003", "+15550009999"]

[turns]
max_concurrent = 4
memory_max = "256M"
cpu_quota = "50%"
io_weight = 50
runtime_max_s = 60

[agent]
command = "/usr/lib/picortex-test/claude-standin"
TOML

# The chats filesystem of a test machine: a sparse image in the machine's tmpfs upper layer.
printf 'PICORTEX_CHATS_FS_SIZE=2G\n' > "$stage/etc/picortex/chats-fs.conf"

mkdir -p "$stage/etc/systemd/system"
cat > "$stage/etc/systemd/system/linq-sim.service" <<'UNIT'
[Unit]
Description=Linq partner API simulator (tests and demo only)

[Service]
Type=exec
ExecStart=/usr/lib/picortex-test/linq-sim --api-listen 127.0.0.1:8900 --control-socket /run/linq-sim/control.sock --webhook-url http://127.0.0.1:8470/api/linq/inbound --webhook-secret-file /etc/linq-sim/webhook-secret --token-file /etc/linq-sim/token --bot-handle +15550001000
ExecStartPost=/bin/sh -c 'for i in $(seq 100); do [ -S /run/linq-sim/control.sock ] && exit 0; sleep 0.05; done; exit 1'
UNIT

# The Messages API stand-in as a test host of its own: a network namespace "api-host" joined to
# the machine's by a veth pair, 198.51.100.1 (TEST-NET-2) on its side, 198.51.100.2 on the
# machine's. Turns reach it through their real egress fence (which denies loopback and the
# machine's own addresses, never a public-looking host). Started by the tests that need it.
cat > "$stage/etc/systemd/system/api-host-net.service" <<'UNIT'
[Unit]
Description=Network namespace of the Messages API test host (tests only)

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -ec 'ip netns add api-host; ip link add api0 type veth peer name eth0 netns api-host; ip addr add 198.51.100.2/24 dev api0; ip link set api0 up; ip -n api-host link set lo up; ip -n api-host addr add 198.51.100.1/24 dev eth0; ip -n api-host link set eth0 up'
ExecStop=/bin/sh -c 'ip link del api0; ip netns del api-host'
UNIT
cat > "$stage/etc/systemd/system/anthropic-standin.service" <<'UNIT'
[Unit]
Description=Anthropic Messages API stand-in at 198.51.100.1 (tests only)
Requires=api-host-net.service
After=api-host-net.service

[Service]
Type=exec
NetworkNamespacePath=/run/netns/api-host
RuntimeDirectory=anthropic-standin
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
ExecStart=/usr/bin/python3 /usr/lib/picortex-test/anthropic-standin --listen 198.51.100.1:80 --state /run/anthropic-standin
ExecStartPost=/bin/sh -c 'for i in $(seq 200); do [ -e /run/anthropic-standin/ready ] && exit 0; sleep 0.05; done; exit 1'
UNIT

# Units of the host image a test machine must not run.
masks=(getty@tty1.service console-getty.service serial-getty@ttyS0.service postgresql.service
       e2scrub_reap.service systemd-timesyncd.service systemd-pstore.service apt-daily.timer
       apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer man-db.timer
       docker.service docker.socket containerd.service ssh.service cron.service
       systemd-networkd-wait-online.service proc-sys-fs-binfmt_misc.automount
       systemd-binfmt.service sys-fs-fuse-connections.mount)
mkdir -p "$stage/etc/systemd/system"
for u in "${masks[@]}"; do ln -sf /dev/null "$stage/etc/systemd/system/$u"; done
