-- Times are Unix milliseconds (INTEGER) so comparisons are plain and portable to
-- PostgreSQL's BIGINT; ids are hyphenated UUID text.

CREATE TABLE pictures (
    id            TEXT PRIMARY KEY,
    key           TEXT NOT NULL UNIQUE,
    content_type  TEXT NOT NULL,
    format        TEXT NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    size          INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    original_name TEXT,
    created_at    INTEGER NOT NULL,
    expired_at    INTEGER
);
CREATE INDEX pictures_created ON pictures (created_at);

CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    model            TEXT NOT NULL,
    channel          TEXT NOT NULL,
    status           TEXT NOT NULL,
    prompt           TEXT,
    picture_id       TEXT REFERENCES pictures (id),
    params           TEXT NOT NULL DEFAULT '{}',
    progress         INTEGER NOT NULL DEFAULT 0,
    stage            TEXT,
    error_code       TEXT,
    error_message    TEXT,
    metadata         TEXT NOT NULL DEFAULT '{}',
    provider_job_id  TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    last_seq         INTEGER NOT NULL DEFAULT 0,
    last_position    INTEGER,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    deadline_at      INTEGER
);
-- FIFO per channel: the implicit rowid grows with every insert.
CREATE INDEX tasks_queue ON tasks (channel, status);
CREATE INDEX tasks_status ON tasks (status, id);

CREATE TABLE task_events (
    task_id    TEXT NOT NULL REFERENCES tasks (id),
    seq        INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (task_id, seq)
);

CREATE TABLE artifacts (
    id           TEXT PRIMARY KEY,
    task_id      TEXT NOT NULL REFERENCES tasks (id),
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    key          TEXT NOT NULL UNIQUE,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    metadata     TEXT NOT NULL DEFAULT '{}',
    created_at   INTEGER NOT NULL,
    expired_at   INTEGER,
    UNIQUE (task_id, name)
);
CREATE INDEX artifacts_created ON artifacts (created_at);

CREATE TABLE idempotency_keys (
    key          TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    task_id      TEXT NOT NULL REFERENCES tasks (id),
    created_at   INTEGER NOT NULL
);
