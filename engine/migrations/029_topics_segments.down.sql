DROP INDEX IF EXISTS idx_engagement_events_user_type;
DROP TABLE IF EXISTS segments;
DROP TABLE IF EXISTS topic_subscribers;
