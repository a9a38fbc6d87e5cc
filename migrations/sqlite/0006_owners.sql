-- Who made what. `owner_id` is the user a task or picture belongs to (NULL: made by an
-- anonymous caller in `auth.mode = "open"`), `token_id` the API token a task was
-- submitted with. Listing a user's own tasks and pictures is the common read, so each
-- has an index led by the owner.
ALTER TABLE tasks ADD COLUMN owner_id TEXT;
ALTER TABLE tasks ADD COLUMN token_id TEXT;
ALTER TABLE pictures ADD COLUMN owner_id TEXT;
-- Where the task's end is announced (outbound webhooks), when a client asked.
ALTER TABLE tasks ADD COLUMN webhook_url TEXT;
CREATE INDEX tasks_owner ON tasks (owner_id, id);
CREATE INDEX pictures_owner ON pictures (owner_id, created_at);

-- What a model costs, in whole credits: per task, plus per output image.
CREATE TABLE prices (
    model      TEXT PRIMARY KEY,
    per_task   INTEGER NOT NULL DEFAULT 0,
    per_image  INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);

-- One record per task, written in the transaction that queues it (with the credits it
-- reserved) and settled in the transaction that ends it (charged, the rest refunded),
-- so a crash can neither lose credits nor charge them twice.
CREATE TABLE usage (
    task_id     TEXT PRIMARY KEY REFERENCES tasks (id),
    user_id     TEXT,
    token_id    TEXT,
    channel     TEXT NOT NULL,
    model       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    per_task    INTEGER NOT NULL DEFAULT 0,
    per_image   INTEGER NOT NULL DEFAULT 0,
    reserved    INTEGER NOT NULL DEFAULT 0,
    charged     INTEGER,
    outcome     TEXT,
    queue_ms    INTEGER,
    run_ms      INTEGER,
    upstream_id TEXT,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX usage_user ON usage (user_id, created_at);
CREATE INDEX usage_created ON usage (created_at);
