-- Outbound webhooks: one delivery per finished task, event and destination, and every
-- attempt to send it, so a user can see what kiln sent, when, and what came back.
--
-- A delivery is `pending` until it is `delivered` (a 2xx answer) or `failed` (410 Gone,
-- a refused destination, or `webhooks.max_age` passed). A sender claims a due pending
-- delivery by setting `lease_owner` and `lease_until`; a lease that lapses (the sender
-- died mid-send) makes the delivery claimable again. `payload` is the exact JSON body,
-- so every retry sends the same bytes.
CREATE TABLE webhook_deliveries (
    id          TEXT PRIMARY KEY,
    task_id     TEXT NOT NULL,
    owner_id    TEXT,
    url         TEXT NOT NULL,
    event       TEXT NOT NULL,
    payload     TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     INTEGER,
    lease_until INTEGER,
    lease_owner TEXT,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
);
-- A task's end is recorded once, however often it is reported.
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (task_id, event, url);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_at);

CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    at          INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, at);
