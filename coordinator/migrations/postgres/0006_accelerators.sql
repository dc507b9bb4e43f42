-- GPUs: what a server asks for (from its device profile) and the devices it holds; Cyborg's
-- device profiles and accelerator requests (ARQs).
ALTER TABLE servers ADD COLUMN gpu_request TEXT;            -- JSON GpuRequest, NULL = none
ALTER TABLE servers ADD COLUMN gpus TEXT NOT NULL DEFAULT '[]';  -- JSON list of device UUIDs

CREATE TABLE device_profiles (
    uuid        TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    groups      TEXT NOT NULL,          -- JSON list of {key: value} objects, as given
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT
);

CREATE TABLE arqs (
    uuid                    TEXT PRIMARY KEY NOT NULL,
    owner                   TEXT NOT NULL REFERENCES accounts(name),
    state                   TEXT NOT NULL,
    device_profile_name     TEXT NOT NULL,
    device_profile_group_id BIGINT NOT NULL,
    hostname                TEXT,
    device_rp_uuid          TEXT,
    instance_uuid           TEXT,
    project_id              TEXT,
    attach_handle_type      TEXT NOT NULL DEFAULT '',
    attach_handle_uuid      TEXT,
    attach_handle_info      TEXT NOT NULL DEFAULT '{}',  -- JSON object
    server                  TEXT,                        -- the server that made it, if any
    created_at              BIGINT NOT NULL,
    updated_at              BIGINT
);
CREATE INDEX arqs_instance ON arqs(instance_uuid);
CREATE INDEX arqs_server ON arqs(server);
CREATE INDEX arqs_profile ON arqs(device_profile_name);
