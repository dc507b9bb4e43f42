-- A graceful (ACPI-like) shutdown in progress: the workload is asked to stop until then, and
-- returns to running if it has not.
ALTER TABLE servers ADD COLUMN shutdown_until BIGINT;
