-- Named leases for work one process at a time should do when several share the
-- database (SingletonRepo): who holds each, and until when (ms since the epoch).
CREATE TABLE singletons (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until  INTEGER NOT NULL
);
