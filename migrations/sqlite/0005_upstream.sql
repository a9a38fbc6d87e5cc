-- Remote (submit-and-poll) providers. `placement` (was `worker`) is where a running job
-- was placed: a push worker's base URL, or the fingerprint of the API key that created a
-- cloud job (cloud jobs can only be read with the key that made them). `submitting_at`
-- is set while a submission to an upstream is in flight: a task claimed again with it
-- set and no `provider_job_id` crashed between sending and recording, so the upstream
-- may hold a paid job kiln cannot name, and the task fails instead of paying twice.
-- `client_secret` is a client's own provider key for one task (sealed), kept only while
-- the task runs so that polling survives a restart.
ALTER TABLE tasks RENAME COLUMN worker TO placement;
ALTER TABLE tasks ADD COLUMN submitting_at INTEGER;
ALTER TABLE tasks ADD COLUMN client_secret TEXT;
