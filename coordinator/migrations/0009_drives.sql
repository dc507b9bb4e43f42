-- Drives (issue 19): a tenant's disks, each on the host whose agent made it. `source` is the
-- JSON of where its content came from (blank, a library image, another drive); `status` is
-- creating, ready, failed (with `error`) or deleting (hidden from the API until its agent
-- reports it gone). A server's attached drives are the JSON list servers.drives.
CREATE TABLE drives (
    uuid        TEXT PRIMARY KEY NOT NULL,
    owner       TEXT NOT NULL,
    name        TEXT NOT NULL,
    size        BIGINT NOT NULL,
    media       TEXT NOT NULL,
    host        TEXT NOT NULL,
    source      TEXT NOT NULL,
    status      TEXT NOT NULL,
    error       TEXT,
    meta        TEXT NOT NULL,
    tags        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    -- Storage is metered (usage rows of class 'drive', bytes in `mem`) up to here.
    metered_until BIGINT
);
CREATE INDEX drives_owner ON drives(owner);
ALTER TABLE servers ADD COLUMN drives TEXT;
