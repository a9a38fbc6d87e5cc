#!/usr/bin/env bash
# Installs what `make run` and `make test` need beyond the Rust toolchain. Idempotent:
# each step checks first and does nothing when the tool is already there.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if ! cargo fmt --version >/dev/null 2>&1; then
    rustup component add rustfmt
fi
if ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add clippy
fi
