#!/usr/bin/env bash
# The deployment checks (`make deploy-check`, docs/deploy.md): tests/deploy with pytest,
# in tools/deploy-check/.venv (actionlint, hadolint, shellcheck, docker compose,
# check-jsonschema, kubernetes-validate, yamllint), with nginx on PATH and the kiln binary
# cargo built. No Docker daemon is used or needed.
#
# Environment: KILN_BIN (the binary; default target/debug/kiln under CARGO_TARGET_DIR).
# Arguments are passed to pytest (e.g. -k nginx).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/deps.sh" --deploy-check

target=${CARGO_TARGET_DIR:-target}
case "$target" in
/*) ;;
*) target=$root/$target ;;
esac
export KILN_BIN=${KILN_BIN:-$target/debug/kiln}
if [ ! -x "$KILN_BIN" ]; then
    echo "deploy-check: $KILN_BIN is missing; build it first (cargo build --locked --bin kiln)" >&2
    exit 1
fi

venv=$root/tools/deploy-check/.venv
export PATH="$venv/bin:$PATH:/usr/sbin:$root/tools/deploy-check/nginx/usr/sbin"
cd "$root"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/deploy "$@"
