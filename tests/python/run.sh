#!/bin/sh
# Run the linq-python wire-compatibility test against a built linq-sim.
#   cargo build -p linq-sim && tests/python/run.sh [pytest args]
# LINQ_SIM_BIN overrides the binary (default: target/debug/linq-sim).
set -eu
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt
exec .venv/bin/python -m pytest -q -p no:cacheprovider test_linq_python_compat.py "$@"
