-- Files being written to storage whose record (a picture, an artifact) is not committed
-- yet. A write is noted here before it starts, and the transaction that records the
-- file deletes the note; a note left behind names a file that a crash left without a
-- record. Start-up and the daily retention run delete those files and their notes.

CREATE TABLE pending_files (
    key        TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE INDEX pending_files_created ON pending_files (created_at);
