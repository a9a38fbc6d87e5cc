-- Channels managed at runtime. A waiting task may move to another channel: the
-- per-channel counters follow it. A statement changes a task's channel or its status,
-- never both.
CREATE FUNCTION tasks_count_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE channel_queues SET
        queued = queued - (OLD.status = 'queued')::int,
        running = running - (OLD.status = 'running')::int
    WHERE channel = OLD.channel;
    INSERT INTO channel_queues AS q (channel, queued, running)
    VALUES (NEW.channel, (NEW.status = 'queued')::int, (NEW.status = 'running')::int)
    ON CONFLICT (channel) DO UPDATE SET
        queued = q.queued + (NEW.status = 'queued')::int,
        running = q.running + (NEW.status = 'running')::int;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_count_move AFTER UPDATE OF channel ON tasks
    FOR EACH ROW WHEN (OLD.channel <> NEW.channel) EXECUTE FUNCTION tasks_count_move();

CREATE TABLE channels (
    id         TEXT COLLATE "C" PRIMARY KEY,
    name       TEXT COLLATE "C" NOT NULL UNIQUE,
    config     TEXT NOT NULL,
    secret     TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
