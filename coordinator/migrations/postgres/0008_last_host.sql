-- The host a server last ran on: a stopped VM's disk overlay stays there until the server is
-- deleted (the host's desired state lists it as kept), and a restart prefers that host.
ALTER TABLE servers ADD COLUMN last_host TEXT;
-- Why a server's last run ended (exited with a code, failed to start, killed by the OOM
-- killer, lost with its host), shown on the server until its next start.
ALTER TABLE servers ADD COLUMN stop_reason TEXT;
