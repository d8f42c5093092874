-- Rows that only the newer key can tell apart (same channel/category/content type,
-- different contexts) keep one each, so the older unique key can come back.
DROP TABLE IF EXISTS jobs;
DROP TABLE IF EXISTS digest_buckets;
DROP TABLE IF EXISTS scheduled_notifications;
DROP TABLE IF EXISTS preference_sync_log;
DROP TABLE IF EXISTS preference_consent;
DROP TABLE IF EXISTS preference_templates;
DELETE FROM user_preferences p USING user_preferences q
 WHERE p.user_id = q.user_id AND p.channel = q.channel AND p.category = q.category
   AND p.content_type = q.content_type AND p.context_key > q.context_key;
ALTER TABLE user_preferences DROP CONSTRAINT IF EXISTS user_preferences_key;
ALTER TABLE user_preferences DROP COLUMN IF EXISTS context_key;
ALTER TABLE user_preferences ADD CONSTRAINT user_preferences_user_id_channel_category_content_type_key
    UNIQUE (user_id, channel, category, content_type);
ALTER TABLE users DROP COLUMN IF EXISTS template_id;
ALTER TABLE users DROP COLUMN IF EXISTS prefs_version;
