-- Preference custom values are personal data (docs/privacy.md): kept sealed under the
-- user's key, no longer inside the row's value. The change feed's documents hold
-- them too, so each is sealed whole (changes then holds '{}'). Rows from before
-- are sealed by the engine when it starts (stores.pii.seal_legacy).
ALTER TABLE user_preferences ADD COLUMN custom bytea;
ALTER TABLE preference_sync_log ADD COLUMN sealed bytea;
CREATE INDEX IF NOT EXISTS idx_user_preferences_plain_custom ON user_preferences (user_id) WHERE value ? 'custom';
CREATE INDEX IF NOT EXISTS idx_preference_sync_log_plain ON preference_sync_log (id) WHERE sealed IS NULL;
