-- Remote providers: where a running job was placed, a submission in flight, and a
-- client's own sealed provider key while the task runs (see the SQLite migration).
ALTER TABLE tasks RENAME COLUMN worker TO placement;
ALTER TABLE tasks ADD COLUMN submitting_at BIGINT;
ALTER TABLE tasks ADD COLUMN client_secret TEXT;
