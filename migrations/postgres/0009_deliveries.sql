-- Outbound webhooks: one delivery per finished task, event and destination, and every
-- attempt to send it (see the SQLite migration of the same number).
CREATE TABLE webhook_deliveries (
    id          TEXT COLLATE "C" PRIMARY KEY,
    task_id     TEXT COLLATE "C" NOT NULL,
    owner_id    TEXT COLLATE "C",
    url         TEXT COLLATE "C" NOT NULL,
    event       TEXT COLLATE "C" NOT NULL,
    payload     TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts    BIGINT NOT NULL DEFAULT 0,
    next_at     BIGINT,
    lease_until BIGINT,
    lease_owner TEXT,
    created_at  BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (task_id, event, url);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_at);

-- `rowid` keeps attempts made in the same millisecond in the order they were made.
CREATE TABLE webhook_attempts (
    rowid       BIGINT GENERATED ALWAYS AS IDENTITY,
    delivery_id TEXT COLLATE "C" NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    at          BIGINT NOT NULL,
    status_code BIGINT,
    error       TEXT,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, at);
