-- Conversions of a task's model into another format (ConversionRepo), shared by every
-- process: who makes one now (a lease, renewed while it works), or how it failed, for
-- the model whose SHA-256 it was made from. Times are ms since the epoch.
CREATE TABLE conversions (
    task_id          TEXT COLLATE "C" NOT NULL REFERENCES tasks (id),
    format           TEXT COLLATE "C" NOT NULL,
    -- running | done | failed
    status           TEXT NOT NULL,
    holder           TEXT COLLATE "C",
    lease_expires_at BIGINT,
    source_sha256    TEXT COLLATE "C" NOT NULL,
    error_code       TEXT,
    error_message    TEXT,
    -- 1: converting the same model again would fail the same way
    permanent        INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (task_id, format)
);
