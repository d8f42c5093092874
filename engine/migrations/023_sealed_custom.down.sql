-- Refuses once anything is sealed: the keys are not in the database.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM user_preferences WHERE custom IS NOT NULL)
       OR EXISTS (SELECT 1 FROM preference_sync_log WHERE sealed IS NOT NULL) THEN
        RAISE EXCEPTION '023_sealed_custom cannot be reversed: the database holds sealed data (restore a backup from before it)';
    END IF;
END
$$;
DROP INDEX idx_preference_sync_log_plain;
DROP INDEX idx_user_preferences_plain_custom;
ALTER TABLE preference_sync_log DROP COLUMN sealed;
ALTER TABLE user_preferences DROP COLUMN custom;
