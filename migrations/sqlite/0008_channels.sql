-- Channels managed at runtime.
--
-- A waiting task may move to another channel (its channel was deleted): the per-channel
-- counters follow it. A statement changes a task's channel or its status, never both
-- (tasks_count_update counts a status change on the task's channel as it is).
CREATE TRIGGER tasks_count_move AFTER UPDATE OF channel ON tasks WHEN OLD.channel <> NEW.channel BEGIN
    UPDATE channel_queues SET
        queued = queued - (OLD.status = 'queued'),
        running = running - (OLD.status = 'running')
    WHERE channel = OLD.channel;
    INSERT INTO channel_queues (channel, queued, running)
    VALUES (NEW.channel, NEW.status = 'queued', NEW.status = 'running')
    ON CONFLICT (channel) DO UPDATE SET
        queued = queued + (NEW.status = 'queued'),
        running = running + (NEW.status = 'running');
END;

-- Channels stored by the admin API, beside the configuration file's. `config` is the
-- channel's configuration as JSON (kiln's ChannelConfig) without its secret; `secret`
-- is the secret sealed with the server's sealing key (crate::sealing), never in the
-- clear. Ids are UUIDv7, so id order is creation order.
CREATE TABLE channels (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    config     TEXT NOT NULL,
    secret     TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Per-channel statistics read the tasks that ended in the last hour.
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
