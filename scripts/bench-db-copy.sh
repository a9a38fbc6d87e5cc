#!/usr/bin/env bash
# Times `kiln db copy` on a synthetic installation (docs/benchmarks.md, "kiln db copy"):
# a SQLite database migrated by kiln and filled with TASKS tasks (default 100,000), each
# with a picture, 8 events, an artifact and a usage record, plus users, tokens and audit
# entries; copied into an empty PostgreSQL database, then back into a new SQLite file.
# Prints the wall time and peak memory (GNU time) of each copy.
#
# Usage: scripts/with-postgres.sh scripts/bench-db-copy.sh [KILN_BINARY]
# (KILN_TEST_DATABASE_URL names the server; TASKS sets the size.)
set -euo pipefail

kiln=${1:-target/release/kiln}
tasks=${TASKS:-100000}
server=${KILN_TEST_DATABASE_URL:?run under scripts/with-postgres.sh, or set KILN_TEST_DATABASE_URL}
dir=$(mktemp -d "${TMPDIR:-/tmp}/kiln-copy-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT

"$kiln" migrate --data-dir "$dir" >/dev/null
python3 - "$dir/kiln.db" "$tasks" <<'EOF'
import json, sqlite3, sys, uuid

path, n = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(path)
db.execute("PRAGMA synchronous = OFF")
t0 = 1_780_000_000_000
params = json.dumps({"resolution": 512, "seed": 42, "texture": True})
metadata = json.dumps({"vertices": 120000, "faces": 240000, "generation_time": 12.5, "model": "relief"})
users = [str(uuid.uuid4()) for _ in range(1000)]
db.executemany(
    "INSERT INTO users (id, username, password_hash, role, balance, created_at, updated_at) VALUES (?, ?, ?, 'user', 1000, ?, ?)",
    [(u, f"user{i}", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$" + "h" * 43, t0, t0) for i, u in enumerate(users)],
)
db.executemany(
    "INSERT INTO api_tokens (id, user_id, name, hash, hint, created_at) VALUES (?, ?, 'ci', ?, 'abcd', ?)",
    [(str(uuid.uuid4()), u, uuid.uuid4().hex + uuid.uuid4().hex, t0) for u in users],
)
db.executemany(
    "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, 'cli', 'balance.add', ?, '{\"after\": 1000}')",
    [(t0 + i, users[i % len(users)]) for i in range(10000)],
)
batch = 5000
for start in range(0, n, batch):
    pictures, rows, events, artifacts, usage = [], [], [], [], []
    for i in range(start, min(n, start + batch)):
        task, picture, owner = str(uuid.uuid4()), str(uuid.uuid4()), users[i % len(users)]
        at = t0 + i * 1000
        pictures.append((picture, f"pictures/{picture}.png", at, owner))
        rows.append((task, picture, params, metadata, at, at + 10, at + 20000, owner))
        events.append((task, 1, "queued", json.dumps({"status": "queued", "position": 1}), at))
        for seq in range(2, 8):
            events.append((task, seq, "processing", json.dumps({"status": "running", "progress": seq * 14, "stage": "meshing"}), at + seq))
        events.append((task, 8, "completed", json.dumps({"status": "succeeded", "outputs": [{"name": "model.glb", "key": f"reconstruction/{task}/model.glb"}]}), at + 20000))
        artifacts.append((str(uuid.uuid4()), task, f"reconstruction/{task}/model.glb", at + 20000))
        usage.append((task, owner, at, at + 20000))
    db.executemany(
        "INSERT INTO pictures (id, key, content_type, format, width, height, size, sha256, created_at, owner_id) "
        "VALUES (?, ?, 'image/png', 'png', 1024, 768, 524288, 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', ?, ?)",
        pictures,
    )
    db.executemany(
        "INSERT INTO tasks (id, kind, model, channel, status, picture_id, params, progress, metadata, last_seq, created_at, started_at, finished_at, owner_id) "
        "VALUES (?, 'image_to_3d', 'relief', 'relief', 'succeeded', ?, ?, 100, ?, 8, ?, ?, ?, ?)",
        rows,
    )
    db.executemany("INSERT INTO task_events (task_id, seq, kind, data, created_at) VALUES (?, ?, ?, ?, ?)", events)
    db.executemany(
        "INSERT INTO artifacts (id, task_id, name, role, key, content_type, size, sha256, created_at) "
        "VALUES (?, ?, 'model.glb', 'model', ?, 'model/gltf-binary', 2097152, 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', ?)",
        artifacts,
    )
    db.executemany(
        "INSERT INTO usage (task_id, user_id, channel, model, kind, per_task, reserved, charged, outcome, queue_ms, run_ms, created_at, finished_at) "
        "VALUES (?, ?, 'relief', 'relief', 'image_to_3d', 2, 2, 2, 'succeeded', 10, 19990, ?, ?)",
        usage,
    )
db.commit()
db.close()
EOF
echo "source: $(du -h "$dir/kiln.db" | cut -f1), $tasks tasks"

name="kiln_copy_bench_$$"
psql -q "$server" -c "CREATE DATABASE $name"
target=$(python3 -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(p._replace(path="/" + sys.argv[2]).geturl())' "$server" "$name")

# The CPU time of the PostgreSQL server's finished processes (the copy's backend is one
# when it ends), from the postmaster's cutime and cstime, in seconds. Needs read access
# to its data directory (root, or the server's user).
postmaster=$(head -n 1 "$(psql -Atq "$server" -c "SHOW data_directory")/postmaster.pid" 2>/dev/null || true)
server_cpu() {
    if [ -n "$postmaster" ] && [ -r "/proc/$postmaster/stat" ]; then
        awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($16 + $17) / hz }' "/proc/$postmaster/stat"
    else
        echo "?"
    fi
}

measure() {
    local before
    before=$(server_cpu)
    /usr/bin/time -f "kiln: %e s wall, %U s user, %S s system, %M KiB peak RSS" "$kiln" db copy --from "$1" --to "$2" \
        >"$dir/summary.txt" 2>"$dir/progress.txt" || {
        cat "$dir/progress.txt" >&2
        exit 1
    }
    # The copy's sessions end with it; give the postmaster a moment to reap them.
    sleep 1
    tail -n 2 "$dir/summary.txt"
    tail -n 1 "$dir/progress.txt"
    echo "PostgreSQL server: CPU $before s before, $(server_cpu) s after"
}

echo "SQLite -> PostgreSQL:"
measure "sqlite://$dir/kiln.db" "$target"
echo "PostgreSQL -> SQLite:"
measure "$target" "sqlite://$dir/back.db"
psql -q "$server" -c "DROP DATABASE $name"
