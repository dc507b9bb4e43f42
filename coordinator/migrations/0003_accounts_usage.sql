-- Accounts get quotas (NULL = unlimited); servers remember how far they have been metered;
-- usage holds metered segments: one server at one perf_factor and price for [start, end).
ALTER TABLE accounts ADD COLUMN quota_cpu INTEGER;
ALTER TABLE accounts ADD COLUMN quota_mem INTEGER;
ALTER TABLE accounts ADD COLUMN quota_gpus INTEGER;
ALTER TABLE accounts ADD COLUMN quota_servers INTEGER;

ALTER TABLE servers ADD COLUMN metered_until INTEGER;
-- The perf_factor in force since metered_until (what the open stretch is charged at).
ALTER TABLE servers ADD COLUMN metered_perf_cpu REAL NOT NULL DEFAULT 1.0;
ALTER TABLE servers ADD COLUMN metered_perf_mem REAL NOT NULL DEFAULT 1.0;

CREATE TABLE usage (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    server          TEXT NOT NULL,          -- no foreign key: usage outlives deleted servers
    account         TEXT NOT NULL,
    name            TEXT NOT NULL,
    class           TEXT NOT NULL,
    start           INTEGER NOT NULL,       -- Unix seconds, inclusive
    end             INTEGER NOT NULL,       -- Unix seconds, exclusive
    cpu             INTEGER NOT NULL,       -- MHz allocated
    mem             INTEGER NOT NULL,       -- bytes allocated
    perf_cpu        REAL NOT NULL,          -- in force during the segment
    perf_mem        REAL NOT NULL,
    price_cpu       INTEGER NOT NULL,       -- micro-currency per GHz-hour
    price_mem       INTEGER NOT NULL        -- micro-currency per GiB-hour
);

CREATE INDEX usage_account_time ON usage(account, start);
CREATE INDEX usage_server ON usage(server, end);
