-- Drives are scheduling state too (a server is placed on the host holding its drives, and a
-- move changes a drive's host): a deposed leader must not write them. The same fence as the
-- other tables (0010_leader.sql): checked at COMMIT against the leader's epoch.
CREATE CONSTRAINT TRIGGER drives_fence AFTER INSERT OR UPDATE OR DELETE ON drives
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION backfill_fence();
