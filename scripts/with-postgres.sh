#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL: `initdb` in a temporary folder, the server
# on a free port of 127.0.0.1, its URL in KILN_TEST_DATABASE_URL, and everything stopped
# and deleted when the command ends, however it ends. The tests make one database per
# test in it (tests/common/postgres.rs). With KILN_TEST_DATABASE_URL already set, the
# command runs against that server instead.
#
# Usage: scripts/with-postgres.sh COMMAND [ARGS...]
#
# KILN_PG_OPTIONS adds server settings, e.g. `-c shared_preload_libraries=pg_stat_statements`
# (benches/replicas.rs then counts the statements each task creation runs).
set -euo pipefail

if [ -n "${KILN_TEST_DATABASE_URL:-}" ]; then
    exec "$@"
fi

# Debian's server binaries are not on PATH; use the newest installed.
if ! command -v initdb >/dev/null 2>&1; then
    for bin in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        PATH="$bin:$PATH"
        break
    done
fi
if ! command -v initdb >/dev/null 2>&1 || ! command -v pg_ctl >/dev/null 2>&1; then
    echo "with-postgres: initdb and pg_ctl are missing; scripts/deps.sh --test installs them" >&2
    exit 1
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/kiln-pg.XXXXXX")
# The server refuses to run as root (containers, CI): then it runs as the `postgres`
# user (Debian's package makes it) or `nobody`, owning the folder.
as_owner=()
if [ "$(id -u)" -eq 0 ]; then
    owner=postgres
    getent passwd postgres >/dev/null || owner=nobody
    chown "$owner" "$dir"
    chmod 755 "$dir"
    as_owner=(setpriv --reuid="$owner" --regid="$(id -g "$owner")" --clear-groups --)
fi
stop() {
    "${as_owner[@]}" pg_ctl -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT

"${as_owner[@]}" initdb -D "$dir/data" -U kiln --auth=trust --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    exit 1
}
# A free port: the kernel picks one, we release it and hand it to the server.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Many tests at once, each with a pool: room for them. Durability is not needed for a
# database deleted at the end, and fsync would make every commit wait for the disk.
"${as_owner[@]}" pg_ctl -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $dir -c max_connections=500 -c fsync=off -c synchronous_commit=off -c full_page_writes=off ${KILN_PG_OPTIONS:-}" \
    start >/dev/null || {
    cat "$dir/server.log" >&2
    exit 1
}

export KILN_TEST_DATABASE_URL="postgres://kiln@127.0.0.1:$port/postgres"
"$@"
