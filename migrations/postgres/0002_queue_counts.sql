-- Per-channel counts of waiting and running tasks, kept by triggers in the same
-- statement that changes a task's status. Admission reads (and locks) one row instead
-- of counting the queue. The row is also what serializes admission to a channel across
-- processes: the enqueue transaction holds it FOR UPDATE.

CREATE TABLE channel_queues (
    channel TEXT COLLATE "C" PRIMARY KEY,
    queued  BIGINT NOT NULL DEFAULT 0,
    running BIGINT NOT NULL DEFAULT 0
);

CREATE FUNCTION tasks_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO channel_queues AS q (channel, queued, running)
    VALUES (NEW.channel, (NEW.status = 'queued')::int, (NEW.status = 'running')::int)
    ON CONFLICT (channel) DO UPDATE SET
        queued = q.queued + (NEW.status = 'queued')::int,
        running = q.running + (NEW.status = 'running')::int;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_count_insert();

CREATE FUNCTION tasks_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE channel_queues SET
        queued = queued - (OLD.status = 'queued')::int + (NEW.status = 'queued')::int,
        running = running - (OLD.status = 'running')::int + (NEW.status = 'running')::int
    WHERE channel = NEW.channel;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_count_update AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status <> NEW.status) EXECUTE FUNCTION tasks_count_update();

-- Task lists may be filtered by picture, newest first (ids are UUIDv7: id order is
-- creation order).
CREATE INDEX tasks_picture ON tasks (picture_id, id);
