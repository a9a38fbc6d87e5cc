-- Named leases for work one process at a time should do when several share the
-- database (SingletonRepo): who holds each, and until when (ms since the epoch).
CREATE TABLE singletons (
    name   TEXT COLLATE "C" PRIMARY KEY,
    holder TEXT COLLATE "C" NOT NULL,
    until  BIGINT NOT NULL
);
