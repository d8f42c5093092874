DROP INDEX IF EXISTS idx_engagement_events_user;
