-- backfill coordinator: initial schema.
CREATE TABLE accounts (
    name        TEXT PRIMARY KEY NOT NULL,
    uuid        TEXT NOT NULL UNIQUE,
    backfill    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);

CREATE TABLE hosts (
    id              TEXT PRIMARY KEY NOT NULL,
    inventory       TEXT NOT NULL,          -- JSON HostInventory
    enforcing       INTEGER NOT NULL,
    generation      INTEGER NOT NULL DEFAULT 0,
    first_seen      INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL
);

CREATE TABLE servers (
    uuid            TEXT PRIMARY KEY NOT NULL,
    owner           TEXT NOT NULL REFERENCES accounts(name),
    name            TEXT NOT NULL,
    class           TEXT NOT NULL,
    cpu             INTEGER NOT NULL,
    smp             INTEGER NOT NULL,
    mem             INTEGER NOT NULL,
    meta            TEXT NOT NULL,          -- JSON object of strings
    tags            TEXT NOT NULL,          -- JSON list of strings
    vnc_password    TEXT,
    workload        TEXT,                   -- JSON Workload, NULL = host default
    status          TEXT NOT NULL,
    host            TEXT REFERENCES hosts(id),
    perf_cpu        REAL NOT NULL DEFAULT 1.0,
    perf_mem        REAL NOT NULL DEFAULT 1.0,
    active_since    INTEGER,
    incarnation     INTEGER NOT NULL DEFAULT 0,   -- host generation that placed it
    created_at      INTEGER NOT NULL
);

CREATE INDEX servers_owner ON servers(owner);
CREATE INDEX servers_host ON servers(host);
