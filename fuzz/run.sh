#!/bin/bash
# make fuzz: build the cargo-fuzz targets with nightly, run each for FUZZ_SECONDS (default 60)
# on its corpus in fuzz/corpus/<target>, and print one line per target:
#   FUZZ <target> <executions> <crashes>
# Exits non-zero if any target crashed; the input that did is in fuzz/artifacts/<target>/
# (reproduce: fuzz/target/x86_64-unknown-linux-gnu/release/<target> <that file>).
#
# FUZZ_TARGETS      which targets (default: all of them)
# FUZZ_SANITIZER    cargo fuzz's --sanitizer (default none: the code under test is safe Rust,
#                   and what we look for are panics, failed properties and overflows, which the
#                   debug assertions catch; address roughly halves the executions per second)
# FUZZ_TOOLCHAIN    the nightly toolchain to use (default nightly)
set -euo pipefail
cd "$(dirname "$0")"
# The targets and logs live in fuzz/target whatever the caller's CARGO_TARGET_DIR says.
export CARGO_TARGET_DIR=$PWD/target

seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-webhook config turn_documents helper_args reply egress_request}
sanitizer=${FUZZ_SANITIZER:-none}
toolchain=${FUZZ_TOOLCHAIN:-nightly}
triple=x86_64-unknown-linux-gnu

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "fuzz: the $toolchain toolchain is missing (rustup toolchain install $toolchain --profile minimal)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

start=$SECONDS
cargo "+$toolchain" fuzz build -O -a -s "$sanitizer" >&2
echo "fuzz: targets built in $((SECONDS - start)) s" >&2

# A long run leaves thousands of inputs in a corpus, and replaying them all at the next start
# eats a short run's time: keep only those that add coverage (libFuzzer's merge; the seed-*
# files stay, and nothing is deleted unless the merge succeeded).
prune() {
    local t=$1 min=target/corpus-min/$1
    [ "$(find "corpus/$t" -type f | wc -l)" -gt 1000 ] || return 0
    rm -rf "$min" && mkdir -p "$min"
    "target/$triple/release/$t" -merge=1 "$min" "corpus/$t" >"target/merge-$t.log" 2>&1 || return 0
    find "corpus/$t" -type f ! -name 'seed-*' -delete
    find "$min" -type f -exec mv -t "corpus/$t" {} +
}

failed=0
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log=target/fuzz-$t.log
    rc=0
    # -timeout: an input that takes a second is a bug here (all of it is parsing).
    "target/$triple/release/$t" "corpus/$t" \
        -max_total_time="$seconds" -timeout=1 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n1)
    if [ -z "$execs" ]; then
        # No final stats (killed hard): the last status line's count, "#<n>\t…".
        execs=$(sed -n 's/^#\([0-9][0-9]*\)[[:space:]].*/\1/p' "$log" | tail -n1)
    fi
    crashes=$(grep -c 'Test unit written to' "$log" || true)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1
    fi
    if [ "$crashes" -ne 0 ]; then
        failed=1
        grep -E 'panicked at|Test unit written to|ERROR: libFuzzer' "$log" | head -n5 >&2 || true
    fi
    echo "FUZZ $t ${execs:-0} $crashes"
    [ "$crashes" -ne 0 ] || prune "$t"
done
exit "$failed"
