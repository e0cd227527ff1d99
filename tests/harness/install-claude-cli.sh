#!/bin/bash
# Installs the pinned real Claude Code CLI into build/claude-cli (project-local; never global)
# for the real-CLI integration tests (tests/integration/tests/real_cli.rs) and the bench. The npm
# package ships its native linux-x64 binary as an optional dependency; that binary is what runs
# (no Node.js at run time), so install scripts are not run. Quiet when the pinned version is there.
#   CLAUDE_CODE_VERSION overrides the pin (the tests are written against the pinned one).
set -euo pipefail
version=${CLAUDE_CODE_VERSION:-2.1.330}
repo=$(cd "$(dirname "$0")/../.." && pwd)
prefix=$repo/build/claude-cli
bin=$prefix/node_modules/@anthropic-ai/claude-code-linux-x64/claude
have=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$prefix/node_modules/@anthropic-ai/claude-code-linux-x64/package.json" 2>/dev/null | head -1 || true)
if [ "$have" = "$version" ] && [ -x "$bin" ]; then exit 0; fi
command -v npm >/dev/null || { echo "install-claude-cli: npm is missing (apt-get install npm, or make deps)" >&2; exit 1; }
echo "installing @anthropic-ai/claude-code@$version into $prefix" >&2
rm -rf "$prefix"
mkdir -p "$prefix"
npm install --prefix "$prefix" --no-save --no-audit --no-fund --ignore-scripts --loglevel=error \
  "@anthropic-ai/claude-code@$version" "@anthropic-ai/claude-code-linux-x64@$version" >&2
[ -x "$bin" ] || { echo "install-claude-cli: no native binary at $bin after npm install" >&2; exit 1; }
got=$("$bin" --version 2>/dev/null || true)
case $got in
  "$version"*) ;;
  *) echo "install-claude-cli: $bin --version says '$got', expected $version" >&2; exit 1 ;;
esac
