-- Push workers: which worker (base URL) a running task was dispatched to, and the ids
-- of accepted signed messages, so a replayed callback is refused by every process.

ALTER TABLE tasks ADD COLUMN worker TEXT;
CREATE INDEX tasks_worker ON tasks (channel, worker) WHERE status = 'running';

CREATE TABLE webhook_messages (
    id          TEXT COLLATE "C" PRIMARY KEY,
    received_at BIGINT NOT NULL
);
CREATE INDEX webhook_messages_received ON webhook_messages (received_at);
