-- Webhooks: tenants' receivers and what they subscribe to; the event outbox (written in the
-- same transaction as the change that caused each event) and one delivery per event and
-- receiver, retried until delivered or given up.
CREATE TABLE webhooks (
    uuid        TEXT PRIMARY KEY NOT NULL,
    owner       TEXT NOT NULL REFERENCES accounts(name),
    url         TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    secret      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX webhooks_owner ON webhooks(owner);

CREATE TABLE subscriptions (
    uuid        TEXT PRIMARY KEY NOT NULL,
    webhook     TEXT NOT NULL REFERENCES webhooks(uuid) ON DELETE CASCADE,
    events      TEXT NOT NULL,          -- JSON list of event types
    filters     TEXT NOT NULL,          -- JSON {servers, tags, classes}
    created_at  BIGINT NOT NULL
);
CREATE INDEX subscriptions_webhook ON subscriptions(webhook);

CREATE TABLE events (
    id          TEXT PRIMARY KEY NOT NULL,
    seq         BIGINT NOT NULL UNIQUE,
    account     TEXT NOT NULL,
    type        TEXT NOT NULL,
    server      TEXT NOT NULL,
    payload     TEXT NOT NULL,          -- the JSON body receivers get
    created_at  BIGINT NOT NULL,
    fanned      BOOLEAN NOT NULL DEFAULT FALSE   -- deliveries made for it
);
CREATE INDEX events_unfanned ON events(fanned, seq);

CREATE TABLE deliveries (
    uuid            TEXT PRIMARY KEY NOT NULL,
    event_id        TEXT NOT NULL REFERENCES events(id),
    webhook         TEXT NOT NULL REFERENCES webhooks(uuid) ON DELETE CASCADE,
    status          TEXT NOT NULL,      -- pending, delivered, failed
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_attempt_at BIGINT,
    last_status     BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    UNIQUE (event_id, webhook)
);
CREATE INDEX deliveries_due ON deliveries(status, next_attempt_at);
CREATE INDEX deliveries_webhook ON deliveries(webhook, created_at);
