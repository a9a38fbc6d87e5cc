#!/usr/bin/env bash
# The kiln image's entrypoint (Dockerfile, deploy/compose.yaml, deploy/k8s). See
# docs/deploy.md#the-image.
#
#   (no arguments) | serve [FLAGS]   kiln serve; with KILN_MIGRATE=1, `kiln migrate` first
#   -FLAG ...                          kiln serve -FLAG ... (e.g. --bind 0.0.0.0:9000)
#   migrate | config | cleanup | admin | generate | worker | worker-check | help
#                                      that kiln command, e.g. `admin create --username root`
#   health [PATH]                      exit 0 when GET PATH (default /health) on the local
#                                      server answers 200, else 1: the image's HEALTHCHECK
#   kiln ARGS...                       kiln ARGS...
#   anything else                      run it (e.g. bash)
#
# Secrets from files: for every variable KILN_SECTION__KEY_FILE=PATH (Docker and
# Kubernetes secrets mounted as files), KILN_SECTION__KEY is set to the file's content
# (without its trailing newlines) and the _FILE variable is removed, since kiln refuses
# KILN_…__… variables that name no key. Setting both is an error.
#
# kiln itself reads its configuration from KILN_CONFIG and KILN_SECTION__KEY variables
# (docs/configuration.md) and is exec'd, so it receives SIGTERM directly.
set -euo pipefail

die() {
    echo "docker-entrypoint: $*" >&2
    exit 2
}

load_file_secrets() {
    local name target file
    while IFS= read -r name; do
        target=${name%_FILE}
        if [ -n "${!target+set}" ]; then
            die "both $name and $target are set; keep one"
        fi
        file=${!name}
        if [ ! -r "$file" ]; then
            die "$name: cannot read $file"
        fi
        export "$target=$(cat "$file")"
        unset "$name"
    done < <(compgen -e | grep -E '^KILN_[A-Z0-9_]+__[A-Z0-9_]+_FILE$' || true)
}

truthy() {
    case "${1,,}" in
    1 | true | yes | on) return 0 ;;
    *) return 1 ;;
    esac
}

# GET $1 on the server this container runs, from KILN_SERVER__BIND's port, with bash's
# /dev/tcp (the image has no curl). A wildcard or loopback bind is asked on loopback.
health() {
    local path=${1:-/health} bind=${KILN_SERVER__BIND:-0.0.0.0:8080} host port status
    port=${bind##*:}
    host=${bind%:*}
    case "$host" in
    0.0.0.0 | "") host=127.0.0.1 ;;
    "[::]" | "[::1]") host=::1 ;;
    \[*\]) host=${host#[} host=${host%]} ;;
    esac
    if ! exec 3<>"/dev/tcp/$host/$port"; then
        echo "health: cannot connect to $host:$port" >&2
        return 1
    fi
    printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: kiln-healthcheck\r\nConnection: close\r\n\r\n' "$path" >&3
    if ! IFS= read -r -t "${KILN_HEALTH_TIMEOUT:-4}" status <&3; then
        echo "health: no answer from $host:$port" >&2
        return 1
    fi
    exec 3<&-
    status=${status%$'\r'}
    case "$status" in
    "HTTP/1."?" 200"*) return 0 ;;
    *)
        echo "health: $path answered: $status" >&2
        return 1
        ;;
    esac
}

load_file_secrets

if [ $# -eq 0 ]; then
    set -- serve
fi
case "$1" in
-h | --help | -V | --version) exec kiln "$@" ;;
-*) set -- serve "$@" ;;
esac

case "$1" in
serve)
    if truthy "${KILN_MIGRATE:-false}"; then
        kiln migrate "${@:2}"
    fi
    exec kiln "$@"
    ;;
migrate | config | cleanup | admin | generate | worker | worker-check | help)
    exec kiln "$@"
    ;;
health)
    shift
    health "$@"
    ;;
kiln)
    shift
    exec kiln "$@"
    ;;
*)
    exec "$@"
    ;;
esac
