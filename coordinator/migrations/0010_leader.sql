-- Several coordinators need PostgreSQL (docs/ha.md): on SQLite the one coordinator always
-- leads and these tables stay as created. They exist so both histories have the same tables.
CREATE TABLE leader (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    epoch         INTEGER NOT NULL,
    holder        TEXT NOT NULL DEFAULT '',
    api_url       TEXT NOT NULL DEFAULT '',
    link_addr     TEXT NOT NULL DEFAULT '',
    backend_pid   INTEGER NOT NULL DEFAULT 0,
    backend_start TEXT,
    deadline_ms   INTEGER NOT NULL DEFAULT 0,
    since_ms      INTEGER NOT NULL DEFAULT 0
);
INSERT INTO leader (id, epoch) VALUES (1, 0);

CREATE TABLE coordinators (
    name       TEXT PRIMARY KEY,
    api_url    TEXT NOT NULL,
    link_addr  TEXT NOT NULL,
    seen_ms    INTEGER NOT NULL
);
