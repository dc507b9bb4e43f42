-- The host a server last ran on: a stopped VM's disk overlay stays there until the server is
-- deleted (the host's desired state lists it as kept), and a restart prefers that host.
ALTER TABLE servers ADD COLUMN last_host TEXT;
