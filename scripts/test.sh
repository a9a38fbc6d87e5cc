#!/usr/bin/env bash
# `make test`: every check and test, arranged for a two-core machine that starts from
# nothing (CI has 90 minutes; the goal is under 35).
#
#   1. What downloads (apt, pip, npm: scripts/deps.sh --test-downloads, Debian's chromium)
#      runs in the background while the cores compile: the web page, the cargo-installed
#      tools, clippy, and every test binary.
#   2. Two lanes then run side by side, each step a make target: the Rust suites (unit,
#      api-postgres, campaign), and everything else (web-test, worker-test, deploy-check,
#      e2e, schemathesis). Most of their time is spent waiting on servers and browsers,
#      not on the cores. KILN_TEST_LANES=1 runs them one after the other instead.
#
# Each lane writes its own log, printed whole when the lane ends, and a summary at the end
# gives every step's time. Every step still runs when an earlier one failed, so one run
# reports every failure; the exit status is non-zero when any step failed.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
make=${MAKE:-make}
logs=$(mktemp -d "${TMPDIR:-/tmp}/kiln-test.XXXXXX")
summary=$logs/summary
: >"$summary"

# Runs one step (a command), timing it into the summary; returns its status.
step() {
    local name=$1 start=$SECONDS status=0
    shift
    echo "==> $name"
    "$@" || status=$?
    if [ "$status" -eq 0 ]; then
        printf '%-16s %5ds  ok\n' "$name" $((SECONDS - start)) >>"$summary"
    else
        printf '%-16s %5ds  FAILED (exit %d)\n' "$name" $((SECONDS - start)) "$status" >>"$summary"
    fi
    return "$status"
}

# Runs the given make targets one after the other; returns non-zero when any failed.
lane() {
    local failed=0 target
    for target in "$@"; do
        step "$target" "$make" --no-print-directory "$target" || failed=1
    done
    return "$failed"
}

downloads() {
    ./scripts/deps.sh --test-downloads && ./scripts/web.sh browser
}

failed=0
start=$SECONDS

# 1. Downloads in the background; compiles in the foreground.
step downloads downloads >"$logs/downloads.log" 2>&1 &
downloads_pid=$!
step web "$make" --no-print-directory web || failed=1
step tools ./scripts/deps.sh --test-build || failed=1
step lint "$make" --no-print-directory lint || failed=1
step build cargo nextest run --workspace --locked --no-run || failed=1
if ! wait "$downloads_pid"; then
    failed=1
fi
echo "==> downloads (ran beside the compile)"
cat "$logs/downloads.log"

# 2. The two lanes.
rust_lane=(unit api-postgres campaign)
other_lane=(web-test worker-test deploy-check e2e schemathesis)
if [ "${KILN_TEST_LANES:-2}" = 1 ]; then
    lane "${rust_lane[@]}" "${other_lane[@]}" || failed=1
else
    lane "${rust_lane[@]}" >"$logs/rust.log" 2>&1 &
    rust_pid=$!
    lane "${other_lane[@]}" >"$logs/other.log" 2>&1 &
    other_pid=$!
    wait "$other_pid" || failed=1
    echo "==> lane: web-test worker-test deploy-check e2e schemathesis"
    cat "$logs/other.log"
    wait "$rust_pid" || failed=1
    echo "==> lane: unit api-postgres campaign"
    cat "$logs/rust.log"
fi

echo
echo "make test: every step (logs in $logs)"
cat "$summary"
printf '%-16s %5ds\n' total $((SECONDS - start))
if [ "$failed" -ne 0 ]; then
    echo "make test: FAILED"
    exit 1
fi
echo "make test: all passed"
