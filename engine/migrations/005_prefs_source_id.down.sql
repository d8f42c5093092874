DROP INDEX IF EXISTS idx_preference_sync_log_source;
ALTER TABLE preference_sync_log DROP COLUMN IF EXISTS source_id;
