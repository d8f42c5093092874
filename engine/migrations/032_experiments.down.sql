DELETE FROM engagement_events WHERE type = 'converted';
ALTER TABLE engagement_events DROP CONSTRAINT engagement_events_type_check;
ALTER TABLE engagement_events ADD CONSTRAINT engagement_events_type_check CHECK (type IN ('opened', 'clicked'));
DROP TABLE IF EXISTS user_experiment_participation;
DROP TABLE IF EXISTS experiments;
