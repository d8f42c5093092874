-- A person's engagement events, read by their data export (stores/export.py)
-- without scanning every person's.
CREATE INDEX IF NOT EXISTS idx_engagement_events_user ON engagement_events (user_id, id);
