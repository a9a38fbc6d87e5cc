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
