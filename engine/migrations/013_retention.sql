-- Indexes for the retention job (engine/retention.py): each kind of row it
-- deletes is found by its age through one of these, old rows first, without
-- scanning what is kept. delivery_tracking already has (created_at) from 001,
-- and the "no pending scheduled row" test uses the unique (notification_id,
-- channel) of scheduled_notifications.
-- On a large existing database, build them beforehand with CREATE INDEX
-- CONCURRENTLY under the same names: IF NOT EXISTS keeps those.
CREATE INDEX IF NOT EXISTS idx_scheduled_done ON scheduled_notifications (due_at) WHERE status = 'done';
CREATE INDEX IF NOT EXISTS idx_digest_buckets_sent ON digest_buckets (sent_at) WHERE status = 'sent';
CREATE INDEX IF NOT EXISTS idx_preference_sync_log_completed ON preference_sync_log (created_at)
    WHERE sync_status = 'completed';
CREATE INDEX IF NOT EXISTS idx_inbox_messages_read_at ON inbox_messages (read_at) WHERE read_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_inbox_messages_unread_created ON inbox_messages (created_at) WHERE read_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_engagement_events_created ON engagement_events (created_at);
CREATE INDEX IF NOT EXISTS idx_jobs_finished ON jobs (finished_at) WHERE status <> 'running';
