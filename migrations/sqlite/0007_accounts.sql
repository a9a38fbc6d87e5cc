-- Accounts: users, their page sessions and API tokens, and the audit log of what admins
-- and the system did to them. Users are disabled, never deleted, so the tasks, tokens
-- and audit entries that name them keep a valid reference.

-- `username` compares without case (COLLATE NOCASE folds ASCII only, which is why
-- usernames are limited to ASCII). `password_hash` is an argon2id PHC string.
-- `webhook_secret` is sealed (`crate::sealing`). `max_active`, when set, overrides the
-- configured per-user limit of queued and running tasks.
CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    balance        INTEGER NOT NULL DEFAULT 0,
    max_active     INTEGER,
    webhook_secret TEXT,
    disabled       INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

-- A page session. The cookie holds a random id; only its SHA-256 (hex) is stored, so a
-- copy of the database signs nobody in. `csrf` is echoed by the console on writes.
CREATE TABLE sessions (
    id_hash      TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id),
    csrf         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    ip           TEXT,
    user_agent   TEXT,
    revoked_at   INTEGER
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- An API token. The text (`kiln_…`) is shown once; only its SHA-256 (hex) is stored,
-- with its last four characters as a hint. `models` is a JSON array, or NULL for all.
CREATE TABLE api_tokens (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users (id),
    name            TEXT NOT NULL,
    hash            TEXT NOT NULL UNIQUE,
    hint            TEXT NOT NULL,
    models          TEXT,
    spend_cap       INTEGER,
    spent           INTEGER NOT NULL DEFAULT 0,
    rate_per_minute INTEGER,
    webhook_url     TEXT,
    expires_at      INTEGER,
    last_used_at    INTEGER,
    revoked_at      INTEGER,
    created_at      INTEGER NOT NULL
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

-- Who did what to whom. `actor_id` is NULL for the system (the command line, start-up);
-- `actor` is then what acted (`cli`, `bootstrap`). `detail` is a JSON object.
CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    actor_id TEXT,
    actor    TEXT,
    action   TEXT NOT NULL,
    target   TEXT,
    detail   TEXT NOT NULL DEFAULT '{}',
    ip       TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);
-- The filters of the audit page; the rowid each index ends with keeps newest-first cheap.
CREATE INDEX audit_log_actor ON audit_log (actor_id);
CREATE INDEX audit_log_action ON audit_log (action);
