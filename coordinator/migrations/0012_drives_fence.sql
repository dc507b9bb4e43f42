-- On PostgreSQL this fences the drives table against a deposed leader (several coordinators,
-- docs/ha.md). On SQLite one coordinator always leads: nothing to fence. Kept so both
-- histories have the same versions.
SELECT 1;
