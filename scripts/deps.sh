#!/usr/bin/env bash
# Installs what `make run` and `make test` need beyond the Rust toolchain. Idempotent:
# each step checks first and does nothing when the tool is already there.
#
# Usage: scripts/deps.sh [--test]. With --test (as `make test` runs it) it also
# installs what only the tests need: the glTF validator, which needs Node.js and npm.
set -euo pipefail

for_tests=false
if [ "${1:-}" = "--test" ]; then
    for_tests=true
fi

have() { command -v "$1" >/dev/null 2>&1; }

if ! cargo fmt --version >/dev/null 2>&1; then
    rustup component add rustfmt
fi
if ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add clippy
fi

# The Khronos glTF Validator, which the relief tests run on every model (tests only). `npm ci`
# installs exactly the locked versions; it runs again only when node_modules is missing
# or the lock file changed since the last install (its hash is kept beside the modules).
if $for_tests; then
    validator=tools/gltf-validate
    if ! have npm; then
        echo "deps: npm is missing; install Node.js 20 or later (with npm) for the glTF validator" >&2
        exit 1
    fi
    lock_hash=$(sha256sum "$validator/package-lock.json" | cut -d' ' -f1)
    stamp="$validator/node_modules/.kiln-lock-sha256"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_hash" ]; then
        (cd "$validator" && npm ci --no-audit --no-fund --loglevel=error)
        echo "$lock_hash" >"$stamp"
    fi
fi
