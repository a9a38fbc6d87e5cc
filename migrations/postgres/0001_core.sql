-- The PostgreSQL schema mirrors SQLite's (migrations/sqlite), so the two implementations
-- read alike: times are Unix milliseconds (BIGINT), ids hyphenated UUID text, JSON kept
-- as text. Every integer is BIGINT, which sqlx reads as i64 like SQLite's INTEGER. Text
-- that is sorted or compared (ids, names) uses the "C" collation: byte order, as in
-- SQLite, whatever the database's default collation is.

CREATE TABLE pictures (
    id            TEXT COLLATE "C" PRIMARY KEY,
    key           TEXT COLLATE "C" NOT NULL UNIQUE,
    content_type  TEXT NOT NULL,
    format        TEXT NOT NULL,
    width         BIGINT NOT NULL,
    height        BIGINT NOT NULL,
    size          BIGINT NOT NULL,
    sha256        TEXT NOT NULL,
    original_name TEXT,
    created_at    BIGINT NOT NULL,
    expired_at    BIGINT
);
CREATE INDEX pictures_created ON pictures (created_at);

CREATE TABLE tasks (
    -- FIFO per channel: SQLite's implicit rowid, made explicit. Admission holds the
    -- channel's counter row while it inserts, so within a channel this order is also
    -- commit order.
    rowid            BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id               TEXT COLLATE "C" PRIMARY KEY,
    kind             TEXT NOT NULL,
    model            TEXT COLLATE "C" NOT NULL,
    channel          TEXT COLLATE "C" NOT NULL,
    status           TEXT NOT NULL,
    prompt           TEXT,
    picture_id       TEXT COLLATE "C" REFERENCES pictures (id),
    params           TEXT NOT NULL DEFAULT '{}',
    progress         BIGINT NOT NULL DEFAULT 0,
    stage            TEXT,
    error_code       TEXT,
    error_message    TEXT,
    metadata         TEXT NOT NULL DEFAULT '{}',
    provider_job_id  TEXT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    last_seq         BIGINT NOT NULL DEFAULT 0,
    last_position    BIGINT,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    deadline_at      BIGINT
);
CREATE INDEX tasks_queue ON tasks (channel, status, rowid);
CREATE INDEX tasks_status ON tasks (status, id);

CREATE TABLE task_events (
    task_id    TEXT COLLATE "C" NOT NULL REFERENCES tasks (id),
    seq        BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (task_id, seq)
);

CREATE TABLE artifacts (
    id           TEXT COLLATE "C" PRIMARY KEY,
    task_id      TEXT COLLATE "C" NOT NULL REFERENCES tasks (id),
    name         TEXT COLLATE "C" NOT NULL,
    role         TEXT NOT NULL,
    key          TEXT COLLATE "C" NOT NULL UNIQUE,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    metadata     TEXT NOT NULL DEFAULT '{}',
    created_at   BIGINT NOT NULL,
    expired_at   BIGINT,
    UNIQUE (task_id, name)
);
CREATE INDEX artifacts_created ON artifacts (created_at);

CREATE TABLE idempotency_keys (
    key          TEXT COLLATE "C" PRIMARY KEY,
    request_hash TEXT NOT NULL,
    task_id      TEXT COLLATE "C" NOT NULL REFERENCES tasks (id),
    created_at   BIGINT NOT NULL
);
