-- Several coordinators on one PostgreSQL (docs/ha.md).
--
-- The leader's lease: one row. A coordinator takes it when it is free, when its deadline (the
-- database's clock, milliseconds) has passed, or when the holder's database session is gone
-- (a killed leader is replaced at once); every takeover increments the epoch. The leader
-- renews the deadline on the session it took the lease on.
CREATE TABLE leader (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    epoch         BIGINT NOT NULL,
    holder        TEXT NOT NULL DEFAULT '',
    api_url       TEXT NOT NULL DEFAULT '',
    link_addr     TEXT NOT NULL DEFAULT '',
    backend_pid   INTEGER NOT NULL DEFAULT 0,
    backend_start TIMESTAMPTZ,
    deadline_ms   BIGINT NOT NULL DEFAULT 0,
    since_ms      BIGINT NOT NULL DEFAULT 0
);
INSERT INTO leader (id, epoch) VALUES (1, 0);

-- Every coordinator says here that it is alive (backfillctl status lists them).
CREATE TABLE coordinators (
    name       TEXT PRIMARY KEY,
    api_url    TEXT NOT NULL,
    link_addr  TEXT NOT NULL,
    seen_ms    BIGINT NOT NULL
);

-- Fencing: a transaction that changes scheduling state (servers, hosts, events, accelerator
-- requests) commits only if the epoch it was begun under (`backfill.epoch`, set by the store's
-- begin_write) is still the leader's. The check runs at COMMIT (a deferred constraint trigger)
-- and locks the lease row FOR SHARE, so a takeover either waits for this commit (and its new
-- leader then loads it) or lands first (and this commit fails). Before any coordinator has
-- led (epoch 0: the store used without leadership, as the store's own tests do) nothing is
-- checked.
CREATE FUNCTION backfill_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    current BIGINT;
    mine TEXT;
BEGIN
    IF current_setting('backfill.fence_checked', true) = 'yes' THEN
        RETURN NULL;
    END IF;
    SELECT epoch INTO current FROM leader WHERE id = 1 FOR SHARE;
    IF current IS NOT NULL AND current > 0 THEN
        mine := current_setting('backfill.epoch', true);
        IF mine IS NULL OR mine = '' OR mine::BIGINT <> current THEN
            RAISE EXCEPTION 'fenced: written under epoch %, the leader''s epoch is %',
                COALESCE(NULLIF(mine, ''), 'none'), current
                USING ERRCODE = 'BF001';
        END IF;
    END IF;
    PERFORM set_config('backfill.fence_checked', 'yes', true);
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER servers_fence AFTER INSERT OR UPDATE OR DELETE ON servers
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION backfill_fence();
CREATE CONSTRAINT TRIGGER hosts_fence AFTER INSERT OR UPDATE OR DELETE ON hosts
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION backfill_fence();
CREATE CONSTRAINT TRIGGER events_fence AFTER INSERT OR UPDATE OR DELETE ON events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION backfill_fence();
CREATE CONSTRAINT TRIGGER arqs_fence AFTER INSERT OR UPDATE OR DELETE ON arqs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION backfill_fence();

-- events.seq from a sequence: MAX(seq) + 1 (the query shared with SQLite, where writers are
-- serialised) collides when two transactions insert events at once on PostgreSQL.
CREATE SEQUENCE events_seq;
SELECT setval('events_seq', COALESCE((SELECT MAX(seq) FROM events), 0) + 1, false);
CREATE FUNCTION backfill_event_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.seq := nextval('events_seq');
    RETURN NEW;
END
$$;
CREATE TRIGGER events_seq BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION backfill_event_seq();
