-- When the task's provider finished and kiln began making its outputs (preview,
-- compressed GLB, formats asked at creation) before marking it succeeded. A process
-- that claims a task with this set runs only that step again, not the provider.
ALTER TABLE tasks ADD COLUMN finishing_at INTEGER;
