-- backfill coordinator: initial schema (PostgreSQL; same meaning as ../0001_initial.sql).
-- Types: BIGINT for i64, DOUBLE PRECISION for f64, BOOLEAN for flags, TEXT for JSON strings.
CREATE TABLE accounts (
    name        TEXT PRIMARY KEY NOT NULL,
    uuid        TEXT NOT NULL UNIQUE,
    backfill    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE hosts (
    id              TEXT PRIMARY KEY NOT NULL,
    inventory       TEXT NOT NULL,          -- JSON HostInventory
    enforcing       BOOLEAN NOT NULL,
    generation      BIGINT NOT NULL DEFAULT 0,
    first_seen      BIGINT NOT NULL,
    last_seen       BIGINT NOT NULL
);

CREATE TABLE servers (
    uuid            TEXT PRIMARY KEY NOT NULL,
    owner           TEXT NOT NULL REFERENCES accounts(name),
    name            TEXT NOT NULL,
    class           TEXT NOT NULL,
    cpu             BIGINT NOT NULL,
    smp             BIGINT NOT NULL,
    mem             BIGINT NOT NULL,
    meta            TEXT NOT NULL,          -- JSON object of strings
    tags            TEXT NOT NULL,          -- JSON list of strings
    vnc_password    TEXT,
    workload        TEXT,                   -- JSON Workload, NULL = host default
    status          TEXT NOT NULL,
    host            TEXT REFERENCES hosts(id),
    perf_cpu        DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    perf_mem        DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    active_since    BIGINT,
    incarnation     BIGINT NOT NULL DEFAULT 0,   -- host generation that placed it
    created_at      BIGINT NOT NULL
);

CREATE INDEX servers_owner ON servers(owner);
CREATE INDEX servers_host ON servers(host);
