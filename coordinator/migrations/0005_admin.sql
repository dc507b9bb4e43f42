-- The operator's API: what an operator allows on each host, pool membership, the audit log of
-- admin actions, coordinator-wide settings (auto mode), pool limits an operator rewrote
-- (freeze, drain), hosts a provisioner launched, and the flavor a server was created as.
ALTER TABLE hosts ADD COLUMN idle_behavior TEXT NOT NULL DEFAULT 'run';
ALTER TABLE hosts ADD COLUMN pool TEXT;
ALTER TABLE servers ADD COLUMN flavor TEXT;

CREATE TABLE admin_actions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    target_kind TEXT NOT NULL,      -- host, server, pool, coordinator
    target      TEXT NOT NULL,
    action      TEXT NOT NULL,
    reason      TEXT
);
CREATE INDEX admin_actions_target ON admin_actions(target_kind, target);

CREATE TABLE settings (
    key     TEXT PRIMARY KEY NOT NULL,
    value   TEXT NOT NULL
);

CREATE TABLE pool_limits (
    name    TEXT PRIMARY KEY NOT NULL,
    min     INTEGER NOT NULL,
    max     INTEGER NOT NULL
);

CREATE TABLE launches (
    host        TEXT PRIMARY KEY NOT NULL,
    pool        TEXT NOT NULL,
    launched_at INTEGER NOT NULL
);
