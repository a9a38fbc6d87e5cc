-- Conversions of a task's model into another format (ConversionRepo), shared by every
-- process: who makes one now (a lease, renewed while it works), or how it failed, for
-- the model whose SHA-256 it was made from. Times are ms since the epoch.
CREATE TABLE conversions (
    task_id          TEXT NOT NULL REFERENCES tasks (id),
    format           TEXT NOT NULL,
    -- running | done | failed
    status           TEXT NOT NULL,
    holder           TEXT,
    lease_expires_at INTEGER,
    source_sha256    TEXT NOT NULL,
    error_code       TEXT,
    error_message    TEXT,
    -- 1: converting the same model again would fail the same way
    permanent        INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (task_id, format)
);
