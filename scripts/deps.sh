#!/usr/bin/env bash
# Installs what `make run` and `make test` need beyond the Rust toolchain. Idempotent:
# each step checks first and does nothing when the tool is already there.
#
# Usage: scripts/deps.sh [--test | --test-build | --test-downloads | --worker |
# --schemathesis | --openai-client | --deploy-check]. With --test it also installs what
# only the tests need: the glTF validator, which needs Node.js and npm, the S3 server
# s3s-fs, PostgreSQL's server, the Python worker's test environment (and shellcheck, for
# worker/install.sh), schemathesis's, the
# OpenAI client's and the deployment checks'. --test is the sum of two halves, which
# scripts/test.sh runs side by side: --test-build, what cargo compiles (busy cores), and
# --test-downloads, what apt, pip and npm fetch (busy network and disk). With --worker (as `make worker-test` runs it), --schemathesis (as
# `make schemathesis` runs it), --openai-client or --deploy-check (as `make deploy-check`
# runs it) it installs only that one environment.
set -euo pipefail

for_tests=false
build_half=true
download_half=true
only_worker=false
only_schemathesis=false
only_openai_client=false
only_deploy_check=false
if [ "${1:-}" = "--test" ]; then
    for_tests=true
elif [ "${1:-}" = "--test-build" ]; then
    for_tests=true
    download_half=false
elif [ "${1:-}" = "--test-downloads" ]; then
    for_tests=true
    build_half=false
elif [ "${1:-}" = "--worker" ]; then
    only_worker=true
elif [ "${1:-}" = "--schemathesis" ]; then
    only_schemathesis=true
elif [ "${1:-}" = "--openai-client" ]; then
    only_openai_client=true
elif [ "${1:-}" = "--deploy-check" ]; then
    only_deploy_check=true
fi

have() { command -v "$1" >/dev/null 2>&1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Checks that $python is a Python 3.10 or later.
check_python() {
    local python=$1 who=$2
    if ! have "$python"; then
        echo "deps: $python is missing; install Python 3.10 or later (python3, python3-venv)" >&2
        exit 1
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "deps: $who needs Python 3.10 or later; $python is $("$python" -V 2>&1)" >&2
        exit 1
    fi
}

# Creates the venv $2 with the Python $1 when it is missing.
make_venv() {
    local python=$1 venv=$2
    if [ ! -x "$venv/bin/python" ]; then
        if ! "$python" -m venv "$venv"; then
            rm -rf "$venv"
            echo "deps: cannot create $venv; on Debian or Ubuntu: apt-get install python3-venv" >&2
            exit 1
        fi
    fi
}

# The TRELLIS.2 worker's test environment, worker/.venv: what its pytest suite needs, and
# what kiln's conformance and integration tests need to start it with the stand-in
# pipeline. No torch, no GPU packages (those are the `gpu` extra, for GPU machines).
# Created when missing; `pip install -e 'worker[test]'`, constrained to the tested
# versions, runs again only when worker/pyproject.toml or worker/constraints-test.txt
# changed since the last install (their hash is kept in the venv).
worker_env() {
    local python=${PYTHON:-python3}
    local worker=$root/worker
    local venv=$worker/.venv
    check_python "$python" "the worker"
    local want stamp=$venv/.kiln-deps-sha256
    want=$(cat "$worker/pyproject.toml" "$worker/constraints-test.txt" | sha256sum | cut -d' ' -f1)
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    make_venv "$python" "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -e "${worker}[test]" -c "$worker/constraints-test.txt"
    echo "$want" >"$stamp"
}

# The linter ShellCheck, which the worker's tests run on worker/install.sh (worker/tests/test_install.py).
# From the distribution's packages, once.
shellcheck_tool() {
    if have shellcheck; then
        return 0
    fi
    if ! have apt-get; then
        echo "deps: shellcheck is missing; install it (the worker's tests check worker/install.sh)" >&2
        exit 1
    fi
    local sudo_cmd=""
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
    if ! $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null 2>&1; then
        $sudo_cmd apt-get update -qq
        $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
    fi
}

# A pinned Python environment `$1/.venv`: the packages of `$1/requirements.txt` with every
# dependency at the version of `$1/constraints.txt` (a full freeze). Created when missing;
# `pip install` runs again only when one of the two files changed since the last install
# (their hash is kept in the venv). `$2` names what it is for, in error messages.
pinned_env() {
    local python=${PYTHON:-python3}
    local dir=$1
    local venv=$dir/.venv
    check_python "$python" "$2"
    local want stamp=$venv/.kiln-deps-sha256
    want=$(cat "$dir/requirements.txt" "$dir/constraints.txt" | sha256sum | cut -d' ' -f1)
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    make_venv "$python" "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$dir/requirements.txt" -c "$dir/constraints.txt"
    echo "$want" >"$stamp"
}

# schemathesis, for `make schemathesis`.
schemathesis_env() {
    pinned_env "$root/tools/schemathesis" "schemathesis"
}

# The Python test tools of tests/python: OpenAI's own Python client, which
# tests/api/openai_python.rs runs tests/python/openai_client.py with, and trimesh and
# usd-core, which crates/formats's tests run tests/python/mesh_check.py and usd_check.py
# with. --test-downloads builds it, and scripts/test.sh waits for that before `unit`.
openai_client_env() {
    pinned_env "$root/tests/python" "the OpenAI client test"
}

# The deployment checks (`make deploy-check`, tests/deploy): the linters and validators of
# tools/deploy-check/requirements.txt, and nginx, to run deploy/nginx.conf. nginx is used
# from PATH when there; otherwise Debian's `nginx` package is unpacked into
# tools/deploy-check/nginx with `apt-get download` (no service is installed or started).
deploy_check_env() {
    pinned_env "$root/tools/deploy-check" "the deployment checks"
    local dest=$root/tools/deploy-check/nginx
    if have nginx || [ -x /usr/sbin/nginx ] || [ -x "$dest/usr/sbin/nginx" ]; then
        return 0
    fi
    if ! have apt-get; then
        echo "deps: nginx is missing; install it (the deployment checks run deploy/nginx.conf)" >&2
        exit 1
    fi
    local tmp
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get download nginx >/dev/null 2>&1); then
        if [ "$(id -u)" -eq 0 ]; then
            apt-get update -qq
        fi
        (cd "$tmp" && apt-get download nginx >/dev/null)
    fi
    mkdir -p "$dest"
    dpkg-deb -x "$tmp"/nginx_*.deb "$dest"
    rm -rf "$tmp"
    if ! "$dest/usr/sbin/nginx" -v >/dev/null 2>&1; then
        rm -rf "$dest"
        echo "deps: Debian's nginx does not run here (a library missing?); install nginx" >&2
        exit 1
    fi
}

