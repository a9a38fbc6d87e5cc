-- Who made what, what a model costs, and one usage record per task (see the SQLite
-- migration of the same number).
ALTER TABLE tasks ADD COLUMN owner_id TEXT COLLATE "C";
ALTER TABLE tasks ADD COLUMN token_id TEXT COLLATE "C";
ALTER TABLE pictures ADD COLUMN owner_id TEXT COLLATE "C";
ALTER TABLE tasks ADD COLUMN webhook_url TEXT;
CREATE INDEX tasks_owner ON tasks (owner_id, id);
CREATE INDEX pictures_owner ON pictures (owner_id, created_at);

CREATE TABLE prices (
    model      TEXT COLLATE "C" PRIMARY KEY,
    per_task   BIGINT NOT NULL DEFAULT 0,
    per_image  BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);

CREATE TABLE usage (
    task_id     TEXT COLLATE "C" PRIMARY KEY REFERENCES tasks (id),
    user_id     TEXT COLLATE "C",
    token_id    TEXT COLLATE "C",
    channel     TEXT COLLATE "C" NOT NULL,
    model       TEXT COLLATE "C" NOT NULL,
    kind        TEXT NOT NULL,
    per_task    BIGINT NOT NULL DEFAULT 0,
    per_image   BIGINT NOT NULL DEFAULT 0,
    reserved    BIGINT NOT NULL DEFAULT 0,
    charged     BIGINT,
    outcome     TEXT,
    queue_ms    BIGINT,
    run_ms      BIGINT,
    upstream_id TEXT,
    created_at  BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX usage_user ON usage (user_id, created_at);
CREATE INDEX usage_created ON usage (created_at);
