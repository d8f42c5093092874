DROP INDEX IF EXISTS idx_jobs_finished;
DROP INDEX IF EXISTS idx_engagement_events_created;
DROP INDEX IF EXISTS idx_inbox_messages_unread_created;
DROP INDEX IF EXISTS idx_inbox_messages_read_at;
DROP INDEX IF EXISTS idx_preference_sync_log_completed;
DROP INDEX IF EXISTS idx_digest_buckets_sent;
DROP INDEX IF EXISTS idx_scheduled_done;
