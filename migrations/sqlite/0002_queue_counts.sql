-- Per-channel counts of waiting and running tasks, kept by triggers in the same
-- statement that changes a task's status. Admission (`max_queue`) and queue depth then
-- read one row instead of counting the queue, whose length is unbounded.

CREATE TABLE channel_queues (
    channel TEXT PRIMARY KEY,
    queued  INTEGER NOT NULL DEFAULT 0,
    running INTEGER NOT NULL DEFAULT 0
);

INSERT INTO channel_queues (channel, queued, running)
SELECT channel,
       COUNT(*) FILTER (WHERE status = 'queued'),
       COUNT(*) FILTER (WHERE status = 'running')
FROM tasks WHERE status IN ('queued', 'running') GROUP BY channel;

CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO channel_queues (channel, queued, running)
    VALUES (NEW.channel, NEW.status = 'queued', NEW.status = 'running')
    ON CONFLICT (channel) DO UPDATE SET
        queued = queued + (NEW.status = 'queued'),
        running = running + (NEW.status = 'running');
END;

CREATE TRIGGER tasks_count_update AFTER UPDATE OF status ON tasks WHEN OLD.status <> NEW.status BEGIN
    UPDATE channel_queues SET
        queued = queued - (OLD.status = 'queued') + (NEW.status = 'queued'),
        running = running - (OLD.status = 'running') + (NEW.status = 'running')
    WHERE channel = NEW.channel;
END;

-- Task lists may be filtered by picture, newest first (ids are UUIDv7: id order is
-- creation order).
CREATE INDEX tasks_picture ON tasks (picture_id, id);
