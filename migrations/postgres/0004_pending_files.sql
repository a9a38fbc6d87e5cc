-- Files being written to storage whose record is not committed yet (see the SQLite
-- migration of the same number).

CREATE TABLE pending_files (
    key        TEXT COLLATE "C" PRIMARY KEY,
    created_at BIGINT NOT NULL
);
CREATE INDEX pending_files_created ON pending_files (created_at);
