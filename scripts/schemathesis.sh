#!/usr/bin/env bash
# schemathesis against kiln's own OpenAPI document, with every check (`make schemathesis`).
#
# Starts target/debug/kiln under CARGO_TARGET_DIR (or $KILN_BIN) with a temporary configuration and data
# directory on a free loopback port, with `relief` (the built-in CPU engine, which takes
# real pictures) and a worker channel whose callbacks tools/schemathesis/kiln_hooks.py
# signs, and a first admin whose API token every request carries; waits for /ready;
# runs schemathesis on
# /openapi.json: every check, positive and negative data, the examples, coverage,
# fuzzing and stateful phases, bounded by the number of examples per operation; stops
# kiln; fails when schemathesis found anything. What it runs, what held and the few
# business rules the document cannot express are in docs/reliability.md.
#
# Environment: KILN_BIN (the binary), SCHEMATHESIS_EXAMPLES (examples per operation,
# default 100), SCHEMATHESIS_SEED (default fixed, so a run can be repeated; `random` for a
# new one), SCHEMATHESIS_ARGS (more options, e.g. `--include-path /api/v1/tasks`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target=$root/$target ;; esac
kiln=${KILN_BIN:-$target/debug/kiln}
tool=$root/tools/schemathesis
examples=${SCHEMATHESIS_EXAMPLES:-100}
seed=${SCHEMATHESIS_SEED:-20261201}

"$root/scripts/deps.sh" --schemathesis
if [ ! -x "$kiln" ]; then
    echo "schemathesis: $kiln is missing; build it first (cargo build --locked --bin kiln)" >&2
    exit 1
fi

work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# A queue deep enough that the run never meets `queue_full` (a documented 503 that
# not_a_server_error would count), and a short task deadline so that seed 002's waiting
# POST /api/generate never holds a request for three minutes. A worker channel whose one
# worker is never there (the discard port; its tasks would wait), whose secret the hooks
# sign callbacks with (tools/schemathesis/kiln_hooks.py), so that they get past 401.
secret="whsec_$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')"
cat >"$work/kiln.toml" <<EOF
[server]
bind = "127.0.0.1:0"
data_dir = "$work/data"
shutdown_grace = "5s"

[log]
dir = ""
level = "warn"

[tasks]
deadline = "30s"

[[channels]]
name = "relief"
type = "relief"
max_concurrency = 2
max_queue = 1000

[[channels.models]]
name = "relief"
kind = "image_to_3d"

[[channels]]
name = "workers"
type = "worker"
secret = "$secret"
max_concurrency = 1
max_queue = 5
models = [{ name = "remote", kind = "image_to_3d" }]

[channels.options]
workers = ["http://127.0.0.1:9"]

[tasks.default_models]
image_to_3d = "relief"
EOF

# A first admin, whose API token schemathesis sends, so the account and admin routes are
# exercised past 401 (open mode: the task faces work with or without it).
admin_password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')"
KILN_ADMIN__USERNAME=schemathesis KILN_ADMIN__PASSWORD="$admin_password" \
    "$kiln" serve --config "$work/kiln.toml" >"$work/kiln.out" 2>"$work/kiln.err" &
pid=$!
base=
for _ in $(seq 1 600); do
    base=$(sed -n 's|^kiln is running at \(http://[^ ]*\)/$|\1|p' "$work/kiln.out" | head -n 1)
    if [ -n "$base" ] && curl -fsS "$base/ready" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "schemathesis: kiln stopped before it was ready:" >&2
        cat "$work/kiln.err" >&2
        exit 1
    fi
    base=
    sleep 0.1
done
if [ -z "$base" ]; then
    echo "schemathesis: kiln was not ready within 60 s" >&2
    exit 1
fi

# Sign in as the admin and make the token (its text is shown once, in this answer).
session=$(curl -fsS -c "$work/cookies" -H 'content-type: application/json' \
    -d "{\"username\": \"schemathesis\", \"password\": \"$admin_password\"}" "$base/api/v1/session")
csrf=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["csrf_token"])' <<<"$session")
issued=$(curl -fsS -b "$work/cookies" -H 'content-type: application/json' -H "x-csrf-token: $csrf" \
    -d '{"name": "schemathesis"}' "$base/api/v1/me/tokens")
token=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])' <<<"$issued")
# The hooks keep schemathesis from revoking this token or demoting or disabling this admin.
protected=$(python3 -c 'import json, sys; i = json.load(sys.stdin)["item"]; print(i["id"] + "," + i["user_id"])' <<<"$issued")

seed_args=(--seed "$seed")
if [ "$seed" = random ]; then
    seed_args=()
fi

status=0
# Run from the temporary directory: nothing (reports, caches) is left in the tree.
(
    cd "$work"
    export PYTHONPATH="$tool${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=kiln_hooks
    export KILN_SCHEMATHESIS_SECRET="$secret" KILN_SCHEMATHESIS_PROTECTED="$protected"
    # shellcheck disable=SC2086 # SCHEMATHESIS_ARGS is a list of options
    "$tool/.venv/bin/schemathesis" --config-file "$tool/schemathesis.toml" run "$base/openapi.json" \
        --checks all \
        --mode all \
        --phases examples,coverage,fuzzing,stateful \
        --max-examples "$examples" \
        "${seed_args[@]}" \
        --workers 1 \
        --request-timeout 60 \
        --generation-database none \
        --no-color \
        --header "Authorization: Bearer $token" \
        ${SCHEMATHESIS_ARGS:-}
) || status=$?

if [ "$status" -ne 0 ]; then
    echo "schemathesis: failures (exit $status); kiln's log:" >&2
    tail -n 50 "$work/kiln.out" "$work/kiln.err" >&2
fi
exit "$status"
