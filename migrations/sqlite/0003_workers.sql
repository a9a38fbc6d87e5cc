-- Push workers: which worker (base URL) a running task was dispatched to, so a lost
-- worker's tasks can be dispatched again and work spread to the least busy worker; and
-- the ids of accepted signed messages, so a replayed callback is refused.

ALTER TABLE tasks ADD COLUMN worker TEXT;
CREATE INDEX tasks_worker ON tasks (channel, worker) WHERE status = 'running';

CREATE TABLE webhook_messages (
    id          TEXT PRIMARY KEY,
    received_at INTEGER NOT NULL
);
CREATE INDEX webhook_messages_received ON webhook_messages (received_at);
