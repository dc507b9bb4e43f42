-- The scheduler: scheduled terminations and why a started server is still waiting.
ALTER TABLE servers ADD COLUMN term_scheduled_at BIGINT;
ALTER TABLE servers ADD COLUMN term_at BIGINT;
ALTER TABLE servers ADD COLUMN queued_reason TEXT;
-- Higher starts first from the queue and is preempted last (an i32).
ALTER TABLE servers ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