if $only_worker; then
    worker_env
    shellcheck_tool
    exit 0
fi
if $only_schemathesis; then
    schemathesis_env
    exit 0
fi
if $only_openai_client; then
    openai_client_env
    exit 0
fi
if $only_deploy_check; then
    deploy_check_env
    exit 0
fi

if $build_half && ! cargo fmt --version >/dev/null 2>&1; then
    rustup component add rustfmt
fi
if $build_half && ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add clippy
fi

# cargo-machete, which `make lint` runs to catch dependencies nothing uses (tests only).
# Installed once, at a pinned version, with its own locked dependencies.
MACHETE_VERSION=0.9.2
if $for_tests && $build_half && ! cargo machete --version 2>/dev/null | grep -q "$MACHETE_VERSION"; then
    cargo install cargo-machete --locked --version "$MACHETE_VERSION"
fi

# s3s-fs, the S3 server the object storage tests start (tests/common/s3.rs; docs/storage.md
# says why this one). Installed into tools/s3s-fs at a pinned version with its own locked
# dependencies, again only when the pin changes. 0.14.1 is the newest that builds with
# Rust 1.92; the later ones need 1.96. A test server needs no optimizer: built without it
# and without debug info it takes a fraction of a release build's 258 s of CPU.
S3S_FS_VERSION=0.14.1
if $for_tests && $build_half; then
    s3s_fs=$root/tools/s3s-fs
    if ! "$s3s_fs/bin/s3s-fs" --version 2>/dev/null | grep -qx "s3s-fs $S3S_FS_VERSION"; then
        CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_DEBUG=false \
            CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 CARGO_PROFILE_RELEASE_INCREMENTAL=false \
            cargo install s3s-fs --locked --version "$S3S_FS_VERSION" --features binary \
            --root "$s3s_fs"
    fi
fi

# The Khronos glTF Validator, which the relief tests run on every model (tests only). `npm ci`
# installs exactly the locked versions; it runs again only when node_modules is missing
# or the lock file changed since the last install (its hash is kept beside the modules).
if $for_tests && $download_half; then
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

# PostgreSQL's server binaries (initdb, pg_ctl), which scripts/with-postgres.sh runs a
# throwaway server with for the tests on PostgreSQL. Debian puts them under
# /usr/lib/postgresql/*/bin, off PATH; the script looks there.
if $for_tests && $download_half && ! have initdb && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if have apt-get; then
        sudo_cmd=""
        if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
        $sudo_cmd apt-get update -qq
        $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "deps: initdb and pg_ctl are missing; install the PostgreSQL server (14 or later)" >&2
        exit 1
    fi
fi

if $for_tests && $download_half; then
    worker_env
    shellcheck_tool
    schemathesis_env
    openai_client_env
    deploy_check_env
fi
