-- A per-account storage quota for drives (bytes); NULL = the configured default
-- (`[drives] storage_quota_bytes`, unlimited when that is unset).
ALTER TABLE accounts ADD COLUMN quota_storage BIGINT;
